#!/usr/bin/env python
"""Submit ``tools/train_net.py`` to SLURM with submitit: one task per GPU (process).

    python tools/submit_slurm.py --config-file configs/voc.yaml --num-gpus 8 --num-machines 2 \\
        --partition <partition> --timeout-min 4320 --job-dir output/voc/slurm \\
        MODEL.CONVNEXT.WEIGHTS /path/to/convnext_tiny.safetensors OUTPUT_DIR output/voc

Every argument of ``train_net.py`` is accepted and passed on unchanged (``--eval-only``,
``--resume``, ``KEY VALUE`` overrides); ``--num-gpus`` is the number of tasks (and GPUs) per
node, ``--num-machines`` the number of nodes. Each task joins the process group through
submitit's ``TorchDistributedEnvironment`` (``env://``; NCCL for CUDA, gloo with
``MODEL.DEVICE cpu``) and runs ``train_net.main``. When SLURM preempts the job or its time runs
out, submitit requeues it with ``--resume``: it continues exactly from the last checkpoint.

``--executor local`` runs the same job on this machine with submitit's ``LocalExecutor`` (the
tests use it). Needs ``pip install submitit`` (the ``slurm`` extra of vclr_d2).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vclr_d2.engine import argument_parser, get_vclr_cfg  # noqa: E402
from vclr_d2.utils import load_tool  # noqa: E402


class TrainJob:
    """The callable each SLURM task runs: join the process group, then ``train_net.main``."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def __call__(self):
        import submitit
        import torch
        import torch.distributed as dist

        from vclr_d2.engine.launch import init_distributed

        env = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False)
        cuda = torch.device(get_vclr_cfg(self.args.config_file, self.args.opts).MODEL.DEVICE
                            ).type == "cuda"
        if env.world_size > 1:
            init_distributed(backend="nccl" if cuda else "gloo", init_method="env://",
                             world_size=env.world_size, rank=env.rank,
                             local_rank=env.local_rank, local_size=env.local_world_size)
        elif cuda:
            torch.cuda.set_device(env.local_rank)
        try:
            return load_tool("train_net").main(self.args)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()

    def checkpoint(self):
        """Requeue on preemption or time-out, resuming from the last checkpoint."""
        import submitit

        args = copy.deepcopy(self.args)
        args.resume = True
        return submitit.helpers.DelayedSubmission(TrainJob(args))


def parser() -> argparse.ArgumentParser:
    p = argument_parser()
    g = p.add_argument_group("SLURM (submitit)")
    g.add_argument("--job-dir", default="", help="submitit's folder for logs and pickles "
                   "(default OUTPUT_DIR/slurm/%%j)")
    g.add_argument("--partition", default="", help="SLURM partition")
    g.add_argument("--timeout-min", type=int, default=60 * 72, help="time limit of one run")
    g.add_argument("--cpus-per-task", type=int, default=10, help="CPU cores per task")
    g.add_argument("--mem-gb", type=int, default=0, help="memory per node (0: SLURM's default)")
    g.add_argument("--constraint", default="", help="SLURM --constraint, e.g. volta32gb")
    g.add_argument("--account", default="", help="SLURM account")
    g.add_argument("--job-name", default="vclr_d2", help="SLURM job name")
    g.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                   help="'local' runs the job here with submitit's LocalExecutor")
    g.add_argument("--wait", action="store_true", help="wait for the job and print its result")
    return p


def submit(args: argparse.Namespace):
    """Submit ``TrainJob(args)``; returns the submitit job."""
    try:
        import submitit
    except ImportError:
        sys.exit("submit_slurm.py needs submitit: pip install submitit (or pip install "
                 "-e '.[slurm]')")
    cfg = get_vclr_cfg(args.config_file, args.opts)
    job_dir = args.job_dir or str(Path(cfg.OUTPUT_DIR) / "slurm" / "%j")
    gpus = args.num_gpus if cfg.MODEL.DEVICE.startswith("cuda") else 0
    if args.executor == "local":
        executor = submitit.LocalExecutor(folder=job_dir)
        executor.update_parameters(timeout_min=args.timeout_min, tasks_per_node=args.num_gpus,
                                   gpus_per_node=gpus)
    else:
        executor = submitit.AutoExecutor(folder=job_dir, cluster="slurm")
        extra = {k: v for k, v in (("slurm_partition", args.partition),
                                   ("slurm_constraint", args.constraint),
                                   ("slurm_account", args.account),
                                   ("mem_gb", args.mem_gb)) if v}
        executor.update_parameters(
            name=args.job_name, nodes=args.num_machines, tasks_per_node=args.num_gpus,
            gpus_per_node=gpus, cpus_per_task=args.cpus_per_task,
            timeout_min=args.timeout_min, slurm_signal_delay_s=120, **extra)
    job = executor.submit(TrainJob(args))
    print(f"submitted job {job.job_id}; logs in {job_dir.replace('%j', str(job.job_id))}")
    return job


def main() -> None:
    args = parser().parse_args()
    if args.executor == "local" and args.num_machines > 1:
        sys.exit("--executor local runs on one machine: --num-machines must be 1")
    job = submit(args)
    if args.wait:
        results = job.results()
        print(f"job {job.job_id} finished: {len(results)} tasks")


if __name__ == "__main__":
    main()
