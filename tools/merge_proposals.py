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
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torchvision
from pycocotools import mask as mask_utils
from tqdm import tqdm

AGNOSTIC_CATEGORY = {"id": 1, "name": "object"}
COUNT_KEYS = ("read", "unknown_image", "degenerate", "below_thresh", "nms", "gt_dedup",
              "topk", "kept", "images", "images_without_proposals")


class ToolError(Exception):
    """A problem with the input or the options; its message names the file, key and value."""


def load_json(path: str | os.PathLike, what: str):
    """Read a JSON file; a missing or malformed file raises ``ToolError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ToolError(f"{what} file not found: {p}")
    try:
        with p.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ToolError(f"{what} file {p} is not valid JSON: {e.msg} at line {e.lineno}, "
                        f"column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise ToolError(f"{what} file {p} is not UTF-8 text JSON: {e}") from e


def write_json(obj, path: str | os.PathLike) -> None:
    """Write compact JSON atomically (a temporary file renamed), creating parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, p)


def _bbox(value, where: str) -> list[float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not all(math.isfinite(v) for v in value)):
        raise ToolError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {value!r}")
    return [float(v) for v in value]


def check_gt(gt, path) -> None:
    """Check the ground-truth/image-list JSON: ``images`` with ids, optional annotations."""
    if not isinstance(gt, dict):
        raise ToolError(f"{path}: expected a COCO JSON object at top level, got "
                        f"{type(gt).__name__}")
    if not isinstance(gt.get("images"), list):
        raise ToolError(f"{path}: missing top-level key 'images' (a list)")
    for key in ("annotations", "categories"):
        if key in gt and not isinstance(gt[key], list):
            raise ToolError(f"{path}: {key!r} must be a list, got {type(gt[key]).__name__}")
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise ToolError(f"{path}: images[{i}] has no key 'id'")
    for i, ann in enumerate(gt.get("annotations", [])):
        for key in ("id", "image_id", "bbox"):
            if not isinstance(ann, dict) or key not in ann:
                raise ToolError(f"{path}: annotations[{i}] has no key {key!r}")
        _bbox(ann["bbox"], f"{path}: annotations[{i}]")
    for i, cat in enumerate(gt.get("categories", [])):
        if not isinstance(cat, dict) or "id" not in cat:
            raise ToolError(f"{path}: categories[{i}] has no key 'id'")


def read_detections(dets, path) -> list[dict]:
    """Validate the detections (a list, or a dict with ``annotations``) and return the list."""
    if isinstance(dets, dict):
        if "annotations" not in dets:
            raise ToolError(f"{path}: expected a JSON list of detections (or a COCO dict with "
                            f"'annotations'), got an object with keys {sorted(dets)[:8]}")
        dets = dets["annotations"]
    if not isinstance(dets, list):
        raise ToolError(f"{path}: expected a JSON list of detections, got {type(dets).__name__}")
    for i, det in enumerate(dets):
        where = f"{path}: detection [{i}]"
        if not isinstance(det, dict):
            raise ToolError(f"{where} is not an object")
        for key in ("image_id", "bbox", "score"):
            if key not in det:
                raise ToolError(f"{where} has no key {key!r}")
        _bbox(det["bbox"], where)
        s = det["score"]
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
            raise ToolError(f"{where}: 'score' must be a finite number, got {s!r}")
        seg = det.get("segmentation")
        if seg is not None:
            if isinstance(seg, dict):
                if "size" not in seg or "counts" not in seg:
                    raise ToolError(f"{where}: RLE 'segmentation' needs 'size' and 'counts'")
            elif not isinstance(seg, list):
                raise ToolError(f"{where}: 'segmentation' must be an RLE object or a list of "
                                f"polygons, got {type(seg).__name__}")
    return dets


def _xyxy(boxes: list[list[float]]) -> torch.Tensor:
    t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


def _area(det: dict, image: dict) -> float:
    """Mask area when the detection has a segmentation we can measure, else box area."""
    seg = det.get("segmentation")
    w, h = det["bbox"][2], det["bbox"][3]
    try:
        if isinstance(seg, dict):
            rle = seg
            if isinstance(seg["counts"], list):
                rle = mask_utils.frPyObjects(seg, *seg["size"])
            elif isinstance(seg["counts"], str):
                rle = dict(seg, counts=seg["counts"].encode("ascii"))
            return float(mask_utils.area(rle))
        if isinstance(seg, list) and seg and "height" in image and "width" in image:
            rles = mask_utils.frPyObjects(seg, int(image["height"]), int(image["width"]))
            return float(mask_utils.area(mask_utils.merge(rles)))
    except Exception as e:  # pycocotools raises plain Exceptions
        raise ToolError(f"detection of image {det['image_id']!r} with bbox {det['bbox']}: "
                        f"cannot decode its 'segmentation': {e}") from e
    return float(w * h)


def select_proposals(dets: list[dict], gt_boxes: list[list[float]], score_thresh: float,
                     nms_iou: float, gt_dedup_iou: float, topk: int,
                     counts: dict | None = None) -> list[dict]:
    """The proposals of one image, best first: threshold, NMS, ground-truth dedup, top-k."""
    counts = counts if counts is not None else defaultdict(int)
    valid = [d for d in dets if d["bbox"][2] > 0 and d["bbox"][3] > 0]
    counts["degenerate"] += len(dets) - len(valid)
    kept = [d for d in valid if d["score"] >= score_thresh]
    counts["below_thresh"] += len(valid) - len(kept)
    # stable order by decreasing score, so ties keep the input order
    kept.sort(key=lambda d: -d["score"])
    if kept and nms_iou < 1.0:
        boxes = _xyxy([d["bbox"] for d in kept])
        scores = torch.tensor([float(d["score"]) for d in kept], dtype=torch.float64)
        keep = torchvision.ops.nms(boxes, scores, nms_iou).tolist()
        counts["nms"] += len(kept) - len(keep)
        kept = [kept[i] for i in sorted(keep)]
    if kept and gt_boxes and gt_dedup_iou < 1.0:
        iou = torchvision.ops.box_iou(_xyxy([d["bbox"] for d in kept]), _xyxy(gt_boxes))
        dup = (iou > gt_dedup_iou).any(dim=1).tolist()
        counts["gt_dedup"] += sum(dup)
        kept = [d for d, is_dup in zip(kept, dup) if not is_dup]
    counts["topk"] += max(0, len(kept) - topk)
    return kept[:topk]


def merge_proposals(dets: list[dict], gt: dict, score_thresh: float = 0.0,
                    nms_iou: float = 0.5, gt_dedup_iou: float = 0.5, topk: int = 10,
                    progress: bool = True) -> tuple[dict[object, list[dict]], dict]:
    """Select proposals for every image of ``gt``; returns ``({image_id: [det, ...]}, counts)``.

    ``dets`` and ``gt`` must have passed ``read_detections`` / ``check_gt``.
    """
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["read"] = len(dets)
    image_ids = [img["id"] for img in gt["images"]]
    known = set(image_ids)
    per_image: dict[object, list[dict]] = defaultdict(list)
    for det in dets:
        if det["image_id"] in known:
            per_image[det["image_id"]].append(det)
        else:
            counts["unknown_image"] += 1
    if dets and counts["unknown_image"] == len(dets):
        example = dets[0]["image_id"]
        raise ToolError(f"no detection has an image_id of the ground-truth images (e.g. "
                        f"image_id {example!r}); are --dets and --gt of the same split?")
    gt_boxes: dict[object, list[list[float]]] = defaultdict(list)
    for ann in gt.get("annotations", []):
        gt_boxes[ann["image_id"]].append(ann["bbox"])
    selected: dict[object, list[dict]] = {}
    for image_id in tqdm(image_ids, desc="proposals", unit="img", disable=not progress):
        props = select_proposals(per_image.get(image_id, []), gt_boxes.get(image_id, []),
                                 score_thresh, nms_iou, gt_dedup_iou, topk, counts)
        selected[image_id] = props
        counts["kept"] += len(props)
        counts["images_without_proposals"] += not props
    counts["images"] = len(image_ids)
    return selected, counts


def _proposal_annotation(det: dict, image: dict, ann_id: int, category_id: int) -> dict:
    ann = {"id": ann_id, "image_id": det["image_id"], "bbox": [float(v) for v in det["bbox"]],
           "area": _area(det, image), "iscrowd": 0, "category_id": category_id,
           "score": float(det["score"])}
    if det.get("segmentation") is not None:
        ann["segmentation"] = det["segmentation"]
    return ann


def proposals_dataset(gt: dict, selected: dict) -> dict:
    """The proposals-only COCO dataset (``--out``); ids 1..N in image order."""
    anns = []
    for img in gt["images"]:
        for det in selected.get(img["id"], []):
            anns.append(_proposal_annotation(det, img, len(anns) + 1, AGNOSTIC_CATEGORY["id"]))
    return {"images": gt["images"], "annotations": anns, "categories": [dict(AGNOSTIC_CATEGORY)]}


def mixed_dataset(gt: dict, selected: dict, category_id: int = 1) -> dict:
    """Ground truth followed by the proposals marked ``is_proposal`` (``--mix-out``)."""
    gt_anns = gt.get("annotations", [])
    ids = [a["id"] for a in gt_anns if isinstance(a["id"], int)]
    next_id = max(ids, default=0) + 1
    anns = list(gt_anns)
    for img in gt["images"]:
        for det in selected.get(img["id"], []):
            ann = _proposal_annotation(det, img, next_id, category_id)
            ann["is_proposal"] = 1
            anns.append(ann)
            next_id += 1
    categories = list(gt.get("categories", []))
    if not any(c["id"] == category_id for c in categories):
        categories.append({"id": category_id, "name": AGNOSTIC_CATEGORY["name"]})
    return {**gt, "annotations": anns, "categories": categories}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """The module docstring verbatim, and the defaults of the options that have one."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="merge_proposals.py",
        description=__doc__, formatter_class=_HelpFormatter)
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


def format_counts(counts: dict) -> str:
    return (f"detections read: {counts['read']}; dropped: {counts['unknown_image']} unknown "
            f"image, {counts['degenerate']} empty box, {counts['below_thresh']} below score "
            f"threshold, {counts['nms']} by NMS, {counts['gt_dedup']} overlapping ground "
            f"truth, {counts['topk']} beyond top-k; kept {counts['kept']} proposals on "
            f"{counts['images']} images ({counts['images_without_proposals']} images without "
            f"proposals)")


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
    try:
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
    except ToolError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(format_counts(counts))
    for path in (args.out, args.mix_out):
        if path:
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
