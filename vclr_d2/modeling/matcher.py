"""Matchers between dense predictions and the targets of one image.

Shape shorthand:
    R: locations (all levels)   K: targets   Rc: candidate locations   P: matched pairs

A matcher is called as ``matcher(objectness, boxes, locations, strides, target_boxes,
image_size)`` and returns ``(pred_idx, tgt_idx)``, two (P,) int64 tensors: location
``pred_idx[p]`` is assigned to target ``tgt_idx[p]``. A location is never assigned to two
targets. Images without targets give P = 0.

Candidates come from a centre prior: a location is a candidate for a target when its centre
lies inside the target box and within ``center_radius`` strides of the box centre (both, as in
FCOS's centre sampling); a target without such a location takes every location within the
radius, and failing that the locations nearest to its centre.

The cost of assigning location r to target k is
``w_class * C_focal(r) + w_l1 * |b_r - b_k|_1 + w_giou * (-GIoU(b_r, b_k))`` with boxes
normalised by the image size (the v-CLR / Deformable-DETR cost).
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou, generalized_box_iou

from .numerics import check_finite_predictions

__all__ = ["VCLR_MATCHER_REGISTRY", "HungarianMatcher", "DynamicKMatcher", "build_matcher"]

VCLR_MATCHER_REGISTRY = Registry("VCLR_MATCHER")
VCLR_MATCHER_REGISTRY.__doc__ = """
Matchers of the v-CLR head. A registered class is built with ``cls(cfg)`` (``@configurable``)
and called as described in ``vclr_d2.modeling.matcher``'s module docstring.
"""

_INF = 1e8


class _CostMatcher:
    """Shared part of the matchers: the centre prior and the cost matrix."""

    @configurable
    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_box_l1: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        center_radius: float = 2.5,
    ):
        self.cost_class = cost_class
        self.cost_box_l1 = cost_box_l1
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.center_radius = center_radius

    @classmethod
    def from_config(cls, cfg) -> dict:
        m = cfg.MODEL.VCLR_MATCHER
        return {
            "cost_class": m.COST_CLASS,
            "cost_box_l1": m.COST_BOX_L1,
            "cost_giou": m.COST_GIOU,
            "focal_alpha": m.FOCAL_ALPHA,
            "focal_gamma": m.FOCAL_GAMMA,
            "center_radius": m.CENTER_RADIUS,
        }

    def candidates(self, locations: torch.Tensor, strides: torch.Tensor,
                   target_boxes: torch.Tensor) -> torch.Tensor:
        """
        Args:
            locations: (R, 2) location centres (x, y).
            strides: (R,) level strides.
            target_boxes: (K, 4) XYXY.

        Returns:
            (R, K) bool: location r is a candidate for target k.
        """
        x, y = locations[:, 0:1], locations[:, 1:2]
        inside = (
            (x > target_boxes[:, 0]) & (x < target_boxes[:, 2])
            & (y > target_boxes[:, 1]) & (y < target_boxes[:, 3])
        )
        centers = (target_boxes[:, :2] + target_boxes[:, 2:]) / 2
        radius = self.center_radius * strides[:, None]
        near = ((x - centers[:, 0]).abs() < radius) & ((y - centers[:, 1]).abs() < radius)
        cand = inside & near
        empty = ~cand.any(dim=0)
        if empty.any():
            cand[:, empty] = near[:, empty]
            still = ~cand.any(dim=0)
            if still.any():
                dist = (locations[:, None, :] - centers[None, still, :]).abs().sum(-1)
                nearest = dist == dist.min(dim=0, keepdim=True).values
                cand[:, still] = nearest
        return cand

    def cost(self, objectness: torch.Tensor, boxes: torch.Tensor, target_boxes: torch.Tensor,
             image_size: tuple[int, int]) -> torch.Tensor:
        """
        Args:
            objectness: (Rc,) logits; boxes: (Rc, 4) XYXY; target_boxes: (K, 4) XYXY.
            image_size: (h, w) used to normalise boxes for the L1 term.

        Returns:
            (Rc, K) assignment cost.
        """
        p = objectness.sigmoid()
        a, g = self.focal_alpha, self.focal_gamma
        pos = a * (1 - p) ** g * (-(p + 1e-8).log())
        neg = (1 - a) * p**g * (-(1 - p + 1e-8).log())
        c_class = (pos - neg)[:, None]
        h, w = image_size
        norm = boxes.new_tensor([w, h, w, h])
        c_l1 = torch.cdist(boxes / norm, target_boxes / norm, p=1)
        c_giou = -generalized_box_iou(boxes, target_boxes)
        return self.cost_class * c_class + self.cost_box_l1 * c_l1 + self.cost_giou * c_giou

    def _prepare(self, objectness, boxes, locations, strides, target_boxes, image_size):
        """Candidate rows and their cost: (rows (Rc,), cost (Rc, K) with _INF off-prior)."""
        cand = self.candidates(locations, strides, target_boxes)
        rows = cand.any(dim=1).nonzero()[:, 0]
        cost = self.cost(objectness[rows].float(), boxes[rows].float(),
                         target_boxes.float(), image_size)
        cost = torch.where(cand[rows], cost, torch.full_like(cost, _INF))
        return rows, cost


def _empty(device) -> tuple[torch.Tensor, torch.Tensor]:
    e = torch.zeros(0, dtype=torch.int64, device=device)
    return e, e.clone()


@VCLR_MATCHER_REGISTRY.register()
class HungarianMatcher(_CostMatcher):
    """One-to-one assignment of minimum total cost (``scipy.optimize.linear_sum_assignment``)."""

    @torch.no_grad()
    def __call__(self, objectness: torch.Tensor, boxes: torch.Tensor, locations: torch.Tensor,
                 strides: torch.Tensor, target_boxes: torch.Tensor,
                 image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        check_finite_predictions(objectness=objectness, boxes=boxes)
        device = objectness.device
        if len(target_boxes) == 0:
            return _empty(device)
        rows, cost = self._prepare(objectness, boxes, locations, strides, target_boxes,
                                   image_size)
        cost = cost.cpu().numpy()
        r, k = linear_sum_assignment(cost)
        # A pair that only exists through the off-prior filler cost is not an assignment.
        keep = cost[r, k] < _INF / 2
        r, k = r[keep], k[keep]
        return (rows[torch.as_tensor(r, dtype=torch.int64, device=device)],
                torch.as_tensor(k, dtype=torch.int64, device=device))


@VCLR_MATCHER_REGISTRY.register()
class DynamicKMatcher(_CostMatcher):
    """One-to-many SimOTA-style assignment.

    Each target takes its ``k`` cheapest candidates, with ``k`` the rounded sum of its
    ``topk`` largest IoUs with candidate predictions (at least 1); a location chosen by several
    targets keeps the cheapest.
    """

    @configurable
    def __init__(self, *, topk: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.topk = topk

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {**super().from_config(cfg), "topk": cfg.MODEL.VCLR_MATCHER.DYNAMIC_K_TOPK}

    @torch.no_grad()
    def __call__(self, objectness: torch.Tensor, boxes: torch.Tensor, locations: torch.Tensor,
                 strides: torch.Tensor, target_boxes: torch.Tensor,
                 image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        check_finite_predictions(objectness=objectness, boxes=boxes)
        device = objectness.device
        if len(target_boxes) == 0:
            return _empty(device)
        rows, cost = self._prepare(objectness, boxes, locations, strides, target_boxes,
                                   image_size)
        valid = cost < _INF / 2
        ious = box_iou(boxes[rows].float(), target_boxes.float()) * valid
        n = min(self.topk, len(rows))
        k_per_target = ious.topk(n, dim=0).values.sum(0).round().clamp(min=1).long()
        k_per_target = torch.minimum(k_per_target, valid.sum(0).clamp(min=1))
        order = cost.argsort(dim=0)  # (Rc, K), cheapest first
        rank = torch.empty_like(order)
        rank.scatter_(0, order, torch.arange(len(rows), device=device)[:, None].expand_as(order))
        chosen = (rank < k_per_target[None, :]) & valid
        masked = torch.where(chosen, cost, torch.full_like(cost, float("inf")))
        best_cost, best_k = masked.min(dim=1)
        matched = torch.isfinite(best_cost)
        return rows[matched], best_k[matched]


# the short names configs used before the matchers were named by their registry names
_RENAMED = {"hungarian": "HungarianMatcher", "dynamic_k": "DynamicKMatcher"}


def build_matcher(cfg):
    """The matcher named by ``MODEL.VCLR_MATCHER.NAME`` in ``VCLR_MATCHER_REGISTRY``
    (``HungarianMatcher`` or ``DynamicKMatcher``)."""
    name = cfg.MODEL.VCLR_MATCHER.NAME
    if name not in VCLR_MATCHER_REGISTRY:
        hint = f"; it is now called {_RENAMED[name]!r}" if name in _RENAMED else ""
        raise ValueError(f"MODEL.VCLR_MATCHER.NAME={name!r} is not in VCLR_MATCHER_REGISTRY "
                         f"({sorted(k for k, _ in VCLR_MATCHER_REGISTRY)}){hint}")
    return VCLR_MATCHER_REGISTRY.get(name)(cfg)

