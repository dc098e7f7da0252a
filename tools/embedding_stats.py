#!/usr/bin/env python
"""How similar are a trained model's object embeddings q at different locations?

    python tools/embedding_stats.py --config-file configs/synthetic/vclr.yaml \\
        --weights output/demo/vclr_seed0/model_final.pth --images 16

L_sim = mean(1 - cos(q_student, q_teacher)) can only pull the student's natural-image
features towards the view features if q tells locations apart. This tool runs the model
(teacher weights unless ``MODEL.VCLR.TEST_WITH_TEACHER False``) on the first ``--images``
natural images of the first ``DATASETS.TEST`` set and prints, over all locations of all FPN
levels (of the padded input, as the head sees it):

- ``random_pair_cos``: the mean cosine between q at ``--pairs`` random pairs of locations;
- ``top_pair_cos``: the same among the ``--top`` locations of highest objectness per image;
- ``mean_direction_norm``: the norm of the mean of the normalised q (1 when every q points the
  same way, about 0 when their directions are spread out);
- the same two cosines after centring (q minus the mean q of the images), which removes the
  component that all locations share.

Config overrides (``KEY VALUE`` pairs) go last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def similarity_stats(q: list[torch.Tensor], objectness: list[torch.Tensor], pairs: int,
                     top: int, seed: int = 0) -> dict[str, float]:
    """Cosine statistics of embeddings ``q[i]`` (R_i, D) with ``objectness[i]`` (R_i,) per image.

    Random pairs are drawn over all locations of all images (two distinct locations each);
    top pairs are all pairs of distinct locations among the ``top`` highest-objectness
    locations of each image.
    """
    if not q or any(len(x) != len(o) for x, o in zip(q, objectness)) or len(q) != len(objectness):
        raise ValueError("q and objectness must be non-empty lists with one entry per location")
    allq = torch.cat(q).double()
    if len(allq) < 2:
        raise ValueError(f"need at least 2 locations, got {len(allq)}")
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(len(allq), (pairs,), generator=g)
    b = (a + torch.randint(1, len(allq), (pairs,), generator=g)) % len(allq)  # b != a
    center = allq.mean(dim=0)

    def random_cos(x: torch.Tensor) -> float:
        return F.cosine_similarity(x[a], x[b], dim=1).mean().item()

    def top_cos(shift: torch.Tensor) -> float:
        vals = []
        for x, o in zip(q, objectness):
            k = min(top, len(x))
            if k < 2:
                continue
            z = F.normalize(x.double()[o.topk(k).indices] - shift, dim=1)
            sim = z @ z.T
            vals.append((sim.sum() - sim.diagonal().sum()) / (k * (k - 1)))
        return torch.stack(vals).mean().item() if vals else float("nan")

    zero = torch.zeros_like(center)
    return {
        "random_pair_cos": random_cos(allq),
        "top_pair_cos": top_cos(zero),
        "mean_direction_norm": F.normalize(allq, dim=1).mean(dim=0).norm().item(),
        "centred_random_pair_cos": random_cos(allq - center),
        "centred_top_pair_cos": top_cos(center),
        "locations": int(len(allq)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint to analyse")
    parser.add_argument("--images", type=int, default=16, help="number of test images")
    parser.add_argument("--pairs", type=int, default=20000, help="random location pairs")
    parser.add_argument("--top", type=int, default=500,
                        help="highest-objectness locations per image for top_pair_cos")
    parser.add_argument("--output", default=None, help="also write the numbers as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    for name in ("images", "pairs", "top"):
        if getattr(args, name) < (2 if name == "top" else 1):
            parser.error(f"--{name} must be positive (--top at least 2), got {getattr(args, name)}")
    if not os.path.isfile(args.weights):
        parser.error(f"--weights: no such file: {args.weights}")

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import build_detection_test_loader

    from vclr_d2.engine import VCLRTrainer, load_cfg

    cfg = load_cfg(args.config_file, args.opts)
    if not cfg.DATASETS.TEST:
        parser.error("DATASETS.TEST is empty: name the test set to read images from")
    model = VCLRTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(args.weights)
    model.eval()
    teacher = cfg.MODEL.VCLR.TEST_WITH_TEACHER and hasattr(model, "teacher")
    backbone, head = ((model.teacher["backbone"], model.teacher["head"]) if teacher
                      else (model.backbone, model.head))
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    q, obj = [], []
    with torch.no_grad():
        for inputs in loader:
            images = model.preprocess(inputs, "image", augment=False)
            out = head(backbone(images.tensor))
            q.extend(out.embeddings)
            obj.extend(out.objectness)
            if len(q) >= args.images:
                break
    stats = similarity_stats(q[:args.images], obj[:args.images], args.pairs, args.top)
    stats.update(images=min(len(q), args.images), weights="teacher" if teacher else "student",
                 dataset=cfg.DATASETS.TEST[0])
    print(json.dumps(stats, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(stats, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
