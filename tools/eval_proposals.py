#!/usr/bin/env python
"""Class-agnostic recall of proposal files against a COCO ground truth (box and mask AR@k).

    S=datasets/synth_openworld/<key>
    python tools/eval_proposals.py --gt $S/annotations/train_all.json \\
        --proposals simulated=$S/annotations/train_proposals.json \\
                    discovered=output/discovery/train_depth.json \\
        --known-classes ellipse rectangle triangle star --out output/discovery/train_recall

Each ``--proposals NAME=FILE`` is a COCO results list or a COCO dict with ``annotations`` (what
``tools/discover_objects.py`` and ``tools/merge_proposals.py --out`` write). It is evaluated on
the ground-truth images it covers (its ``images``, or the images it has detections on) with
``vclr_d2.evaluation.evaluate_recall`` (COCOeval's AR, class-agnostic). With
``--known-classes``, recall is also given for the ground truth of the known classes and of the
others (novel). Masks are evaluated when every proposal and every ground-truth object has one.
``--out PREFIX`` writes ``PREFIX.md`` (the printed table) and ``PREFIX.json``.
"""

from __future__ import annotations

import argparse
import os
import sys

from vclr_d2.data.proposals import read_detections
from vclr_d2.evaluation import CocoGroundTruth, OpenWorldRecall, summarize
from vclr_d2.utils import InputError, load_json, write_json


def evaluate_file(gt: CocoGroundTruth, data, path: str, max_dets: list[int],
                  subsets: dict[str, list[int] | None]) -> dict:
    """{"per_image", "images", "bbox": {subset: metrics}, "segm": ...} of one proposals file."""
    dets = read_detections(data, path)
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        ids = {img["id"] for img in data["images"]}
    else:
        ids = {d["image_id"] for d in dets}
    img_ids = sorted(ids & set(gt.image_ids.tolist()))
    if not img_ids:
        raise InputError(f"{path}: none of its images is in the ground truth")
    out = {"images": len(img_ids), "per_image": len(dets) / len(img_ids)}
    tasks = ["bbox"]
    if gt.has_masks and dets and all("segmentation" in d for d in dets):
        tasks.append("segm")
    for task in tasks:
        engine = OpenWorldRecall(gt, dets, task, max_dets=max_dets, img_ids=img_ids)
        out[task] = {name: summarize(engine.evaluate(ids)) for name, ids in subsets.items()}
    return out


def table(results: dict, max_dets: list[int]) -> str:
    ks = [k for k in (10, 100) if k in max_dets] or max_dets[-1:]
    head = ["proposals", "objects", "per image"] + [
        f"{'box' if t == 'bbox' else 'mask'} AR@{k}" for t in ("bbox", "segm") for k in ks]
    rows = ["| " + " | ".join(head) + " |", "| --- | --- |" + " ---: |" * (len(head) - 2)]
    for name, res in results.items():
        for subset in res["bbox"]:
            cells = [name, subset, f"{res['per_image']:.1f}"]
            for task in ("bbox", "segm"):
                for k in ks:
                    value = res.get(task, {}).get(subset, {}).get(f"AR@{k}")
                    cells.append("-" if value is None else f"{value:.1f}")
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eval_proposals.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True, help="COCO ground-truth JSON (with categories)")
    p.add_argument("--proposals", nargs="+", required=True, metavar="NAME=FILE",
                   help="proposal files to evaluate, each named")
    p.add_argument("--known-classes", nargs="*", default=[],
                   help="category names of the known classes: adds known/novel rows")
    p.add_argument("--max-dets", type=int, nargs="+", default=[1, 10, 100],
                   help="k of AR@k (default: 1 10 100)")
    p.add_argument("--out", help="write PREFIX.md and PREFIX.json")
    args = p.parse_args(argv)
    named = []
    for entry in args.proposals:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            p.error(f"--proposals entry {entry!r} must be NAME=FILE")
        named.append((name, path))
    try:
        if not os.path.isfile(args.gt):
            raise InputError(f"ground-truth file not found: {args.gt}")
        gt = CocoGroundTruth.from_json(args.gt)
        subsets: dict[str, list[int] | None] = {"all": None}
        if args.known_classes:
            known = gt.category_ids_of(args.known_classes).tolist()
            subsets["known"] = known
            subsets["novel"] = sorted(set(gt.categories) - set(known))
        max_dets = sorted(set(args.max_dets))
        results = {name: evaluate_file(gt, load_json(path, "proposals"), path, max_dets,
                                       subsets) for name, path in named}
    except ValueError as e:  # InputError is a ValueError
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    md = table(results, max_dets)
    print(md)
    if args.out:
        with open(args.out + ".md", "w") as f:
            f.write(f"Ground truth: {args.gt}\n\n{md}\n")
        write_json({"gt": args.gt, "proposals": dict(named), "results": results},
                   args.out + ".json")
        print(f"wrote {args.out}.md and {args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
