"""Views: the synthetic set's depth and edges views of one scene, computed from its exact depth
map and its natural image (the style view is painted with the scene, see ``scenes``).

These are the set's own definitions, frozen with its parameters: the edges view is
``cv2.Canny`` of the grayscale image with NO blur before it."""

from __future__ import annotations

import cv2
import numpy as np

from .parameters import _COLORMAPS, SyntheticOpenWorldParams

_DEFAULTS = SyntheticOpenWorldParams()


def depth_view(depth: np.ndarray, colormap: str = _DEFAULTS.depth_colormap) -> np.ndarray:
    """Colorized depth (HxWx3 uint8, RGB) of a depth map in [0, 1] (0 = camera):
    ``255 * (1 - depth)`` rounded, then the OpenCV ``colormap`` (a name of ``_COLORMAPS``)."""
    d8 = np.clip(np.round(255.0 * (1.0 - depth)), 0, 255).astype(np.uint8)
    depth_bgr = cv2.applyColorMap(d8, _COLORMAPS[colormap])
    return np.ascontiguousarray(depth_bgr[..., ::-1])


def edges_view(image: np.ndarray, thresholds: tuple = _DEFAULTS.edge_thresholds) -> np.ndarray:
    """Edges (HxWx3 uint8, 0 or 255, three equal channels) of an RGB uint8 image:
    ``cv2.Canny(gray, lo, hi)`` of its grayscale, without blurring it first."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, float(thresholds[0]), float(thresholds[1]))
    return np.repeat(edges[..., None], 3, 2)
