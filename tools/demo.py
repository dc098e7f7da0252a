#!/usr/bin/env python
"""The main job on the built-in synthetic open-world set: does v-CLR find more novel objects?

    python tools/demo.py                      # what `make demo` runs: seed 0, 12-17 min on 2 cores
    python tools/demo.py --seeds 0 1 2        # the 3-seed comparison (mean and spread)

Steps (progress is printed throughout):
1. generate the synthetic set if it is absent (cached under $DETECTRON2_DATASETS);
2. train v-CLR (configs/synthetic/vclr.yaml) and the baseline (configs/synthetic/baseline.yaml:
   same model, data and schedule, views and L_sim off) with ``VCLRTrainer``;
3. evaluate both with their EMA (teacher) weights on ``synth_openworld_val_novel`` and
   ``synth_openworld_val_all`` with the open-world AR evaluator;
4. print box and mask AR@10 / AR@100 of both models with the differences, and save them as
   ``results.json`` and ``results.md``;
5. draw both models' top predictions on the same validation images next to the ground truth
   with detectron2's ``Visualizer`` into ``predictions.png``.

Everything goes to ``--output`` (default ``output/demo``). Extra ``KEY VALUE`` pairs at the end
are applied to both configs (e.g. ``SOLVER.MAX_ITER 100`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"baseline": "configs/synthetic/baseline.yaml", "vclr": "configs/synthetic/vclr.yaml"}
METRICS = [("bbox", "AR@10"), ("bbox", "AR@100"), ("segm", "AR@10"), ("segm", "AR@100")]
logger = logging.getLogger("vclr_d2.demo")


def build_cfg(name: str, seed: int, output: str, opts: list[str]):
    from vclr_d2.engine import get_vclr_cfg

    cfg = get_vclr_cfg(str(ROOT / MODELS[name]), opts)
    cfg.SEED = seed
    cfg.OUTPUT_DIR = os.path.join(output, f"{name}_seed{seed}")
    cfg.freeze()
    return cfg


def train_and_evaluate(cfg) -> dict:
    """Train with ``VCLRTrainer`` (or reuse its final checkpoint), then evaluate the teacher."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils.env import seed_all_rng

    from vclr_d2.engine import VCLRTrainer

    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    seed_all_rng(cfg.SEED)
    if os.path.isfile(final):
        logger.info(f"{final} exists: evaluating it (delete it to train again)")
        model = VCLRTrainer.build_model(cfg)
        DetectionCheckpointer(model).load(final)
        results = VCLRTrainer.test(cfg, model)
    else:
        trainer = VCLRTrainer(cfg)
        trainer.resume_or_load(resume=False)
        start = time.perf_counter()
        trainer.train()
        logger.info(f"trained and evaluated in {time.perf_counter() - start:.0f} s")
        model = trainer.model
        # EvalHook evaluated the teacher after the last iteration (DefaultTrainer keeps it)
        results = getattr(trainer, "_last_eval_results", None) or VCLRTrainer.test(cfg, model)
    return {k: dict(v) for k, v in results.items()}, model


def metric(results: dict, dataset: str, task: str, key: str) -> float:
    return float(results.get(dataset, {}).get(task, {}).get(key, float("nan")))


def table(per_seed: dict, datasets: list[str]) -> str:
    """Markdown table: box and mask AR@10/AR@100 of both models with differences (mean, and
    the spread over seeds when there are several)."""
    seeds = sorted(per_seed)
    rows = ["| dataset | metric | baseline | v-CLR | v-CLR - baseline |",
            "| --- | --- | ---: | ---: | ---: |"]

    def fmt(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

    for ds in datasets:
        for task, key in METRICS:
            b = [metric(per_seed[s]["baseline"], ds, task, key) for s in seeds]
            v = [metric(per_seed[s]["vclr"], ds, task, key) for s in seeds]
            d = [y - x for x, y in zip(b, v)]
            label = {"bbox": "box", "segm": "mask"}[task]
            rows.append(f"| {ds} | {label} {key} | {fmt(b)} | {fmt(v)} | {fmt(d)} |")
    return "\n".join(rows)


def draw_predictions(models: dict, cfg, dataset: str, path: str, num_images: int = 4,
                     top_k: int = 10) -> None:
    """A grid: per validation image, its ground truth and each model's top-k predictions."""
    import cv2
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import detection_utils as utils
    from detectron2.structures import BoxMode
    from detectron2.utils.visualizer import Visualizer

    dicts = DatasetCatalog.get(dataset)[:num_images]
    meta = MetadataCatalog.get(dataset)
    rows = []
    for d in dicts:
        image = utils.read_image(d["file_name"], format="RGB")
        h, w = image.shape[:2]
        scale = max(1, 256 // max(h, w))
        big = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        panels = []
        vis = Visualizer(big, meta, scale=1.0)
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                 for a in d["annotations"]]
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale
        panels.append(_titled(vis.overlay_instances(boxes=boxes).get_image(), "ground truth"))
        x = {"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": h * scale,
             "width": w * scale}
        for name, model in models.items():
            model.eval()
            with torch.no_grad():
                inst = model([x])[0]["instances"].to("cpu")[:top_k]
            inst.remove("pred_classes")
            vis = Visualizer(big, meta, scale=1.0)
            panels.append(_titled(vis.draw_instance_predictions(inst).get_image(),
                                  f"{name} top {top_k}"))
        rows.append(np.concatenate(panels, axis=1))
    grid = np.concatenate(rows, axis=0)
    cv2.imwrite(path, grid[:, :, ::-1])


def _titled(image, title: str):
    import cv2
    import numpy as np

    bar = np.full((22, image.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, image], axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds; each trains both models (default: 0)")
    parser.add_argument("--output", default=str(ROOT / "output" / "demo"),
                        help="output folder (default: output/demo)")
    parser.add_argument("--num-vis", type=int, default=4, help="validation images drawn")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    from detectron2.utils.logger import setup_logger

    os.makedirs(args.output, exist_ok=True)
    setup_logger(os.path.join(args.output, "log.txt"), name="detectron2", abbrev_name="d2")
    setup_logger(os.path.join(args.output, "log.txt"), name="vclr_d2")

    from vclr_d2.data.datasets import register_all
    from vclr_d2.data.datasets.synthetic import ensure_synthetic_openworld

    start = time.perf_counter()
    first = build_cfg("vclr", args.seeds[0], args.output, args.opts)
    register_all(first)
    s = first.DATASETS.SYNTHETIC
    steps = 1 + 2 * len(args.seeds) + 1
    print(f"[demo 1/{steps}] synthetic open-world set ({s.NUM_TRAIN} train + {s.NUM_VAL} val "
          f"images, {s.IMAGE_SIZE} px, seed {s.SEED})", flush=True)
    files = ensure_synthetic_openworld(s.NUM_TRAIN, s.NUM_VAL, s.IMAGE_SIZE, s.SEED,
                                       root=s.ROOT or None, progress=True)
    print(f"    {files.dir}", flush=True)

    per_seed, models, step = {}, {}, 1
    datasets = list(first.DATASETS.TEST)
    for seed in args.seeds:
        per_seed[seed] = {}
        for name in ("baseline", "vclr"):
            step += 1
            cfg = build_cfg(name, seed, args.output, args.opts)
            print(f"[demo {step}/{steps}] training and evaluating {name} (seed {seed}, "
                  f"{cfg.SOLVER.MAX_ITER} iterations, batch {cfg.SOLVER.IMS_PER_BATCH}) -> "
                  f"{cfg.OUTPUT_DIR}", flush=True)
            per_seed[seed][name], model = train_and_evaluate(cfg)
            if seed == args.seeds[0]:
                models[name] = model
            with open(os.path.join(args.output, "results.json"), "w") as f:
                json.dump(per_seed, f, indent=1)

    step += 1
    print(f"[demo {step}/{steps}] results", flush=True)
    md = table(per_seed, datasets)
    seeds = ", ".join(map(str, args.seeds))
    header = (f"Teacher (EMA) weights, class-agnostic AR in percent, seed(s) {seeds}"
              + (" (mean ± standard deviation)" if len(args.seeds) > 1 else "") + ".")
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(header + "\n\n" + md + "\n")
    png = os.path.join(args.output, "predictions.png")
    draw_predictions({"baseline": models["baseline"], "v-CLR": models["vclr"]}, first,
                     "synth_openworld_val_all", png, num_images=args.num_vis)
    print("\n" + header + "\n\n" + md + "\n")
    print(f"Predictions of both models on the same validation images: {png}")
    print(f"Results: {os.path.join(args.output, 'results.json')}; total "
          f"{(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
