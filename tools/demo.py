#!/usr/bin/env python
"""The main job on the built-in synthetic open-world set: does v-CLR find more novel objects?

    python tools/demo.py                      # what `make demo` runs: seed 0, ~14 min on 2 cores
    python tools/demo.py --seeds 0 1 2        # the 3-seed comparison (mean and spread)

Steps (progress is printed throughout):
1. generate the synthetic set if it is absent (cached under $DETECTRON2_DATASETS);
2. train rows (a) and (d) of the ablation (docs/ablation.md) side by side, one process each:
   the paper's kind of baseline (configs/synthetic/baseline.yaml: known-class ground truth only,
   natural images, no student augmentations) and v-CLR (configs/synthetic/vclr.yaml: + proposals,
   views, student augmentations, L_sim), same model, data and schedule;
3. evaluate both with their EMA (teacher) weights on ``synth_openworld_val_all``, objects of the
   families annotated in training (known) and of the never-annotated ones (novel) separately;
4. print box and mask AR@10 / AR@100 of both models with the differences, and save them as
   ``results.json`` and ``results.md``;
5. draw both models' top predictions on the same validation images next to the ground truth
   with detectron2's ``Visualizer`` into ``predictions.png``.

Everything goes to ``--output`` (default ``output/demo``); a run whose ``run.json`` exists is
read back. Extra ``KEY VALUE`` pairs at the end are applied to both configs (e.g.
``SOLVER.MAX_ITER 100`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"baseline": "a", "vclr": "d"}  # name -> row of the ablation
NAMES = {"baseline": "baseline (a)", "vclr": "v-CLR (d)"}
METRICS = [f"{t} AR@{k}" for t in ("box", "mask") for k in (10, 100)]
logger = logging.getLogger("vclr_d2.demo")


def config_file(name: str) -> str:
    from vclr_d2.engine.experiments import ROWS

    return str(ROOT / "configs" / ROWS[MODELS[name]].config)


def table(records: dict[str, list[dict]]) -> str:
    """Markdown: known and novel box / mask AR@10 / AR@100 of both models and the paired
    difference (mean, and ± sd over seeds when there are several)."""
    from vclr_d2.engine.report import paired_differences, summarize

    def fmt(values: list[float], sign: str = "") -> str:
        mean, sd = summarize(values)
        return f"{mean:{sign}.1f}" + (f" ± {sd:.1f}" if len(values) > 1 else "")

    rows = [f"| objects | metric | {NAMES['baseline']} | {NAMES['vclr']} | v-CLR − baseline |",
            "| --- | --- | ---: | ---: | ---: |"]
    for objects in ("known", "novel"):
        for m in METRICS:
            key = f"{objects} {m}"
            b = [r["metrics"][key] for r in records["baseline"]]
            v = [r["metrics"][key] for r in records["vclr"]]
            d = paired_differences(records["vclr"], records["baseline"], key)
            rows.append(f"| {objects} | {m} | {fmt(b)} | {fmt(v)} | {fmt(d, '+')} |")
    return "\n".join(rows)


def load_model(cfg):
    """The trained model of a run folder (its ``model_final.pth``)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    model = build_model(cfg)  # (not VCLRTrainer.build_model, which logs the whole model)
    DetectionCheckpointer(model).load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    return model.eval()


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
    parser.add_argument("--jobs", type=int, default=2,
                        help="trainings at a time, one process each (default 2)")
    parser.add_argument("--num-vis", type=int, default=4, help="validation images drawn")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    from detectron2.utils.logger import setup_logger

    os.makedirs(args.output, exist_ok=True)
    setup_logger(os.path.join(args.output, "log.txt"), name="detectron2", abbrev_name="d2")
    setup_logger(os.path.join(args.output, "log.txt"), name="vclr_d2")

    from vclr_d2.data.datasets.builtin import synthetic_kwargs
    from vclr_d2.data.datasets.synthetic import ensure_synthetic_openworld
    from vclr_d2.engine.experiments import TEST_SET, experiment_cfg, machine, run_rows

    start = time.perf_counter()
    first = experiment_cfg(config_file("vclr"), args.seeds[0],
                           os.path.join(args.output, f"vclr_seed{args.seeds[0]}"), args.opts)
    s = first.DATASETS.SYNTHETIC
    print(f"[demo 1/4] synthetic open-world set ({s.NUM_TRAIN} train + {s.NUM_VAL} val "
          f"images, {s.IMAGE_SIZE} px, seed {s.SEED})", flush=True)
    files = ensure_synthetic_openworld(**synthetic_kwargs(first), workers=args.jobs,
                                       progress=True)
    print(f"    {files.dir}", flush=True)

    runs = [(config_file(name), seed, os.path.join(args.output, f"{name}_seed{seed}"))
            for seed in args.seeds for name in MODELS]
    print(f"[demo 2/4] training and evaluating {len(runs)} models, {args.jobs} at a time "
          f"({first.SOLVER.MAX_ITER} iterations, batch {first.SOLVER.IMS_PER_BATCH}; each "
          f"logs to its folder under {args.output})", flush=True)

    def progress(record: dict) -> None:
        m = record["metrics"]
        print(f"    {Path(record['config']).name} seed {record['seed']} done in "
              f"{record['train_seconds'] / 60:.1f} min: known box AR@100 "
              f"{m['known box AR@100']:.1f}, novel box AR@100 {m['novel box AR@100']:.1f}",
              flush=True)

    results = run_rows(runs, args.opts, jobs=args.jobs, on_done=progress)
    records = {name: [r for (c, _, o), r in zip(runs, results)
                      if os.path.basename(o).startswith(name + "_")] for name in MODELS}
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(records, f, indent=1)

    print("[demo 3/4] results", flush=True)
    seeds = ", ".join(map(str, args.seeds))
    header = (f"Teacher (EMA) weights on `{TEST_SET}`, class-agnostic AR in percent, seed(s) "
              f"{seeds}" + (" (mean ± standard deviation)" if len(args.seeds) > 1 else "")
              + "; known objects: families annotated in training, novel: never annotated.")
    md = table(records)
    print("\n" + header + "\n\n" + md + "\n", flush=True)

    print("[demo 4/4] drawing predictions", flush=True)
    png = os.path.join(args.output, "predictions.png")
    models = {NAMES[name]: load_model(experiment_cfg(
        config_file(name), args.seeds[0], os.path.join(args.output, f"{name}_seed{args.seeds[0]}"),
        args.opts)) for name in MODELS}
    draw_predictions(models, first, TEST_SET, png, num_images=args.num_vis)
    minutes = (time.perf_counter() - start) / 60
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(f"{header}\n\n{md}\n\nTotal {minutes:.1f} min on {machine()}.\n")
    print(f"Predictions of both models on the same validation images: {png}")
    print(f"Results: {os.path.join(args.output, 'results.md')}; total {minutes:.1f} min on "
          f"{machine()}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
