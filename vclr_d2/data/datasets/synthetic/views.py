"""Views: the synthetic set's depth and edges views of one scene, computed from its exact depth
map and its natural image (the style view is painted with the scene, see ``scenes``).

The edges view is the project's one edges function (``vclr_d2.data.views.edges_view``) with
no blur before Canny, as frozen with the set's parameters. The depth view is the set's own: its
depth is exact and already in [0, 1], so it is colorized over that fixed range, not normalised
per image as ``vclr_d2.data.views.colorize_depth`` does for a model's relative depth."""

from __future__ import annotations

import cv2
import numpy as np

from vclr_d2.data.views.render import edges_view as _edges

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
    return _edges(image, float(thresholds[0]), float(thresholds[1]), blur=0, channels="RGB")
