"""``launch``: detectron2's multi-process launcher, extended to the CPU.

detectron2 0.6's ``launch`` initialises every process group with NCCL and asserts CUDA, so
``--num-gpus 2 MODEL.DEVICE cpu`` cannot run. ``launch(..., device="cpu")`` starts the processes
itself and joins them with the gloo backend; for a CUDA device it calls detectron2's ``launch``
unchanged. ``init_distributed`` is the per-process part, shared with launchers that start the
processes themselves (``tools/submit_slurm.py``: one SLURM task per process).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

__all__ = ["DEFAULT_TIMEOUT", "init_distributed", "launch"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(*, backend: str, init_method: str, world_size: int, rank: int,
                     local_rank: int, local_size: int,
                     timeout: timedelta = DEFAULT_TIMEOUT) -> None:
    """Join the process group as ``rank`` of ``world_size`` and set detectron2's per-machine
    group (``comm.get_local_rank()``); with NCCL, select GPU ``local_rank``.

    Args:
        backend: "gloo" (CPU) or "nccl" (CUDA).
        init_method: a URL such as ``tcp://host:port`` or ``env://``.
        local_size: processes per machine; machines hold consecutive ranks.
    """
    if world_size % local_size:
        raise ValueError(f"{world_size} processes cannot be split in machines of {local_size}")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method=init_method, world_size=world_size,
                            rank=rank, timeout=timeout)
    if hasattr(comm, "create_local_process_group"):  # upstream detectron2
        comm.create_local_process_group(local_size)
    else:  # detectron2 0.6 keeps the group in a module attribute
        for machine in range(world_size // local_size):
            group = dist.new_group(list(range(machine * local_size, (machine + 1) * local_size)))
            if machine == rank // local_size:
                comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()


def _cpu_worker(local_rank: int, main_func: Callable, world_size: int, local_size: int,
                machine_rank: int, dist_url: str, args: tuple, timeout: timedelta) -> None:
    init_distributed(backend="gloo", init_method=dist_url, world_size=world_size,
                     rank=machine_rank * local_size + local_rank, local_rank=local_rank,
                     local_size=local_size, timeout=timeout)
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def launch(main_func: Callable, num_processes_per_machine: int, *, num_machines: int = 1,
           machine_rank: int = 0, dist_url: str | None = None, args: tuple = (),
           device: str = "cuda", timeout: timedelta = DEFAULT_TIMEOUT) -> None:
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on this machine.

    Args:
        device: the training device (``MODEL.DEVICE``). A CUDA device goes to detectron2's
            ``launch`` (NCCL, one GPU per process); the CPU uses gloo with processes started
            here (``mp.spawn``), which must then reach each other at ``dist_url``.
        dist_url: ``tcp://<machine 0>:<port>`` (the same on every machine), or "auto" for a
            free port on this machine (one machine only).
        num_machines, machine_rank: as detectron2's ``launch``.
    """
    if torch.device(device).type == "cuda":
        d2_launch(main_func, num_processes_per_machine, num_machines=num_machines,
                  machine_rank=machine_rank, dist_url=dist_url, args=args, timeout=timeout)
        return
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError("--dist-url auto works on one machine only: give "
                             "tcp://<machine 0>:<port> to every machine")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.info(f"Starting {num_processes_per_machine} CPU processes (gloo, {dist_url})")
    mp.spawn(_cpu_worker, nprocs=num_processes_per_machine, daemon=False, args=(
        main_func, world_size, num_processes_per_machine, machine_rank, dist_url, args, timeout))
