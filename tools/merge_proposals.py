#!/usr/bin/env python
"""Turn a discoverer's detections into per-image top-k class-agnostic training proposals.

    python tools/merge_proposals.py --dets cutler_train2017.json \\
        --gt datasets/openworld_voc_train2017_gt.json --topk 10 \\
        --mix-out datasets/vCLR_voc_train2017_top10.json

Input ``--dets``: COCO-format detections of any unsupervised discoverer (CutLER, VoteCut, ...),
a JSON list of ``{"image_id", "bbox": [x, y, w, h], "score", "segmentation" (optional RLE or
polygons), "category_id" (ignored)}``; a COCO dataset dict whose ``annotations`` carry a
score is accepted too. ``--gt``: the COCO JSON whose ``images`` are the training images and
whose ``annotations`` are its ground truth (may be absent for an image list).

Per image, in this order: drop detections with score < ``--score-thresh``; class-agnostic NMS
at ``--nms-iou`` (1.0 turns it off); drop detections whose box IoU with any ground-truth box
of the image (crowd included) exceeds ``--gt-dedup-iou`` (1.0 keeps all); keep the ``--topk``
highest scores. Detections of images that are not in ``--gt`` are dropped and counted.
The selection is ``vclr_d2.data.proposals`` (which ``tools/self_train.py`` also uses).

Outputs (one or both):

* ``--out``: a proposals-only COCO dataset: the images of ``--gt``, the proposals as
  annotations ``{"id", "image_id", "bbox", "area", "iscrowd": 0, "category_id": 1, "score",
  "segmentation"?}`` and the one category ``{"id": 1, "name": "object"}``.
* ``--mix-out``: one training JSON in the official style: the ground-truth dataset with its
  annotations unchanged, followed by the proposals marked ``"is_proposal": 1`` with new ids
  (above every ground-truth id) and category ``--proposal-category-id`` (added to
  ``categories`` as "object" when the ground truth has no such id). Training is
  class-agnostic: ``is_proposal`` is what tells a proposal from ground truth.
"""

from __future__ import annotations

import argparse
import sys

from vclr_d2.data.proposals import (
    check_gt,
    format_counts,
    load_json,
    merge_proposals,
    mixed_dataset,
    proposals_dataset,
    read_detections,
    write_json,
)
from vclr_d2.utils import HelpFormatter, run_tool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="merge_proposals.py",
        description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dets", required=True, help="detections JSON (a COCO results list)")
    p.add_argument("--gt", required=True,
                   help="COCO JSON of the training images (and their ground truth)")
    p.add_argument("--out", help="output: proposals-only COCO JSON")
    p.add_argument("--mix-out", help="output: ground truth + proposals (is_proposal=1) JSON")
    p.add_argument("--score-thresh", type=float, default=0.0,
                   help="drop detections with a lower score")
    p.add_argument("--nms-iou", type=float, default=0.5,
                   help="class-agnostic NMS IoU threshold (1.0: no NMS)")
    p.add_argument("--gt-dedup-iou", type=float, default=0.5,
                   help="drop detections whose box IoU with a ground-truth box exceeds this "
                        "(1.0: keep all)")
    p.add_argument("--topk", type=int, default=10, help="proposals kept per image")
    p.add_argument("--proposal-category-id", type=int, default=1,
                   help="category_id of the proposals in --mix-out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out and not args.mix_out:
        parser.error("give at least one of --out and --mix-out")
    for name in ("nms_iou", "gt_dedup_iou"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")

    def body() -> int:
        gt = load_json(args.gt, "ground-truth")
        check_gt(gt, args.gt)
        dets = read_detections(load_json(args.dets, "detections"), args.dets)
        selected, counts = merge_proposals(dets, gt, args.score_thresh, args.nms_iou,
                                           args.gt_dedup_iou, args.topk,
                                           progress=not args.no_progress)
        if args.out:
            write_json(proposals_dataset(gt, selected), args.out)
        if args.mix_out:
            write_json(mixed_dataset(gt, selected, args.proposal_category_id), args.mix_out)
        print(format_counts(counts))
        for path in (args.out, args.mix_out):
            if path:
                print(f"wrote {path}")
        return 0

    return run_tool(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
