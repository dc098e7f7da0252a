"""Shapes: the binary mask of one object of a shape family (cv2 fill functions with 4
fractional bits)."""

from __future__ import annotations

import math

import cv2
import numpy as np

_SHIFT = 4
_ONE = 1 << _SHIFT


def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(xy, np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _poly(mask, cx, cy, radii, angles):
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    cv2.fillPoly(mask, [_pts(xy)], 1, cv2.LINE_8, _SHIFT)


def _ellipse(mask, cx, cy, a, b, angle_deg, value=1):
    cv2.ellipse(mask, (int(round(cx * _ONE)), int(round(cy * _ONE))),
                (max(1, int(round(a * _ONE))), max(1, int(round(b * _ONE)))),
                angle_deg, 0, 360, value, -1, cv2.LINE_8, _SHIFT)


def _rect(mask, cx, cy, w, h, rot):
    c, s = math.cos(rot), math.sin(rot)
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], np.float64) / 2
    xy = corners @ np.array([[c, s], [-s, c]]) + [cx, cy]
    cv2.fillConvexPoly(mask, _pts(xy), 1, cv2.LINE_8, _SHIFT)


def _draw_shape(family: str, rng: np.random.Generator, size: int, cx: float, cy: float,
                r: float) -> np.ndarray:
    """Binary mask (uint8 0/1) of one object of ``family`` with radius ``r`` around (cx, cy)."""
    m = np.zeros((size, size), np.uint8)
    rot = rng.uniform(0, 2 * math.pi)
    if family == "ellipse":
        _ellipse(m, cx, cy, r, r * rng.uniform(0.5, 1.0), math.degrees(rot))
    elif family == "rectangle":
        a = rng.uniform(math.radians(25), math.radians(45))
        _rect(m, cx, cy, 2 * r * math.cos(a), 2 * r * math.sin(a), rot)
    elif family == "triangle":
        ang = rot + np.array([0, 2, 4]) * math.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        _poly(m, cx, cy, r * rng.uniform(0.85, 1.0, 3), ang)
    elif family == "star":
        n = int(rng.integers(5, 8))
        ang = rot + np.arange(2 * n) * math.pi / n
        radii = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.4, 0.55))
        _poly(m, cx, cy, radii, ang)
    elif family == "ring":
        b = r * rng.uniform(0.75, 1.0)
        _ellipse(m, cx, cy, r, b, math.degrees(rot))
        k = rng.uniform(0.45, 0.6)
        _ellipse(m, cx, cy, r * k, b * k, math.degrees(rot), value=0)
    elif family == "cross":
        w = 2 * r * rng.uniform(0.3, 0.4)
        _rect(m, cx, cy, 2 * r, w, rot)
        _rect(m, cx, cy, 2 * r, w, rot + math.pi / 2)
    elif family == "hexagon":
        ang = rot + np.arange(6) * math.pi / 3
        _poly(m, cx, cy, np.full(6, r), ang)
        if rng.random() < 0.5:  # slightly squashed hexagon
            m = _squash(m, cx, cy, rng.uniform(0.75, 1.0), rot)
    elif family == "crescent":
        _ellipse(m, cx, cy, r, r, 0.0)
        off = r * rng.uniform(0.35, 0.6)
        _ellipse(m, cx + off * math.cos(rot), cy + off * math.sin(rot),
                 r * rng.uniform(0.75, 0.95), r * rng.uniform(0.75, 0.95), 0.0, value=0)
    else:  # pragma: no cover - validated in the params
        raise ValueError(f"unknown family {family!r}")
    return m


def _squash(m, cx, cy, k, rot):
    """Scale the mask by ``k`` along direction ``rot`` around (cx, cy) (nearest-neighbour)."""
    c, s = math.cos(rot), math.sin(rot)
    rmat = np.array([[c, -s], [s, c]])
    a = rmat @ np.diag([k, 1.0]) @ rmat.T
    t = np.array([cx, cy]) - a @ np.array([cx, cy])
    return cv2.warpAffine(m, np.hstack([a, t[:, None]]), (m.shape[1], m.shape[0]),
                          flags=cv2.INTER_NEAREST, borderValue=0)
