"""Proposals: the simulated unsupervised proposals of a scene (noisy masks and boxes on a
fraction of all objects, false positives on the background, top-k by score)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .parameters import SyntheticOpenWorldParams
from .shapes import _ellipse, _poly
from .textures import _grid


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(a & b)
    return inter / max(np.count_nonzero(a | b), 1)


def _extent(m: np.ndarray):
    ys, xs = np.nonzero(m)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def simulate_proposals(rng: np.random.Generator, objects: list, size: int,
                       p: SyntheticOpenWorldParams) -> list:
    """Noisy class-agnostic proposals of a scene: ``[{"mask", "box" (XYXY), "score",
    "source" ("known" | "novel" | "false_positive")}]``, top-k by score."""
    out = []
    masks = [o["mask"] for o in objects]
    centres = [np.array(_extent(m)).reshape(2, 2).mean(0) for m in masks]
    for i, o in enumerate(objects):
        if rng.random() >= p.proposal_fraction:
            continue
        gt = o["mask"]
        x0, y0, x1, y1 = _extent(gt)
        osize = max(x1 - x0, y1 - y0)
        m = gt.copy()
        r = rng.random()
        if r < p.proposal_merge_prob and len(objects) > 1:  # under-segmentation
            dist = [np.linalg.norm(centres[j] - centres[i]) if j != i else np.inf
                    for j in range(len(objects))]
            m |= masks[int(np.argmin(dist))]
        elif r < p.proposal_merge_prob + p.proposal_split_prob:  # over-segmentation
            ang = rng.uniform(0, 2 * math.pi)
            cx, cy = centres[i]
            xx, yy = _grid(size)
            half = m & (((xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)) > 0)
            if np.count_nonzero(half) >= 0.3 * np.count_nonzero(m):
                m = half
        k = int(round(abs(rng.normal(0, p.proposal_morph)) * osize))
        if k >= 1:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
            m8 = m.astype(np.uint8)
            er = cv2.erode(m8, kernel) if rng.random() < 0.5 else None
            if er is not None and np.count_nonzero(er) >= 0.3 * np.count_nonzero(m8):
                m = er.astype(bool)
            else:
                m = cv2.dilate(m8, kernel).astype(bool)
        dx, dy = np.round(rng.normal(0, p.proposal_shift * osize, 2))
        if dx or dy:
            mat = np.float32([[1, 0, dx], [0, 1, dy]])
            m = cv2.warpAffine(m.astype(np.uint8), mat, (size, size), flags=cv2.INTER_NEAREST,
                               borderValue=0).astype(bool)
        if np.count_nonzero(m) < 4:
            continue
        out.append({"mask": m, "quality": _iou(m, gt),
                    "source": "novel" if o["novel"] else "known", "size": osize})
    occupied = np.zeros((size, size), bool)
    for m in masks:
        occupied |= m
    nfp = int(rng.integers(p.proposal_false_positives[0], p.proposal_false_positives[1] + 1))
    for _ in range(nfp):
        best = None
        for _try in range(10):  # prefer blobs lying on the background
            r = rng.uniform(*p.false_positive_size) * size / 2
            cx, cy = rng.uniform(0, size, 2)
            blob = np.zeros((size, size), np.uint8)
            if rng.random() < 0.5:
                _ellipse(blob, cx, cy, r, r * rng.uniform(0.4, 1.0), rng.uniform(0, 180))
            else:
                npts = int(rng.integers(5, 9))
                ang = np.sort(rng.uniform(0, 2 * math.pi, npts))
                _poly(blob, cx, cy, r * rng.uniform(0.5, 1.0, npts), ang)
            blob = blob.astype(bool)
            area = np.count_nonzero(blob)
            if area < 4:
                continue
            overlap = np.count_nonzero(blob & occupied) / area
            if best is None or overlap < best[0]:
                best = (overlap, blob)
            if overlap < 0.2:
                break
        if best is None:
            continue
        blob = best[1]
        q = max([_iou(blob, g) for g in masks], default=0.0)
        x0, y0, x1, y1 = _extent(blob)
        out.append({"mask": blob, "quality": q, "source": "false_positive",
                    "size": max(x1 - x0, y1 - y0)})
    for prop in out:
        x0, y0, x1, y1 = np.array(_extent(prop["mask"])) + rng.normal(
            0, p.proposal_box_jitter * prop.pop("size"), 4)
        x0, x1 = sorted((float(np.clip(x0, 0, size - 1)), float(np.clip(x1, 1, size))))
        y0, y1 = sorted((float(np.clip(y0, 0, size - 1)), float(np.clip(y1, 1, size))))
        prop["box"] = (x0, y0, max(x1, x0 + 1.0), max(y1, y0 + 1.0))
        score = 0.15 + 0.7 * prop.pop("quality") + rng.normal(0, p.proposal_score_noise)
        prop["score"] = round(float(np.clip(score, 0.01, 0.99)), 4)
    out.sort(key=lambda d: -d["score"])  # stable: ties keep generation order
    return out[:p.proposal_top_k]
