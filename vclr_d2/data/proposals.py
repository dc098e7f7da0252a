"""Class-agnostic proposals from a discoverer's or a detector's detections (COCO format).

The library behind ``tools/merge_proposals.py``, ``tools/discover_objects.py`` and
``tools/self_train.py``:

- ``read_detections`` / ``check_gt``: validate a COCO results list (or a COCO dict with
  ``annotations`` carrying a ``score``) and a COCO dataset of the training images;
- ``select_proposals`` (one image) and ``merge_proposals`` (a dataset): drop empty boxes and
  scores below a threshold, class-agnostic NMS, drop detections whose box overlaps a
  ground-truth box above an IoU (crowd included), keep the top-k by score;
- ``proposals_dataset``: the proposals alone as a COCO dataset (category 1 "object", with
  ``score``), a separate proposals file for ``vclr_d2.data.datasets``;
- ``mixed_dataset``: the ground truth followed by the proposals marked ``"is_proposal": 1``,
  the official training-file style.

Bad input raises ``ProposalError`` (a ``ValueError``) naming the file, key and value.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torchvision
from pycocotools import mask as mask_utils
from tqdm import tqdm

from vclr_d2.utils.io import InputError, load_json, write_json

__all__ = [
    "AGNOSTIC_CATEGORY",
    "COUNT_KEYS",
    "ProposalError",
    "check_gt",
    "format_counts",
    "load_json",
    "merge_proposals",
    "mixed_dataset",
    "proposals_dataset",
    "read_detections",
    "select_proposals",
    "write_json",
]

AGNOSTIC_CATEGORY = {"id": 1, "name": "object"}
COUNT_KEYS = ("read", "unknown_image", "degenerate", "below_thresh", "nms", "gt_dedup",
              "topk", "kept", "images", "images_without_proposals")


# a problem with a detections or ground-truth file (the message names the file, key and value):
# the project's one input-error type, under the name this module has always raised
ProposalError = InputError


def _bbox(value, where: str) -> list[float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or not all(math.isfinite(v) for v in value)):
        raise ProposalError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {value!r}")
    return [float(v) for v in value]


def check_gt(gt, path) -> None:
    """Check the ground-truth/image-list JSON: ``images`` with ids, optional annotations."""
    if not isinstance(gt, dict):
        raise ProposalError(f"{path}: expected a COCO JSON object at top level, got "
                            f"{type(gt).__name__}")
    if not isinstance(gt.get("images"), list):
        raise ProposalError(f"{path}: missing top-level key 'images' (a list)")
    for key in ("annotations", "categories"):
        if key in gt and not isinstance(gt[key], list):
            raise ProposalError(f"{path}: {key!r} must be a list, got {type(gt[key]).__name__}")
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise ProposalError(f"{path}: images[{i}] has no key 'id'")
    for i, ann in enumerate(gt.get("annotations", [])):
        for key in ("id", "image_id", "bbox"):
            if not isinstance(ann, dict) or key not in ann:
                raise ProposalError(f"{path}: annotations[{i}] has no key {key!r}")
        _bbox(ann["bbox"], f"{path}: annotations[{i}]")
    for i, cat in enumerate(gt.get("categories", [])):
        if not isinstance(cat, dict) or "id" not in cat:
            raise ProposalError(f"{path}: categories[{i}] has no key 'id'")


def read_detections(dets, path) -> list[dict]:
    """Validate the detections (a list, or a dict with ``annotations``) and return the list."""
    if isinstance(dets, dict):
        if "annotations" not in dets:
            raise ProposalError(f"{path}: expected a JSON list of detections (or a COCO dict with "
                                f"'annotations'), got an object with keys {sorted(dets)[:8]}")
        dets = dets["annotations"]
    if not isinstance(dets, list):
        raise ProposalError(f"{path}: expected a JSON list of detections, got "
                            f"{type(dets).__name__}")
    for i, det in enumerate(dets):
        where = f"{path}: detection [{i}]"
        if not isinstance(det, dict):
            raise ProposalError(f"{where} is not an object")
        for key in ("image_id", "bbox", "score"):
            if key not in det:
                raise ProposalError(f"{where} has no key {key!r}")
        _bbox(det["bbox"], where)
        s = det["score"]
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
            raise ProposalError(f"{where}: 'score' must be a finite number, got {s!r}")
        seg = det.get("segmentation")
        if seg is not None:
            if isinstance(seg, dict):
                if "size" not in seg or "counts" not in seg:
                    raise ProposalError(f"{where}: RLE 'segmentation' needs 'size' and 'counts'")
            elif not isinstance(seg, list):
                raise ProposalError(f"{where}: 'segmentation' must be an RLE object or a list of "
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
        raise ProposalError(f"detection of image {det['image_id']!r} with bbox {det['bbox']}: "
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
        raise ProposalError(f"no detection has an image_id of the ground-truth images (e.g. "
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


def format_counts(counts: dict) -> str:
    """One line saying how many detections each selection step dropped and what was kept."""
    return (f"detections read: {counts['read']}; dropped: {counts['unknown_image']} unknown "
            f"image, {counts['degenerate']} empty box, {counts['below_thresh']} below score "
            f"threshold, {counts['nms']} by NMS, {counts['gt_dedup']} overlapping ground "
            f"truth, {counts['topk']} beyond top-k; kept {counts['kept']} proposals on "
            f"{counts['images']} images ({counts['images_without_proposals']} images without "
            f"proposals)")
