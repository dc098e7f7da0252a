#!/usr/bin/env python
"""Evaluate a trained model on the student's views of the test images instead of the natural
images: a diagnostic of how much of what a model learns on views carries over to natural images.

    python tools/eval_views.py --config-file configs/synthetic/vclr.yaml \\
        --weights output/demo/vclr_seed0/model_final.pth --views natural depth style

For each dataset of ``DATASETS.TEST`` and each view, the dataset's images are replaced by the
view's files (``INPUT.VIEWS.DIRS`` / ``EXTS`` / ``ROOT``, resolved as the training mapper does)
and the open-world evaluator runs as usual. A missing view file stops with its path. Prints one
line per (dataset, view) with box and mask AR@10 / AR@100 and writes them as JSON to
``--output``. Config overrides (``KEY VALUE`` pairs) go last, after an option other than
``--views``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint to evaluate")
    parser.add_argument("--views", nargs="+", default=None,
                        help="view names of INPUT.VIEWS.NAMES (default: all of them)")
    parser.add_argument("--output", default=None,
                        help="JSON file of the results (default: next to the weights)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.weights):
        parser.error(f"--weights: no such file: {args.weights}")

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils.logger import setup_logger

    from vclr_d2.data import ViewSpec, view_path
    from vclr_d2.engine import VCLRTrainer, load_cfg

    setup_logger(name="vclr_d2")
    cfg = load_cfg(args.config_file, args.opts, OUTPUT_DIR=os.path.join(
        os.path.dirname(os.path.abspath(args.weights)), "eval_views"))
    v = cfg.INPUT.VIEWS
    specs = {n: ViewSpec(n, d, e) for n, d, e in zip(v.NAMES, v.DIRS, v.EXTS)}
    views = args.views or list(specs)
    unknown = [n for n in views if n not in specs]
    if unknown:
        parser.error(f"--views {unknown} not in INPUT.VIEWS.NAMES {list(specs)}")

    model = VCLRTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(args.weights)
    results = {}
    for dataset in cfg.DATASETS.TEST:
        for name in views:
            test_name = f"{dataset}@{name}"
            dicts = copy.deepcopy(DatasetCatalog.get(dataset))
            for d in dicts:
                d["file_name"] = view_path(d["file_name"], specs[name], v.ROOT)
                if not os.path.isfile(d["file_name"]):
                    raise FileNotFoundError(f"view {name!r} of {dataset}: no such file: "
                                            f"{d['file_name']}")
            if test_name in DatasetCatalog.list():
                DatasetCatalog.remove(test_name)
                MetadataCatalog.remove(test_name)
            DatasetCatalog.register(test_name, lambda dicts=dicts: dicts)
            meta = MetadataCatalog.get(dataset).as_dict()
            meta.pop("name", None)
            MetadataCatalog.get(test_name).set(**meta)
            c = cfg.clone()
            c.defrost()
            c.DATASETS.TEST = (test_name,)
            res = VCLRTrainer.test(c, model)
            res = res.get(test_name, res)  # DefaultTrainer.test unwraps a single dataset
            results[test_name] = {t: dict(m) for t, m in res.items()}
            row = "  ".join(f"{'box' if t == 'bbox' else 'mask'} {k} {res[t][k]:.1f}"
                            for t in ("bbox", "segm") if t in res for k in ("AR@10", "AR@100"))
            print(f"{dataset:28s} {name:8s} {row}", flush=True)
    out = args.output or os.path.join(cfg.OUTPUT_DIR, "results.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
