"""Box helpers shared by the losses and the post-processing.

Shape shorthand:
    P: boxes   H, W: rows and columns of a grid of cells of side ``stride``
"""

from __future__ import annotations

import torch

__all__ = ["box_cells", "box_mask", "centerness"]


def box_cells(boxes: torch.Tensor, size: tuple[int, int], stride: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (P, H) and columns (P, W) of a stride-``stride`` grid whose cell centre lies inside
    each box; a box smaller than a cell still covers the cell holding its centre."""
    h, w = size
    ys = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    xs = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    x0 = torch.minimum(boxes[:, 0], cx - stride / 2)[:, None]
    x1 = torch.maximum(boxes[:, 2], cx + stride / 2)[:, None]
    y0 = torch.minimum(boxes[:, 1], cy - stride / 2)[:, None]
    y1 = torch.maximum(boxes[:, 3], cy + stride / 2)[:, None]
    return (ys[None] >= y0) & (ys[None] < y1), (xs[None] >= x0) & (xs[None] < x1)


def box_mask(boxes: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """(P, H, W) float: 1 where the centre of a stride-``stride`` cell lies inside the box
    (see ``box_cells``)."""
    in_y, in_x = box_cells(boxes, size, stride)
    return (in_y[:, :, None] & in_x[:, None, :]).to(boxes.dtype)


def centerness(locations: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(P,) FCOS centerness of locations (P, 2) inside boxes (P, 4); 0 outside."""
    lt = (locations - boxes[:, :2]).clamp(min=0)
    rb = (boxes[:, 2:] - locations).clamp(min=0)
    lr = torch.stack([lt[:, 0], rb[:, 0]], 1)
    tb = torch.stack([lt[:, 1], rb[:, 1]], 1)
    ratio = (lr.min(1).values / lr.max(1).values.clamp(min=1e-6)) * (
        tb.min(1).values / tb.max(1).values.clamp(min=1e-6))
    return ratio.sqrt()
