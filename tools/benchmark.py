#!/usr/bin/env python
"""Speed and memory benchmarks of vclr_d2 (results go to docs/benchmarks.md with the command).

    python tools/benchmark.py train-step [--size 256 --batch 2 --model convnext_atto] [--amp]
        [--data loader]
        training step time (forward, backward, optimizer step, EMA update) of v-CLR against the
        baseline switches (no teacher / L_sim; no student augmentations), as a ratio, with the
        peak memory of each variant; --amp: under autocast, as SOLVER.AMP.ENABLED
    python tools/benchmark.py inference [--size 512]
        inference images/second at size x size for convnext_atto and convnext_tiny, and for
        detectron2's RetinaNet R50-FPN on the same inputs, with peak memory
    python tools/benchmark.py loader [--config configs/synthetic/vclr.yaml --workers 0 2]
        images/second of the v-CLR training loader (VCLRDatasetMapper: natural image + one
        view, geometry, ground truth, proposals) on the config's training set, per worker count,
        and the pixels of the padded batches the model receives per pixel of their images

``--opts KEY VALUE ...`` overrides the config (e.g. ``--opts INPUT.SCALE_JITTER.ENABLED True``).

Each variant runs in a fresh subprocess so its peak memory is its own (peak resident memory on
the CPU, ``torch.cuda.max_memory_allocated`` on a GPU). Models are randomly initialised:
speed does not depend on the weights. Inputs are random images with a few random objects.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN_VARIANTS = {
    "vclr": [],
    "baseline (no teacher, no L_sim)": ["MODEL.VCLR.SIM_ON", "False"],
    "baseline, no student augmentations": [
        "MODEL.VCLR.SIM_ON", "False", "MODEL.VCLR.PATCH_MIX_PROB", "0.0",
        "MODEL.VCLR.RANDOM_ERASE_PROB", "0.0", "MODEL.VCLR.GRAYSCALE_PROB", "0.0"],
}
INFERENCE_VARIANTS = ["convnext_atto", "convnext_tiny", "retinanet_R_50_FPN"]


def _cfg(model: str, device: str, opts: list[str], config: str = "configs/Base-VCLR.yaml"):
    from vclr_d2.engine import load_cfg

    return load_cfg(str(ROOT / config), ["MODEL.CONVNEXT.NAME", model, "MODEL.DEVICE", device,
                                         *opts])


def _batch(n: int, size: int, objects: int, device: str, with_targets: bool):
    import torch
    from detectron2.structures import BitMasks, Boxes, Instances

    batch = []
    for _ in range(n):
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
        x = {"image": image, "image_natural": image.clone(), "view": "depth"}
        if with_targets:
            for key in ("instances", "proposals"):
                xy = torch.rand(objects, 2) * size * 0.6
                wh = torch.rand(objects, 2) * size * 0.3 + 8
                boxes = torch.cat([xy, xy + wh], 1)
                masks = torch.zeros(objects, size, size, dtype=torch.bool)
                for k, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                    masks[k, y0:y1, x0:x1] = True
                inst = Instances((size, size))
                inst.gt_boxes = Boxes(boxes)
                inst.gt_classes = torch.zeros(objects, dtype=torch.int64)
                inst.gt_masks = BitMasks(masks)
                x[key] = inst
        batch.append(x)
    return batch


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_train_step(args) -> dict:
    import torch
    from detectron2.modeling import build_model

    from vclr_d2.engine import amp_dtype_from_config, build_optimizer

    torch.manual_seed(0)
    amp = ["SOLVER.AMP.ENABLED", "True"] if args.amp else []
    # with the config's training batches: no loader workers, --batch images per step
    data = (["DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", str(args.batch)]
            if args.data == "loader" else [])
    cfg = _cfg(args.model, args.device,
               TRAIN_VARIANTS[args.variant] + amp + data + list(args.opts), args.config)
    model = build_model(cfg).train()
    opt = build_optimizer(cfg, model)
    dtype = amp_dtype_from_config(cfg)
    device_type = torch.device(args.device).type
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)
    if args.data == "loader":  # the config's training batches, loading not timed
        from vclr_d2.engine import VCLRTrainer

        loader = iter(VCLRTrainer.build_train_loader(cfg))
    else:
        fixed = _batch(args.batch, args.size, args.objects, args.device, with_targets=True)
    def step(batch) -> None:
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            loss = sum(model(batch).values())
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        model.update_teacher()

    times = []
    for i in range(args.warmup + args.iters):
        batch = next(loader) if args.data == "loader" else fixed
        _sync(args.device)
        t0 = time.perf_counter()
        step(batch)
        _sync(args.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    out = {"ms_per_step": 1000 * statistics.median(times), "peak_mb": _peak_mb(args.device)}
    if getattr(args, "count_ops", False):  # one more step, under the profiler
        from torch.profiler import ProfilerActivity, profile

        batch = next(loader) if args.data == "loader" else fixed
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(batch)
            _sync(args.device)
        out["aten_ops"] = count_leaf_ops(prof.events())
    return out


# operators that only allocate or make a view: no kernel on a GPU
_NO_KERNEL = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::as_strided",
              "aten::as_strided_", "aten::view", "aten::_reshape_alias", "aten::_unsafe_view",
              "aten::resize_", "aten::alias", "aten::detach", "aten::lift_fresh", "aten::set_"}


def count_leaf_ops(events) -> int:
    """Operators of a profile that call no other operator (``aten::`` events without an
    ``aten::`` child), allocations and views aside: about the kernels a step launches on a
    GPU, each with its fixed cost."""
    return sum(1 for e in events if e.name.startswith("aten::") and e.name not in _NO_KERNEL
               and not any(c.name.startswith("aten::") for c in e.cpu_children))


def run_inference(args) -> dict:
    import torch
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    if args.variant == "retinanet_R_50_FPN":
        from detectron2 import model_zoo
        from detectron2.config import get_cfg

        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
        cfg.MODEL.DEVICE = args.device
        cfg.TEST.DETECTIONS_PER_IMAGE = 300
        cfg.MODEL.WEIGHTS = ""
    else:
        cfg = _cfg(args.variant, args.device, ["MODEL.WEIGHTS", "", *args.opts], args.config)
    model = build_model(cfg).eval()
    batch = _batch(args.batch, args.size, 0, args.device, with_targets=False)
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            _sync(args.device)
            t0 = time.perf_counter()
            model(batch)
            _sync(args.device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    return {"images_per_s": args.batch / statistics.median(times),
            "peak_mb": _peak_mb(args.device)}


def padding_ratio(batches, size_divisibility: int = 32) -> float:
    """Pixels of the padded batch tensors (``ImageList.from_tensors``, as the model builds them
    for a backbone of this size divisibility) per pixel of the images in them."""
    from detectron2.structures import ImageList

    padded = content = 0
    for batch in batches:
        images = [x["image"] for x in batch]
        h, w = ImageList.from_tensors(images, size_divisibility).tensor.shape[-2:]
        padded += h * w * len(images)
        content += sum(x.shape[-2] * x.shape[-1] for x in images)
    return padded / content


def run_loader(args) -> dict:
    """Images/second of ``VCLRTrainer.build_train_loader`` with ``args.variant`` workers, and
    the padding ratio of its batches (size divisibility 32, the ConvNeXt and FPN backbones')."""
    import itertools

    from vclr_d2.engine import VCLRTrainer

    cfg = _cfg(args.model, args.device, ["DATALOADER.NUM_WORKERS", args.variant,
                                         "SOLVER.IMS_PER_BATCH", str(args.batch), *args.opts],
               args.config)
    loader = iter(VCLRTrainer.build_train_loader(cfg))
    for _ in range(args.warmup):
        next(loader)
    t0 = time.perf_counter()
    batches = list(itertools.islice(loader, args.iters))
    seconds = time.perf_counter() - t0
    return {"images_per_s": sum(len(b) for b in batches) / seconds, "peak_mb": _peak_mb("cpu"),
            "padding": padding_ratio(batches)}


def _spawn(mode: str, variant: str, args) -> dict:
    cmd = [sys.executable, __file__, mode, "--single", variant, "--size", str(args.size),
           "--batch", str(args.batch), "--iters", str(args.iters), "--warmup",
           str(args.warmup), "--device", args.device, "--model", args.model,
           "--objects", str(args.objects), "--config", args.config, "--data", args.data] + (
               ["--amp"] if args.amp else []) + (["--count-ops"] if args.count_ops else []) + (
               ["--opts", *args.opts] if args.opts else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["train-step", "inference", "loader"])
    parser.add_argument("--size", type=int, default=None,
                        help="square image side (default 256 train-step, 512 inference)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step (default 2 train-step, 1 inference)")
    parser.add_argument("--model", default="convnext_atto", help="ConvNeXt for train-step")
    parser.add_argument("--objects", type=int, default=5,
                        help="ground-truth objects and proposals per image (train-step)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first iterations")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--config", default="configs/Base-VCLR.yaml",
                        help="model config, relative to the repository (e.g. the synthetic one)")
    parser.add_argument("--amp", action="store_true",
                        help="train-step under autocast (float16 + grad scaler on CUDA, bfloat16 "
                             "on the CPU), as SOLVER.AMP.ENABLED")
    parser.add_argument("--data", choices=["random", "loader"], default="random",
                        help="train-step inputs: random images of --size with --objects objects, "
                             "or the config's training loader (its sizes, augmentations and "
                             "padding; loading not timed)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="data-loader worker counts (loader)")
    parser.add_argument("--count-ops", action="store_true",
                        help="train-step: also profile one step and count its operators that "
                             "call no other, allocations and views aside (about the kernels it "
                             "launches on a GPU)")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides, for every variant")
    args = parser.parse_args()
    train = args.mode == "train-step"
    args.size = args.size or (256 if train else 512)
    args.batch = args.batch or (2 if train else 8 if args.mode == "loader" else 1)
    run = {"train-step": run_train_step, "inference": run_inference, "loader": run_loader}
    if args.single:
        args.variant = args.single
        print(json.dumps(run[args.mode](args)))
        return

    import torch

    size = ("config sizes" if args.mode == "loader" or args.data == "loader"
            else f"{args.size}x{args.size}")
    print(f"# {args.mode}: {size}, batch {args.batch}, device {args.device}, "
          f"{'AMP, ' if args.amp else ''}"
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
          f"{args.iters} iterations after {args.warmup} warm-up")
    if train:
        rows = {v: _spawn(args.mode, v, args) for v in TRAIN_VARIANTS}
        ref = rows["vclr"]["ms_per_step"]
        print(f"model {args.model}, config {args.config} {' '.join(args.opts)}, inputs: "
              + ("the config's training loader" if args.data == "loader" else "random"))
        ops = args.count_ops
        print("| variant | ms / step | v-CLR / variant | peak memory (MiB) |"
              + (" operators / step |" if ops else ""))
        print("| --- | ---: | ---: | ---: |" + (" ---: |" if ops else ""))
        for v, r in rows.items():
            print(f"| {v} | {r['ms_per_step']:.0f} | {ref / r['ms_per_step']:.2f} | "
                  f"{r['peak_mb']:.0f} |" + (f" {r['aten_ops']} |" if ops else ""))
    elif args.mode == "loader":
        print(f"config {args.config} {' '.join(args.opts)}, batch {args.batch}, {args.iters} "
              "batches timed")
        print("| workers | images / s | peak memory of the main process (MiB) | batch pixels / "
              "image pixels |")
        print("| ---: | ---: | ---: | ---: |")
        for w in args.workers:
            r = _spawn(args.mode, str(w), args)
            print(f"| {w} | {r['images_per_s']:.1f} | {r['peak_mb']:.0f} | {r['padding']:.2f} |")
    else:
        rows = {v: _spawn(args.mode, v, args) for v in INFERENCE_VARIANTS}
        ref = rows["retinanet_R_50_FPN"]["images_per_s"]
        print("| model | images / s | relative to RetinaNet R50-FPN | peak memory (MiB) |")
        print("| --- | ---: | ---: | ---: |")
        for v, r in rows.items():
            print(f"| {v} | {r['images_per_s']:.2f} | {r['images_per_s'] / ref:.2f} | "
                  f"{r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
