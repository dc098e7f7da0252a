"""Making a view from an image or a depth map, and reading/writing view image files.

- :func:`edges_view`: the edges view (Canny on the grayscale image, optionally blurred first);
- :func:`colorize_depth`: the depth view from a depth map (min-max normalised per image, an
  OpenCV colormap or gray);
- :func:`read_image` / :func:`write_image` (atomic) for the view files.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from vclr_d2.utils.io import InputError

__all__ = ["COLORMAPS", "GRAY", "colorize_depth", "colormap_id", "edges_view", "read_image",
           "write_image"]

# name -> OpenCV colormap id; "gray" writes the normalised depth as a gray image
COLORMAPS = {n[len("COLORMAP_"):].lower(): getattr(cv2, n)
             for n in dir(cv2) if n.startswith("COLORMAP_")}
GRAY = "gray"


def edges_view(image: np.ndarray, low: float = 100, high: float = 200, blur: int = 5,
               channels: str = "BGR") -> np.ndarray:
    """Canny edges (``low``, ``high``) of the grayscale image, as a 3-channel uint8 image.

    ``blur`` > 1: a ``blur`` x ``blur`` Gaussian (odd size, sigma from the size) is applied to
    the grayscale image first; ``tools/generate_views.py`` uses 5 by default. ``blur`` 0 (or 1)
    is no blur: plain ``cv2.Canny(gray, low, high)``, which is what the synthetic set's edges
    view uses. ``channels`` is the order of ``image``'s channels, ``"BGR"`` (OpenCV's) or
    ``"RGB"``; it selects the grayscale weights. The three output channels are equal.
    """
    if channels not in ("BGR", "RGB"):
        raise ValueError(f"channels must be 'BGR' or 'RGB', got {channels!r}")
    code = cv2.COLOR_BGR2GRAY if channels == "BGR" else cv2.COLOR_RGB2GRAY
    gray = cv2.cvtColor(image, code)
    if blur > 1:
        gray = cv2.GaussianBlur(gray, (blur, blur), 0)
    edges = cv2.Canny(gray, low, high)
    return cv2.cvtColor(edges, cv2.COLOR_GRAY2BGR)


def colormap_id(name: str) -> int | None:
    """OpenCV colormap id of a name like ``inferno`` (None for ``gray``); bad names list all."""
    key = name.strip().lower()
    if key == GRAY:
        return None
    if key not in COLORMAPS:
        raise InputError(f"--colormap: unknown colormap {name!r}; valid: "
                         f"{', '.join(sorted([*COLORMAPS, GRAY]))}")
    return COLORMAPS[key]


def colorize_depth(depth: np.ndarray, colormap: int | None, invert: bool = False) -> np.ndarray:
    """Min-max normalise an HxW depth map per image (flipped with ``invert``), colorize (BGR).

    ``colormap``: an OpenCV colormap id (:func:`colormap_id`) or None for gray. Non-finite
    values count as the minimum; a constant map gives 0 everywhere.
    """
    d = np.asarray(depth, dtype=np.float64)
    finite = np.isfinite(d)
    if not finite.any():
        d = np.zeros(d.shape)
    else:
        lo, hi = d[finite].min(), d[finite].max()
        d = np.where(finite, d, lo)
        d = (d - lo) / (hi - lo) if hi > lo else np.zeros(d.shape)
    if invert:
        d = 1.0 - d
    u8 = np.clip(np.round(d * 255.0), 0, 255).astype(np.uint8)
    if colormap is None:
        return cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR)
    return cv2.applyColorMap(u8, colormap)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """BGR uint8 HxWx3 (gray and RGBA images are converted)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read image {path}")
    return img


def write_image(path: Path, img: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(tmp), img, params):
        raise InputError(f"cannot write {path}")
    os.replace(tmp, path)
