"""What the recall engine (``recall.OpenWorldRecall``) takes and gives: COCOeval's thresholds,
checked ``max_dets`` and area ranges, ``Detections``, ``EvalArrays``, the box IoU in
pycocotools' arithmetic and RLE areas."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from .ground_truth import CocoGroundTruth

__all__ = ["COCO_AREA_RANGES", "DEFAULT_MAX_DETS", "IOU_THRESHOLDS", "RECALL_THRESHOLDS",
           "Detections", "EvalArrays", "as_ground_truth", "check_area_ranges", "check_max_dets",
           "coco_box_iou", "rle_areas"]

# The same expressions as pycocotools' Params.setDetParams, so the floats are identical.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
DEFAULT_MAX_DETS = (1, 10, 20, 30, 50, 100, 300)
COCO_AREA_RANGES = {
    "all": (0.0 ** 2, 1e5 ** 2),
    "small": (0.0 ** 2, 32.0 ** 2),
    "medium": (32.0 ** 2, 96.0 ** 2),
    "large": (96.0 ** 2, 1e5 ** 2),
}
def check_max_dets(max_dets: Iterable[int]) -> tuple[int, ...]:
    """Sorted max_dets values; anything but distinct positive integers raises ValueError."""
    values = list(max_dets)
    if not values:
        raise ValueError("max_dets is empty; give at least one positive integer, e.g. (100,)")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | np.integer | float) or v < 1 or (
                float(v) != int(v)):
            raise ValueError(f"max_dets must hold positive integers; got {v!r} in {values}")
    out = tuple(sorted(int(v) for v in values))
    if len(set(out)) != len(out):
        raise ValueError(f"max_dets has repeated values: {values}")
    return out


def check_area_ranges(area_ranges: Mapping[str, Sequence[float]]) -> dict[str, tuple]:
    ranges = {str(k): (float(v[0]), float(v[1])) for k, v in area_ranges.items()}
    if "all" not in ranges:
        raise ValueError(f"area_ranges needs an 'all' entry; got {list(ranges)}")
    for label, (lo, hi) in ranges.items():
        if lo > hi:
            raise ValueError(f"area range {label!r} is empty: ({lo}, {hi})")
    return ranges


def coco_box_iou(dt: np.ndarray, gt: np.ndarray, iscrowd: np.ndarray) -> np.ndarray:
    """Row-wise IoU of paired XYWH boxes, in the arithmetic of pycocotools' ``bbIou``.

    Args:
        dt, gt: (P, 4) float64 XYWH boxes; row p of ``dt`` is compared with row p of ``gt``.
        iscrowd: (P,) bool; for a crowd box the union is the detection's area.

    Returns:
        (P,) float64 IoU, 0 where the boxes do not overlap.
    """
    w = np.minimum(dt[:, 2] + dt[:, 0], gt[:, 2] + gt[:, 0]) - np.maximum(dt[:, 0], gt[:, 0])
    h = np.minimum(dt[:, 3] + dt[:, 1], gt[:, 3] + gt[:, 1]) - np.maximum(dt[:, 1], gt[:, 1])
    overlap = (w > 0) & (h > 0)
    inter = w * h
    da = dt[:, 2] * dt[:, 3]
    union = np.where(iscrowd, da, da + gt[:, 2] * gt[:, 3] - inter)
    out = np.zeros(len(dt), dtype=np.float64)
    np.divide(inter, union, out=out, where=overlap)
    return out


@dataclass
class Detections:
    """Class-agnostic detections of an evaluation set, in any order.

    Attributes:
        image_ids: (N,) image id of each detection.
        scores: (N,) float64 scores.
        boxes: (N, 4) float64 XYWH boxes, or None for mask-only detections.
        rles: N compressed RLEs (``pycocotools.mask.encode`` output; ``counts`` as bytes or
            str), or None for box-only detections.
    """

    image_ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray | None = None
    rles: list[dict] | None = None

    def __post_init__(self):
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        n = len(self.image_ids)
        if len(self.scores) != n:
            raise ValueError(f"Detections: {n} image ids but {len(self.scores)} scores")
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
            if len(self.boxes) != n:
                raise ValueError(f"Detections: {n} image ids but {len(self.boxes)} boxes")
        if self.rles is not None:
            self.rles = list(self.rles)
            if len(self.rles) != n:
                raise ValueError(f"Detections: {n} image ids but {len(self.rles)} masks")

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def from_coco_results(cls, results: Sequence[Mapping[str, Any]]) -> Detections:
        """From COCO result dicts (``image_id``, ``score``, ``bbox`` and/or ``segmentation``).

        ``category_id`` is ignored. Boxes are kept when every result has one, masks likewise.
        """
        for key in ("image_id", "score"):
            missing = [i for i, r in enumerate(results) if key not in r]
            if missing:
                raise KeyError(f"COCO result #{missing[0]} has no {key!r}")
        has_box = all("bbox" in r for r in results)
        has_mask = all("segmentation" in r for r in results)
        return cls(
            image_ids=np.array([r["image_id"] for r in results], dtype=np.int64),
            scores=np.array([r["score"] for r in results], dtype=np.float64),
            boxes=np.array([r["bbox"] for r in results], dtype=np.float64) if has_box else None,
            rles=[r["segmentation"] for r in results] if has_mask else None,
        )


@dataclass
class EvalArrays:
    """Accumulated results, laid out as ``COCOeval.eval`` with the category axis dropped.

    Attributes:
        recall: (T, A, M) recall; -1 where an area range has no non-ignored ground truth.
        precision: (T, R, A, M) interpolated precision at the recall thresholds; -1 where an
            area range has no non-ignored ground truth.
        num_gt: (A,) non-ignored ground truth per area range.
        max_dets: the M values of k.
        area_labels: the A area-range names.
        ap_max_det: the k at which ``summarize`` reports AP.
    """

    recall: np.ndarray
    precision: np.ndarray
    num_gt: np.ndarray
    max_dets: tuple[int, ...]
    area_labels: tuple[str, ...]
    ap_max_det: int


def rle_areas(rles: Sequence[dict]) -> np.ndarray:
    """(N,) float64 pixel counts of compressed RLEs.

    ``pycocotools.mask.area`` is called on at most 255 RLEs at a time: with NumPy 2 it raises
    OverflowError for longer lists (it builds a uint8 array holding the list's length).
    """
    parts = [np.asarray(mask_util.area(list(rles[i:i + 255])), dtype=np.float64).reshape(-1)
             for i in range(0, len(rles), 255)]
    return np.concatenate(parts) if parts else np.zeros(0)


def as_ground_truth(gt: Any) -> CocoGroundTruth:
    if isinstance(gt, CocoGroundTruth):
        return gt
    if isinstance(gt, str):
        return CocoGroundTruth.from_json(gt)
    if isinstance(gt, Mapping):
        return CocoGroundTruth(gt)
    if hasattr(gt, "dataset") and isinstance(gt.dataset, Mapping):
        return CocoGroundTruth.from_coco(gt)
    raise TypeError(f"ground truth must be a CocoGroundTruth, COCO object, dict or JSON path; "
                    f"got {type(gt).__name__}")
