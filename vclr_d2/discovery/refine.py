"""From a patch mask to an image mask: bilinear upsampling, then a guided filter.

The guided filter (He, Sun and Tang, "Guided Image Filtering") makes the soft upsampled mask
follow the edges of a guide image: in each window the output is a linear function of the
guide fitted to the mask. It is written here with ``cv2.boxFilter`` (no extra dependency).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["guided_filter", "mask_iou", "refine_mask", "upsample_mask"]


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Guided filter of ``src`` (H, W) float by a grayscale ``guide`` (H, W) in [0, 1].

    Args:
        radius: window half-size in pixels (window ``2 * radius + 1``).
        eps: regularisation; larger values smooth more across weak guide edges.
    """
    guide = guide.astype(np.float32)
    src = src.astype(np.float32)
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(src)
    cov_ip = box(guide * src) - mean_i * mean_p
    var_i = box(guide * guide) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def upsample_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 bilinear upsampling of a (h, w) patch mask to ``size`` = (H, W)."""
    return cv2.resize(mask.astype(np.float32), (size[1], size[0]),
                      interpolation=cv2.INTER_LINEAR)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def refine_mask(patch_mask: np.ndarray, guide: np.ndarray, radius: int, eps: float = 1e-3,
                min_iou: float = 0.5) -> tuple[np.ndarray, bool]:
    """Image mask (H, W) bool of a patch mask, refined on the guide image.

    Args:
        patch_mask: (h, w) bool.
        guide: the image (H, W, 3) uint8 RGB or (H, W) uint8 the mask is refined on.
        radius: guided-filter radius in pixels (0: no filtering, the upsampled mask cut at 0.5).
        eps: guided-filter regularisation (guide in [0, 1]).
        min_iou: when the refined mask's IoU with the upsampled mask is below this (the filter
            leaked or erased it), the upsampled mask is kept instead.

    Returns:
        (mask, refined): ``refined`` is False when the upsampled mask was kept.
    """
    size = guide.shape[:2]
    soft = upsample_mask(patch_mask, size)
    coarse = soft >= 0.5
    if radius <= 0:
        return coarse, False
    gray = guide if guide.ndim == 2 else cv2.cvtColor(guide, cv2.COLOR_RGB2GRAY)
    refined = guided_filter(gray.astype(np.float32) / 255.0, soft, radius, eps) >= 0.5
    if not refined.any() or mask_iou(refined, coarse) < min_iou:
        return coarse, False
    return refined, True
