#!/usr/bin/env python
"""The GPU check: speed, memory and CPU agreement of vclr_d2 on one GPU, in one run (< 8 min).

    python tools/gpu_check.py --out output/gpu_check          # on a machine with a GPU
    python tools/gpu_check.py --smoke --out /tmp/gpu_check    # the same steps, tiny, on the CPU

Steps (in one process; peak GPU memory is reset before each measurement):

1. training step time and peak memory of v-CLR and the baseline (``MODEL.VCLR.SIM_ON False``)
   at the paper's settings: ConvNeXt-T, 800 x 800 inputs, batch 2 per GPU,
   ``configs/Base-VCLR.yaml``, AMP off and on (float16 with a grad scaler);
2. inference images/s and peak memory of v-CLR (ConvNeXt-T) against detectron2's RetinaNet
   R50-FPN at the same 800 x 800 input;
3. the same small training run (the synthetic set, a few iterations, from the same initial
   weights) on the CPU and on the GPU: the largest weight difference must stay below 1 % of how
   far the weights moved (TF32 is switched off for this step).

It prints a markdown report (for docs/benchmarks.md) and writes ``gpu_check.json`` and
``gpu_check.md`` to ``--out``. ``--smoke`` runs every step on the CPU with a tiny model, tiny
inputs and two iterations, so that the script itself is tested without a GPU
(``tests/test_distributed.py``); its figures mean nothing. ``tools/gpu_check.sh`` wraps this
for a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def train_steps(bench, s: SimpleNamespace) -> list[dict]:
    rows = []
    for variant in ("vclr", "baseline (no teacher, no L_sim)"):
        for amp in (False, True):
            _reset_peak(s.device)
            r = bench.run_train_step(SimpleNamespace(
                model=s.model, device=s.device, variant=variant, config="configs/Base-VCLR.yaml",
                batch=s.batch, size=s.size, objects=5, warmup=s.warmup, iters=s.iters, amp=amp,
                data="random", opts=[]))
            rows.append({"variant": variant, "amp": amp, **r})
            print(f"train-step {variant}, AMP {amp}: {r['ms_per_step']:.1f} ms, "
                  f"{r['peak_mb']:.0f} MiB", flush=True)
    return rows


def inference(bench, s: SimpleNamespace) -> list[dict]:
    rows = []
    for variant in (s.model, "retinanet_R_50_FPN"):
        _reset_peak(s.device)
        r = bench.run_inference(SimpleNamespace(
            variant=variant, device=s.device, config="configs/Base-VCLR.yaml", batch=1,
            size=s.size, warmup=s.warmup, iters=s.iters, opts=[]))
        rows.append({"model": variant, **r})
        print(f"inference {variant}: {r['images_per_s']:.2f} images/s, {r['peak_mb']:.0f} MiB",
              flush=True)
    return rows


# The small training run of step 3: the synthetic set at 64 px, a small head.
_SMALL_RUN = [
    "DATASETS.SYNTHETIC.NUM_TRAIN", "16", "DATASETS.SYNTHETIC.NUM_VAL", "4",
    "DATASETS.SYNTHETIC.IMAGE_SIZE", "64", "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()",
    "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.VCLR_HEAD.NUM_CONVS", "1", "MODEL.VCLR_HEAD.EMBED_DIM", "32",
    "MODEL.VCLR_HEAD.MASK_BRANCH_CHANNELS", "32",
]


def cpu_vs_device(s: SimpleNamespace, out: Path) -> dict:
    """Train the small run on the CPU and on ``s.device`` from the same weights; compare."""
    import torch
    from detectron2.modeling import build_model

    from vclr_d2.engine import VCLRTrainer, load_cfg

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    opts = _SMALL_RUN + ["SOLVER.MAX_ITER", str(s.train_iters)]
    config = str(ROOT / "configs" / "synthetic" / "vclr.yaml")
    cfg = load_cfg(config, opts)
    torch.manual_seed(0)
    init = out / "small_run_init.pth"
    torch.save({"model": build_model(cfg).state_dict()}, init)
    finals, times = {}, {}
    for name, device in (("reference_cpu", "cpu"), (f"checked_{s.device}", s.device)):
        cfg = load_cfg(config, opts + ["MODEL.DEVICE", device, "MODEL.WEIGHTS", str(init),
                                       "OUTPUT_DIR", str(out / f"small_run_{name}")])
        trainer = VCLRTrainer(cfg)
        trainer.resume_or_load(resume=False)
        t0 = time.perf_counter()
        trainer.train()
        times[name] = time.perf_counter() - t0
        finals[name] = {k: v.detach().float().cpu() for k, v in
                        trainer.checkpointer.model.state_dict().items()}
    start = torch.load(init, map_location="cpu", weights_only=False)["model"]
    (a, b) = finals.values()
    floats = [k for k, v in a.items() if v.is_floating_point()]
    diff = max((a[k] - b[k]).abs().max().item() for k in floats)
    moved = max((a[k] - start[k].float()).abs().max().item() for k in floats)
    ok = diff <= 0.01 * moved
    print(f"CPU vs {s.device}: {s.train_iters} iterations, largest weight difference "
          f"{diff:.3g}, largest move {moved:.3g} -> {'agree' if ok else 'DISAGREE'}", flush=True)
    return {"iterations": s.train_iters, "max_weight_diff": diff, "max_weight_move": moved,
            "agree": ok, "seconds": times}


def _report(res: dict) -> str:
    env = res["environment"]
    lines = [f"GPU check on {env['device_name']} (torch {env['torch']}, CUDA {env['cuda']}), "
             f"{res['settings']}, {res['seconds']:.0f} s in all", "",
             "| variant | AMP | ms / step | peak memory (MiB) |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['variant']} | {'on' if r['amp'] else 'off'} | {r['ms_per_step']:.1f} | "
              f"{r['peak_mb']:.0f} |" for r in res["train_step"]]
    ref = res["inference"][-1]["images_per_s"]
    lines += ["", "| model | images / s | relative to RetinaNet R50-FPN | peak memory (MiB) |",
              "| --- | ---: | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['images_per_s']:.2f} | {r['images_per_s'] / ref:.2f} | "
              f"{r['peak_mb']:.0f} |" for r in res["inference"]]
    c = res["cpu_vs_device"]
    lines += ["", f"CPU vs {env['device']}: {c['iterations']} iterations of the small synthetic "
              f"run, largest weight difference {c['max_weight_diff']:.3g} against a largest move "
              f"of {c['max_weight_move']:.3g}: {'agree' if c['agree'] else 'DISAGREE'}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="output/gpu_check", help="folder for the report")
    parser.add_argument("--device", default="cuda", help="the device to check")
    parser.add_argument("--smoke", action="store_true",
                        help="every step on the CPU, tiny (tests the script, not a GPU)")
    args = parser.parse_args()
    os.environ.setdefault("DETECTRON2_DATASETS", str(Path(args.out) / "datasets"))
    import torch

    if args.smoke:
        s = SimpleNamespace(device="cpu", model="convnext_atto", size=64, batch=1, warmup=0,
                            iters=1, train_iters=2)
    else:
        if not torch.cuda.is_available():
            sys.exit(f"no CUDA device here (torch {torch.__version__}); use --smoke on a CPU")
        s = SimpleNamespace(device=args.device, model="convnext_tiny", size=800, batch=2,
                            warmup=3, iters=20, train_iters=5)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cuda = s.device.startswith("cuda")
    res = {
        "environment": {
            "device": s.device, "torch": torch.__version__, "cuda": torch.version.cuda,
            "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "CPU",
        },
        "settings": f"{s.model}, {s.size} x {s.size}, batch {s.batch}, median of {s.iters} "
                    f"iterations after {s.warmup} warm-up" + (" (SMOKE: figures mean nothing)"
                                                             if args.smoke else ""),
    }
    from vclr_d2.utils import load_tool

    bench = load_tool("benchmark")
    res["train_step"] = train_steps(bench, s)
    res["inference"] = inference(bench, s)
    res["cpu_vs_device"] = cpu_vs_device(s, out)
    res["seconds"] = time.perf_counter() - t0
    report = _report(res)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    (out / "gpu_check.md").write_text(report)
    print(report)
    if not res["cpu_vs_device"]["agree"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
