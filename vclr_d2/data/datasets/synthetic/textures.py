"""Textures: one texture instance of a pool (known, background, style), vectorised over the
image or a crop of it (HxWx3 float32, RGB 0-255), and the pixel-grid cache."""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

_GRIDS: dict = {}


def _grid(size: int):
    if size not in _GRIDS:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        _GRIDS[size] = (xx, yy)
    return _GRIDS[size]


def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0),
                                        min(max(v, 0.0), 1.0)), np.float32) * 255.0


def _palette(rng: np.random.Generator, pool: str):
    """Two colours of a texture: high-contrast pair (known), tonal pair (background),
    independent pair (style)."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.95)
    a = _hsv(h, s, v)
    if pool == "known":
        b = _hsv(h + rng.uniform(0.3, 0.7), rng.uniform(0.4, 1.0),
                 v + (-1 if v > 0.6 else 1) * rng.uniform(0.3, 0.5))
    elif pool == "background":
        b = _hsv(h + rng.uniform(-0.08, 0.08), s * rng.uniform(0.7, 1.1),
                 v + (-1 if v > 0.6 else 1) * rng.uniform(0.15, 0.35))
    else:
        b = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 1.0), rng.uniform(0.15, 1.0))
    return a, b


def _value_noise(rng: np.random.Generator, shape: tuple, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] with feature size ``cell`` px (bicubic upsampled random grid)."""
    h, w = shape
    nh, nw = int(math.ceil(h / cell)) + 3, int(math.ceil(w / cell)) + 3
    g = rng.random((nh, nw), dtype=np.float32)
    big = cv2.resize(g, (int(math.ceil(nw * cell)), int(math.ceil(nh * cell))),
                     interpolation=cv2.INTER_CUBIC)
    oy, ox = (int(x) for x in rng.integers(0, max(1, int(cell)), 2))
    t = big[oy:oy + h, ox:ox + w]
    lo, hi = float(t.min()), float(t.max())
    return (t - lo) / max(hi - lo, 1e-6)


def _frac(x):
    return x - np.floor(x)


def _mosaic(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Voronoi cells of one jittered seed per unit cell of (u, v), a random value per cell."""
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    u0, v0 = int(iu.min()) - 1, int(iv.min()) - 1
    nu, nv = int(iu.max()) - u0 + 2, int(iv.max()) - v0 + 2
    jitter = rng.uniform(0.1, 0.9, (nv, nu, 2)).astype(np.float32)
    value = rng.random((nv, nu), dtype=np.float32)
    best_d = np.full(u.shape, np.inf, np.float32)
    t = np.zeros(u.shape, np.float32)
    for dv in (-1, 0, 1):
        for du in (-1, 0, 1):
            cu, cv = iu + du - u0, iv + dv - v0
            d = (u - (cu + u0 + jitter[cv, cu, 0])) ** 2 + (v - (cv + v0 + jitter[cv, cu, 1])) ** 2
            closer = d < best_d
            best_d = np.where(closer, d, best_d)
            t = np.where(closer, value[cv, cu], t)
    return t


def _texture(kind: str, rng: np.random.Generator, size: int, period_range: tuple,
             pool: str, box: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 RGB, mean colour) of one texture instance of ``kind`` on the whole
    ``size`` x ``size`` image, or on its crop ``box`` = (x0, y0, x1, y1) only."""
    xx, yy = _grid(size)
    if box is not None:
        xx, yy = xx[box[1]:box[3], box[0]:box[2]], yy[box[1]:box[3], box[0]:box[2]]
    period = max(2.0, rng.uniform(*period_range) * size)
    th = rng.uniform(0, math.pi)
    c, s = math.cos(th), math.sin(th)
    ox, oy = rng.uniform(0, period, 2)
    u = ((xx + ox) * c + (yy + oy) * s) / period
    v = (-(xx + ox) * s + (yy + oy) * c) / period
    a, b = _palette(rng, pool)
    if kind == "checker":
        t = (np.floor(u) + np.floor(v)) % 2
    elif kind == "dots":
        rad = rng.uniform(0.2, 0.35)
        t = ((_frac(u) - 0.5) ** 2 + (_frac(v) - 0.5) ** 2 < rad * rad).astype(np.float32)
    elif kind == "stripes":
        t = (_frac(u) < rng.uniform(0.35, 0.65)).astype(np.float32)
    elif kind == "grid":
        w = rng.uniform(0.15, 0.3)
        t = ((_frac(u) < w) | (_frac(v) < w)).astype(np.float32)
    elif kind == "noise":
        t = _value_noise(rng, xx.shape, period / 2)
    elif kind == "waves":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u + rng.uniform(0.5, 2.0) * np.sin(np.pi * v))
    elif kind == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif kind == "marble":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u + rng.uniform(3.0, 6.0)
                               * _value_noise(rng, xx.shape, period))
    elif kind == "hatch":
        t = (_frac(u * 2) < rng.uniform(0.2, 0.35)).astype(np.float32)
    elif kind == "mosaic":
        t = _mosaic(rng, u, v)
    elif kind == "rings":
        cx, cy = rng.uniform(-0.5, 1.5, 2) * size
        r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / period
        t = np.floor(_frac(r) * 3) / 2
    elif kind == "posterize":
        t = np.floor(_value_noise(rng, xx.shape, period) * 3.999) / 3
    else:  # pragma: no cover - validated in the params
        raise ValueError(f"unknown texture {kind!r}")
    t = t.astype(np.float32)[..., None]
    img = a * (1 - t) + b * t
    mean = a * (1 - float(t.mean())) + b * float(t.mean())
    return img, mean


def _contrasting_texture(rng, pools: tuple, period_range: tuple, pool: str, size: int,
                         box: tuple, under: np.ndarray, min_contrast: float):
    """A texture (on ``box``) of a random kind of ``pools`` whose mean colour is at least
    ``min_contrast`` away from ``under`` (best of up to 20 draws)."""
    best, best_d = None, -1.0
    for _ in range(20):
        kind = pools[int(rng.integers(len(pools)))]
        img, mean = _texture(kind, rng, size, period_range, pool, box)
        dist = float(np.linalg.norm(mean - under))
        if dist > best_d:
            best, best_d = (kind, img), dist
        if dist >= min_contrast:
            break
    return best
