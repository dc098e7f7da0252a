"""Class-agnostic COCO average recall and precision, vectorised, equal to ``COCOeval``.

Shape shorthand:
    I  images of the ground truth, G ground-truth objects
    N  detections kept for evaluation (the top max(max_dets) of each image, by score)
    P  (detection, ground truth) pairs of one image with IoU >= 0.5 (the lowest threshold)
    T  IoU thresholds (10: 0.50:0.05:0.95), R recall thresholds (101: 0:0.01:1)
    A  area ranges, M max_dets values

``OpenWorldRecall.evaluate`` returns exactly the ``recall`` (T, A, M) and ``precision``
(T, R, A, M) arrays of pycocotools' ``COCOeval`` with ``params.useCats = 0`` after
``evaluate()`` + ``accumulate()`` (the category axis dropped), -1 where an area range has no
non-ignored ground truth. How:

- Per image, detections are sorted by score with a stable sort and cut at max(max_dets). The
  greedy match in score order makes the match of the top k a prefix of the match of the top
  max(max_dets), so one match serves every k (as in COCOeval).
- A detection takes, among the ground truth still free at threshold t (crowd ground truth is
  always free), the one with the largest key (non-ignored, IoU, row): non-ignored ground truth
  before ignored (crowd or outside the area range), then the highest IoU >= t, and of equal
  IoUs the later one in COCOeval's order. Only pairs with IoU >= 0.5 can ever match, so the
  match runs on that sparse pair list.
- The match is sequential only inside an image: step s handles the s-th paired detection of
  every image, for all area ranges and thresholds at once; there are at most max(max_dets)
  steps. Its output is the sparse list of matches.
- Accumulation works on the matches only. With detections in COCOeval's accumulation order
  (image by image, then a stable sort by score), the false positives before a detection are
  the detections inside the area range before it minus the matched ones among them; the
  interpolated precision at a recall threshold is the largest precision at or after the true
  positive that reaches it, as precision only rises at true positives.

Box IoU is computed for all pairs at once in the arithmetic of pycocotools' ``bbIou``; mask
IoU calls ``pycocotools.mask.iou`` once per image on RLEs.

Deviations from COCOeval, all on input COCOeval mishandles: it stores matches as annotation
ids with 0 for "no match", so a ground-truth annotation with id 0 is matched but its detection
counted as unmatched; here it is matched like any other. Detection ties are broken by input
order (COCOeval groups an image's detections by ``category_id`` first; give every detection
the same category for identical ties).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from .ground_truth import CocoGroundTruth
from .recall_types import (
    COCO_AREA_RANGES,
    DEFAULT_MAX_DETS,
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    Detections,
    EvalArrays,
    as_ground_truth,
    check_area_ranges,
    check_max_dets,
    coco_box_iou,
    rle_areas,
)

__all__ = [
    "COCO_AREA_RANGES",
    "DEFAULT_MAX_DETS",
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "Detections",
    "EvalArrays",
    "OpenWorldRecall",
    "check_max_dets",
    "coco_box_iou",
    "evaluate_recall",
    "rle_areas",
    "summarize",
]

# Box pairs computed per chunk, to bound memory on large sets.
_PAIR_CHUNK = 4_000_000


class OpenWorldRecall:
    """Class-agnostic COCO evaluation of one detection set against one ground truth.

    The detections are sorted and the IoU pairs computed once, at construction; ``evaluate``
    then matches and accumulates, for all the ground truth or for the ground truth of some
    categories (the seen/unseen breakdown).
    """

    def __init__(
        self,
        gt: CocoGroundTruth | Any,
        detections: Detections | Sequence[Mapping[str, Any]],
        iou_type: str = "bbox",
        *,
        max_dets: Iterable[int] = DEFAULT_MAX_DETS,
        area_ranges: Mapping[str, Sequence[float]] = COCO_AREA_RANGES,
        img_ids: Iterable[int] | None = None,
    ):
        """
        Args:
            gt: ``CocoGroundTruth``, a ``pycocotools.coco.COCO``, a COCO dict or a JSON path.
            detections: ``Detections`` or a list of COCO result dicts.
            iou_type: "bbox" or "segm".
            max_dets: the k of AR@k (sorted; the largest one truncates each image).
            area_ranges: name -> (min area, max area), both inclusive; must include "all".
            img_ids: images to evaluate (default: every image of the ground truth); detections
                on other images of the ground truth are left out, as COCOeval does.
        """
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        self.gt = as_ground_truth(gt)
        self.iou_type = iou_type
        self.max_dets = check_max_dets(max_dets)
        self.area_ranges = check_area_ranges(area_ranges)
        self._area_lo, self._area_hi = (
            np.array(v, dtype=np.float64)[:, None] for v in zip(*self.area_ranges.values()))
        self._iou_thr = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)

        gt = self.gt
        self._in_eval = np.ones(len(gt.image_ids), dtype=bool)
        if img_ids is not None:
            ids = np.asarray(list(img_ids), dtype=np.int64)
            pos, found = gt.image_positions(ids)
            if not found.all():
                raise ValueError(f"image id {ids[~found][0]} is not in {gt.source}")
            self._in_eval[:] = False
            self._in_eval[pos] = True
        if not isinstance(detections, Detections):
            detections = Detections.from_coco_results(detections)
        self._prepare_detections(detections)
        self._pairs = self._box_pairs() if iou_type == "bbox" else self._mask_pairs()

    def _prepare_detections(self, dets: Detections) -> None:
        """Keep the top max(max_dets) per evaluated image, laid out image by image by rank."""
        gt = self.gt
        if self.iou_type == "bbox" and dets.boxes is None:
            raise ValueError("bbox evaluation needs detection boxes")
        if self.iou_type == "segm" and dets.rles is None:
            raise ValueError("segm evaluation needs detection masks (RLE)")
        pos, found = gt.image_positions(dets.image_ids)
        if not found.all():
            raise ValueError(f"a detection is for image id {dets.image_ids[~found][0]}, "
                             f"which is not in {gt.source}")
        idx = np.flatnonzero(self._in_eval[pos])
        # by image, then by descending score, ties in input order (lexsort is stable)
        idx = idx[np.lexsort((-dets.scores[idx], pos[idx]))]
        image = pos[idx]
        rank = np.arange(len(idx)) - np.searchsorted(image, image)
        top = rank < self.max_dets[-1]
        idx, self._image, self._rank = idx[top], image[top], rank[top]
        self._scores = dets.scores[idx]
        # (I + 1,) detections of image i are rows offsets[i]:offsets[i + 1]
        self._offsets = np.searchsorted(self._image, np.arange(len(gt.image_ids) + 1))
        # COCOeval's accumulation order: image by image, then a stable sort on -score
        self._score_order = np.argsort(-self._scores, kind="stable")
        self._score_pos = np.empty(len(idx), dtype=np.int64)
        self._score_pos[self._score_order] = np.arange(len(idx))
        if self.iou_type == "bbox":
            self._boxes = dets.boxes[idx]
            self._areas = self._boxes[:, 2] * self._boxes[:, 3]
        else:
            self._rles = [dets.rles[i] for i in idx]
            sizes = np.array([r["size"] for r in self._rles], dtype=np.int64).reshape(-1, 2)
            expected = gt.image_sizes[self._image]
            bad = (expected >= 0).all(axis=1) & (sizes != expected).any(axis=1)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"a mask for image {gt.image_ids[self._image[k]]} has size "
                    f"{sizes[k].tolist()}, the image in {gt.source} is {expected[k].tolist()}")
            self._areas = rle_areas(self._rles)

    def _box_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(detection, ground truth, IoU) of the pairs with IoU >= 0.5, by detection."""
        gt, image = self.gt, self._image
        per_det = gt.offsets[image + 1] - gt.offsets[image]
        ends = np.cumsum(per_det)
        total = int(ends[-1]) if len(ends) else 0
        bounds = np.unique(np.r_[0, np.searchsorted(ends, np.arange(_PAIR_CHUNK, total,
                                                                    _PAIR_CHUNK)), len(image)])
        out = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            counts = per_det[lo:hi]
            d = np.repeat(np.arange(lo, hi), counts)
            first = np.cumsum(counts) - counts
            g = np.arange(len(d)) + np.repeat(gt.offsets[image[lo:hi]] - first, counts)
            iou = coco_box_iou(self._boxes[d], gt.boxes[g], gt.iscrowd[g])
            keep = iou >= self._iou_thr[0]
            out.append((d[keep], g[keep], iou[keep]))
        return _concat_pairs(out)

    def _mask_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(detection, ground truth, IoU) of the pairs with IoU >= 0.5, by detection."""
        gt = self.gt
        gt_rles = gt.rles()
        both = np.flatnonzero((np.diff(self._offsets) > 0) & (np.diff(gt.offsets) > 0))
        out = []
        for i in both:
            d0, d1 = self._offsets[i], self._offsets[i + 1]
            g0, g1 = gt.offsets[i], gt.offsets[i + 1]
            ious = np.asarray(mask_util.iou(self._rles[d0:d1], gt_rles[g0:g1],
                                            gt.iscrowd[g0:g1].astype(np.uint8)))
            d, g = np.nonzero(ious >= self._iou_thr[0])
            out.append((d + d0, g + g0, ious[d, g]))
        return _concat_pairs(out)

    def _match(self, keep_gt: np.ndarray, regular: np.ndarray) -> tuple[np.ndarray, ...]:
        """Greedy COCO matching for all area ranges and thresholds.

        Args:
            keep_gt: (G,) ground truth taking part.
            regular: (A, G) non-ignored ground truth per area range.

        Returns:
            The matches as four arrays: area index, threshold index, detection, and whether
            the matched ground truth is non-ignored (a true positive).
        """
        num_a, num_t = regular.shape[0], len(self._iou_thr)
        det, gt_row, iou = self._pairs
        sel = keep_gt[gt_row]
        det, gt_row, iou = det[sel], gt_row[sel], iou[sel]
        if len(det) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, np.zeros(0, dtype=bool)
        # per detection, pairs in ascending (IoU, row): the position is the tie-breaking key
        order = np.lexsort((gt_row, iou, det))
        det, gt_row, iou = det[order], gt_row[order], iou[order]
        dets, first, count = np.unique(det, return_index=True, return_counts=True)
        position = np.arange(len(det)) - np.repeat(first, count)
        # step of a pair: how many paired detections of its image come before its detection
        det_image = self._image[dets]
        step = np.repeat(np.arange(len(dets)) - np.searchsorted(det_image, det_image), count)
        order = np.argsort(step, kind="stable")
        det, gt_row, iou, position, step = (
            det[order], gt_row[order], iou[order], position[order], step[order])
        bounds = np.searchsorted(step, np.arange(step[-1] + 2))
        group_start = np.r_[True, det[1:] != det[:-1]]

        above = iou[None, :] >= self._iou_thr[:, None]  # (T, P)
        key = np.where(regular[:, gt_row], count.max(), 0) + position  # (A, P)
        crowd = self.gt.iscrowd[gt_row]
        taken = np.zeros((num_a, num_t, len(self.gt)), dtype=bool)
        found = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            g = gt_row[lo:hi]
            free = above[:, lo:hi] & (~taken[:, :, g] | crowd[lo:hi])  # (A, T, p)
            value = np.where(free, key[:, None, lo:hi], -1)
            starts = np.flatnonzero(group_start[lo:hi])
            best = np.maximum.reduceat(value, starts, axis=2)
            best = np.repeat(best, np.diff(np.r_[starts, hi - lo]), axis=2)
            a, t, p = np.nonzero((value == best) & (value >= 0))
            taken[a, t, g[p]] = True
            found.append((a, t, det[lo + p], regular[a, g[p]]))
        return tuple(np.concatenate(x) for x in zip(*found))

    def evaluate(
        self, category_ids: Iterable[int] | None = None, *, ap_max_det: int | None = None,
    ) -> EvalArrays:
        """Match and accumulate.

        Args:
            category_ids: evaluate against the ground truth of these categories only (the rest
                is left out, as if absent from the file); None uses all of it.
            ap_max_det: the k at which ``summarize`` reports AP: default 100 if in max_dets,
                else the largest.
        """
        gt = self.gt
        if ap_max_det is None:
            ap_max_det = 100 if 100 in self.max_dets else self.max_dets[-1]
        if ap_max_det not in self.max_dets:
            raise ValueError(f"ap_max_det {ap_max_det} is not one of max_dets {self.max_dets}")
        keep_gt = self._in_eval[gt.image_index]
        if category_ids is not None:
            keep_gt &= np.isin(gt.category_ids, np.asarray(list(category_ids), dtype=np.int64))
        inside = (gt.areas >= self._area_lo) & (gt.areas <= self._area_hi)  # (A, G)
        regular = inside & ~gt.iscrowd & keep_gt
        num_gt = regular.sum(axis=1)
        matches = self._match(keep_gt, regular)
        recall, precision = self._accumulate(matches, num_gt)
        return EvalArrays(recall=recall, precision=precision, num_gt=num_gt,
                          max_dets=self.max_dets, area_labels=tuple(self.area_ranges),
                          ap_max_det=ap_max_det)

    def _accumulate(self, matches: tuple[np.ndarray, ...], num_gt: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Recall (T, A, M) and precision (T, R, A, M) from the sparse matches.

        In COCOeval a detection is a true positive when matched to non-ignored ground truth,
        ignored when matched to ignored ground truth or unmatched and outside the area range,
        and a false positive otherwise.
        """
        num_a, num_t, num_m = len(self.area_ranges), len(self._iou_thr), len(self.max_dets)
        num_r = len(RECALL_THRESHOLDS)
        recall = -np.ones((num_t, num_a, num_m))
        precision = -np.ones((num_t, num_r, num_a, num_m))
        m_area, m_thr, m_det, m_tp = matches
        m_pos = self._score_pos[m_det]
        order = np.lexsort((m_pos, m_thr, m_area))
        m_area, m_thr, m_det, m_tp, m_pos = (x[order] for x in (m_area, m_thr, m_det, m_tp,
                                                                 m_pos))
        area_bounds = np.searchsorted(m_area, np.arange(num_a + 1))
        rank_in_order = self._rank[self._score_order]
        outside_in_order = ((self._areas < self._area_lo) | (self._areas > self._area_hi))[
            :, self._score_order]  # (A, N), accumulation order
        for a in range(num_a):
            npig = int(num_gt[a])
            if npig == 0:
                continue
            # smallest true-positive count whose recall (the same division) reaches each
            # recall threshold; the first detection reaching it is the k_min-th true positive
            k_min = np.searchsorted(np.arange(npig + 1) / npig, RECALL_THRESHOLDS, side="left")
            lo, hi = area_bounds[a], area_bounds[a + 1]
            for m, k in enumerate(self.max_dets):
                # kept detections inside the area range, up to each position (inclusive):
                # the false positives plus the matched ones among them
                inside_upto = np.cumsum((rank_in_order < k) & ~outside_in_order[a])
                use = self._rank[m_det[lo:hi]] < k
                thr, pos, tp = m_thr[lo:hi][use], m_pos[lo:hi][use], m_tp[lo:hi][use]
                thr_start = np.searchsorted(thr, np.arange(num_t + 1))
                start = np.repeat(thr_start[:-1], np.diff(thr_start))
                # matched detections inside the range up to each match, per threshold
                matched_upto = np.cumsum(~outside_in_order[a, pos])
                matched_upto -= np.r_[0, matched_upto][start]
                # at each true positive: false positives so far (fp) and its count (c)
                fp = (inside_upto[pos] - matched_upto)[tp].astype(np.float64)
                tp_start = np.searchsorted(thr[tp], np.arange(num_t + 1))
                num_tp = np.diff(tp_start)
                c = (np.arange(len(fp)) - np.repeat(tp_start[:-1], num_tp) + 1).astype(
                    np.float64)
                pr = c / (fp + c + np.spacing(1))  # COCOeval: tp / (fp + tp + eps)
                best = _segment_suffix_max(pr, tp_start)
                recall[:, a, m] = num_tp.astype(np.float64) / npig
                # the recall threshold r is reached at the k_min[r]-th true positive (the 1st
                # for k_min 0: the interpolated precision there is the maximum over all)
                nth = np.maximum(k_min, 1)[None, :]  # (1, R)
                valid = nth <= num_tp[:, None]  # (T, R)
                at = np.where(valid, tp_start[:-1, None] + nth - 1, 0)
                precision[:, :, a, m] = np.where(valid, best[at] if len(best) else 0.0, 0.0)
        return recall, precision


def _concat_pairs(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    return tuple(np.concatenate(x) for x in zip(*parts))


def _segment_suffix_max(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Running maximum from the end of each segment ``values[starts[j]:starts[j + 1]]``.

    Works on the ranks of the values, offset per segment, so the result is exactly one of the
    input floats.
    """
    if len(values) == 0:
        return values
    uniq, rank = np.unique(values, return_inverse=True)
    segment = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
    offset = (len(starts) - 2 - segment) * len(uniq)  # later segments get lower offsets
    suffix = np.maximum.accumulate((rank + offset)[::-1])[::-1] - offset
    return uniq[suffix]


def _mean_valid(x: np.ndarray) -> float:
    """COCOeval's summary: the mean of the entries > -1, or -1 when there are none."""
    v = x[x > -1]
    return float(np.mean(v)) if v.size else -1.0


def summarize(arrays: EvalArrays) -> dict[str, float]:
    """Summary metrics in percent (NaN where undefined, i.e. no ground truth).

    Keys: ``AR@k`` for every k; ``AR_<area>@k`` for every other area range at 100 (if in
    max_dets) and at the largest k; ``AP`` (IoU 0.50:0.95) and ``AP50`` at ``ap_max_det``.
    Each value is COCOeval's summary (mean of the entries > -1) times 100.
    """
    labels, ks = arrays.area_labels, arrays.max_dets
    all_area = labels.index("all")

    def pct(v: float) -> float:
        return v * 100.0 if v >= 0 else float("nan")

    out = {f"AR@{k}": pct(_mean_valid(arrays.recall[:, all_area, m])) for m, k in enumerate(ks)}
    area_ks = sorted({k for k in (100, ks[-1]) if k in ks})
    for a, label in enumerate(labels):
        if a != all_area:
            for k in area_ks:
                out[f"AR_{label}@{k}"] = pct(_mean_valid(arrays.recall[:, a, ks.index(k)]))
    m = ks.index(arrays.ap_max_det)
    out["AP"] = pct(_mean_valid(arrays.precision[:, :, all_area, m]))
    out["AP50"] = pct(_mean_valid(arrays.precision[0, :, all_area, m]))
    return out


def evaluate_recall(
    gt: CocoGroundTruth | Any,
    detections: Detections | Sequence[Mapping[str, Any]],
    iou_type: str = "bbox",
    max_dets: Iterable[int] = DEFAULT_MAX_DETS,
    area_ranges: Mapping[str, Sequence[float]] = COCO_AREA_RANGES,
    *,
    img_ids: Iterable[int] | None = None,
    category_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """Class-agnostic AR@k, AR per area range and AP of detections, in percent.

    Args:
        gt: ``CocoGroundTruth``, a ``pycocotools.coco.COCO``, a COCO dict or a JSON path.
        detections: ``Detections`` or COCO result dicts (``category_id`` is ignored).
        iou_type: "bbox" or "segm".
        max_dets: the k of AR@k.
        area_ranges: name -> (min, max) area, inclusive; must include "all".
        img_ids: images to evaluate; default every image of the ground truth.
        category_ids: count only the ground truth of these categories; default all.

    Returns:
        ``summarize``'s dict, e.g. ``{"AR@1": ..., "AR@100": ..., "AR_small@100": ...,
        "AP": ..., "AP50": ...}``.
    """
    engine = OpenWorldRecall(gt, detections, iou_type, max_dets=max_dets,
                             area_ranges=area_ranges, img_ids=img_ids)
    return summarize(engine.evaluate(category_ids))
