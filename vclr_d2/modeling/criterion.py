"""The v-CLR losses: L_gt, L_obj (detection and mask terms) and L_sim.

Shape shorthand:
    N: images   R: locations   K: targets of an image   P: matched (location, target) pairs
    D: embedding dim   Hl, Wl: mask-loss map size (padded input / mask-loss stride)

Targets of an image are ground truth (``is_gt``) and proposals, matched together once, so a
location is positive for at most one target. L_gt is computed on locations matched to ground
truth, L_obj on locations matched to proposals; in each term's objectness focal loss the other
term's positives are ignored rather than counted as background. Each term is normalised by its
number of positives in the batch and is zero (but graph-connected) when the batch has none:

    L_x   = w_score * focal + w_l1 * L1 + w_giou * GIoU + w_dice * dice + w_mask * BCE
    L     = lambda_match * (lambda_obj * L_obj + lambda_sim * L_sim) + lambda_gt * L_gt
    L_sim = mean over student positives of 1 - cos(q_S, sg(q_T)),

where q_T is the normalised mean embedding of the teacher locations matched to the same target.
The returned dict holds each weighted term separately (detectron2 sums them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from .head import HeadOutputs
from .soft_targets import proposal_weight_map

__all__ = ["Targets", "VCLRCriterion", "dice_loss", "similarity_loss"]


@dataclass
class Targets:
    """Class-agnostic targets of one image.

    Attributes:
        boxes: (K, 4) XYXY absolute boxes.
        is_gt: (K,) bool, True for ground truth, False for proposals.
        masks: (K, Hl, Wl) float mask targets at the mask-loss stride (padded size), or None.
        has_mask: (K,) bool, whether target k has a mask.
        weights: (K,) objectness-loss weights (proposal scores, 1 for ground truth), or None.
    """

    boxes: torch.Tensor
    is_gt: torch.Tensor
    masks: torch.Tensor | None
    has_mask: torch.Tensor
    weights: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.boxes)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-instance dice loss over weighted pixels.

    Args:
        logits, targets, weights: (P, S) mask logits, soft targets in [0, 1], pixel weights.

    Returns:
        (P,) losses.
    """
    p = logits.sigmoid() * weights
    t = targets * weights
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def similarity_loss(q_student: torch.Tensor, q_teacher: torch.Tensor) -> torch.Tensor:
    """(P,) ``1 - cos(q_student, q_teacher)``; the teacher side gets no gradient."""
    return 1 - F.cosine_similarity(q_student, q_teacher.detach(), dim=-1)


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


class VCLRCriterion:
    """Computes the v-CLR loss dict from head outputs, targets and matches."""

    @configurable
    def __init__(
        self,
        *,
        score_weight: float = 4.0,
        box_l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        dice_weight: float = 5.0,
        mask_weight: float = 5.0,
        quality_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        gt_weight: float = 1.0,
        obj_weight: float = 1.0,
        sim_weight: float = 1.0,
        sim_center: bool = False,
        match_weight: float = 1.0,
        quality: str = "none",
        mask_loss_stride: int = 4,
        max_masks_per_image: int = 64,
        proposal_score_weighting: bool = False,
    ):
        self.w = {"score": score_weight, "box_l1": box_l1_weight, "giou": giou_weight,
                  "dice": dice_weight, "mask": mask_weight}
        self.quality_weight = quality_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.term_weight = {"gt": gt_weight, "obj": match_weight * obj_weight}
        self.sim_weight = match_weight * sim_weight
        self.sim_center = sim_center
        self.quality = quality
        self.mask_loss_stride = mask_loss_stride
        self.max_masks_per_image = max_masks_per_image
        self.proposal_score_weighting = proposal_score_weighting

    @classmethod
    def from_config(cls, cfg) -> dict:
        lo = cfg.MODEL.VCLR_LOSS
        return {
            "score_weight": lo.SCORE_WEIGHT,
            "box_l1_weight": lo.BOX_L1_WEIGHT,
            "giou_weight": lo.GIOU_WEIGHT,
            "dice_weight": lo.DICE_WEIGHT,
            "mask_weight": lo.MASK_WEIGHT,
            "quality_weight": lo.QUALITY_WEIGHT,
            "focal_alpha": lo.FOCAL_ALPHA,
            "focal_gamma": lo.FOCAL_GAMMA,
            "gt_weight": lo.GT_WEIGHT,
            "obj_weight": lo.OBJ_WEIGHT,
            "sim_weight": lo.SIM_WEIGHT,
            "sim_center": lo.SIM_CENTER,
            "proposal_score_weighting": lo.PROPOSAL_SCORE_WEIGHTING,
            "match_weight": lo.MATCH_WEIGHT,
            "quality": cfg.MODEL.VCLR_HEAD.QUALITY,
            "mask_loss_stride": cfg.MODEL.VCLR_HEAD.MASK_LOSS_STRIDE,
            "max_masks_per_image": cfg.MODEL.VCLR_HEAD.MAX_MASKS_PER_IMAGE,
        }

    def detection_losses(
        self,
        out: HeadOutputs,
        targets: list[Targets],
        matches: list[tuple[torch.Tensor, torch.Tensor]],
        image_sizes: list[tuple[int, int]],
        mask_logits_fn,
    ) -> dict[str, torch.Tensor]:
        """L_gt and L_obj terms of the student.

        Args:
            out: student HeadOutputs of the batch.
            targets: per image.
            matches: per image, (pred_idx (P,), tgt_idx (P,)).
            image_sizes: per image (h, w) before padding.
            mask_logits_fn: ``(coeffs (P, M), mask_features (M, Hm, Wm)) -> (P, Hm, Wm)``.
        """
        zero = out.objectness.sum() * 0 + out.boxes.sum() * 0 + out.embeddings.sum() * 0
        if out.mask_coeffs is not None:
            zero = zero + out.mask_coeffs.sum() * 0 + out.mask_features.sum() * 0
        if out.quality is not None:
            zero = zero + out.quality.sum() * 0

        # labels: 1 positive, 0 background, -1 positive of the other term (ignored)
        src = torch.full_like(out.objectness, -1, dtype=torch.int64)  # -1 bg, 0 gt, 1 proposal
        for i, ((pred_idx, tgt_idx), t) in enumerate(zip(matches, targets)):
            src[i, pred_idx] = torch.where(t.is_gt[tgt_idx], 0, 1)
        focal = sigmoid_focal_loss(
            out.objectness, (src >= 0).to(out.objectness.dtype), alpha=self.focal_alpha,
            gamma=self.focal_gamma, reduction="none",
        )
        if self.proposal_score_weighting:  # soft proposal targets (soft_targets.py)
            focal = focal * proposal_weight_map(focal, targets, matches)

        pos = {"gt": [], "obj": []}  # per image: (pred_idx, tgt_idx) of that term
        for (pred_idx, tgt_idx), t in zip(matches, targets):
            gt = t.is_gt[tgt_idx]
            pos["gt"].append((pred_idx[gt], tgt_idx[gt]))
            pos["obj"].append((pred_idx[~gt], tgt_idx[~gt]))

        losses = {}
        for term, code in (("gt", 0), ("obj", 1)):
            num = sum(len(p) for p, _ in pos[term])
            keys = [f"loss_{term}_{k}" for k in ("score", "box_l1", "giou", "dice", "mask")]
            if num == 0:
                losses.update({k: zero for k in keys})
                continue
            weight = self.term_weight[term]
            considered = (src == code) | (src == -1)
            losses[keys[0]] = weight * self.w["score"] * (focal * considered).sum() / num
            l1, giou = self._box_losses(out, targets, pos[term], image_sizes)
            losses[keys[1]] = weight * self.w["box_l1"] * l1 / num + zero
            losses[keys[2]] = weight * self.w["giou"] * giou / num + zero
            if out.mask_coeffs is None:
                continue
            dice, bce, num_masks = self._mask_losses(out, targets, pos[term], mask_logits_fn)
            n = max(num_masks, 1)
            losses[keys[3]] = weight * self.w["dice"] * dice / n + zero
            losses[keys[4]] = weight * self.w["mask"] * bce / n + zero
        if out.mask_coeffs is None:
            losses = {k: v for k, v in losses.items() if not k.endswith(("_dice", "_mask"))}
        if out.quality is not None:
            losses["loss_quality"] = self._quality_loss(out, targets, matches, zero)
        return losses

    def _box_losses(self, out, targets, pos, image_sizes):
        l1 = giou = 0.0
        for i, ((pred_idx, tgt_idx), t, (h, w)) in enumerate(zip(pos, targets, image_sizes)):
            if len(pred_idx) == 0:
                continue
            pred = out.boxes[i, pred_idx]
            tgt = t.boxes[tgt_idx]
            norm = pred.new_tensor([w, h, w, h])
            l1 = l1 + (pred / norm - tgt / norm).abs().sum()
            giou = giou + generalized_box_iou_loss(pred, tgt, reduction="sum")
        return l1, giou

    def _mask_losses(self, out, targets, pos, mask_logits_fn):
        dice = bce = 0.0
        count = 0
        for i, ((pred_idx, tgt_idx), t) in enumerate(zip(pos, targets)):
            if t.masks is None or len(pred_idx) == 0:
                continue
            keep = t.has_mask[tgt_idx]
            pred_idx, tgt_idx = pred_idx[keep], tgt_idx[keep]
            if 0 <= self.max_masks_per_image < len(pred_idx):
                pick = torch.randperm(len(pred_idx), device=pred_idx.device)
                pick = pick[: self.max_masks_per_image]
                pred_idx, tgt_idx = pred_idx[pick], tgt_idx[pick]
            if len(pred_idx) == 0:
                continue
            logits = mask_logits_fn(out.mask_coeffs[i, pred_idx], out.mask_features[i])
            size = t.masks.shape[-2:]
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits[None], size=size, mode="bilinear",
                                       align_corners=False)[0]
            target = t.masks[tgt_idx]
            weight = box_mask(t.boxes[tgt_idx], size, self.mask_loss_stride)
            logits, target, weight = (x.flatten(1) for x in (logits, target, weight))
            dice = dice + dice_loss(logits, target, weight).sum()
            pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            bce = bce + ((pixel * weight).sum(1) / weight.sum(1).clamp(min=1)).sum()
            count += len(pred_idx)
        return dice, bce, count

    def _quality_loss(self, out, targets, matches, zero):
        loss, num = zero, 0
        for i, ((pred_idx, tgt_idx), t) in enumerate(zip(matches, targets)):
            if len(pred_idx) == 0:
                continue
            tgt_boxes = t.boxes[tgt_idx]
            if self.quality == "iou":
                pred = out.boxes[i, pred_idx].detach()
                target = box_iou(pred, tgt_boxes).diagonal()
            else:
                target = centerness(out.locations[pred_idx], tgt_boxes)
            loss = loss + F.binary_cross_entropy_with_logits(
                out.quality[i, pred_idx], target, reduction="sum")
            num += len(pred_idx)
        return self.quality_weight * loss / max(num, 1)

    def sim_loss(
        self,
        student: HeadOutputs,
        teacher: HeadOutputs,
        student_matches: list[tuple[torch.Tensor, torch.Tensor]],
        teacher_matches: list[tuple[torch.Tensor, torch.Tensor]],
        num_targets: list[int],
    ) -> torch.Tensor:
        """Weighted L_sim over student locations whose target the teacher also matched.

        With ``sim_center``, each branch's embeddings are first centred on their mean over all
        locations of the batch (a constant, no gradient), so that a component shared by every
        location cannot make the cosine high by itself.
        """
        emb_s, emb_t = student.embeddings.float(), teacher.embeddings.float()
        if self.sim_center:
            emb_s = emb_s - emb_s.detach().mean(dim=(0, 1))
            emb_t = emb_t - emb_t.mean(dim=(0, 1))
        terms = []
        for i, ((s_idx, s_tgt), (t_idx, t_tgt), k) in enumerate(
            zip(student_matches, teacher_matches, num_targets)
        ):
            if len(s_idx) == 0 or len(t_idx) == 0:
                continue
            q_t = F.normalize(emb_t[i, t_idx], dim=-1)
            mean_t = torch.zeros(k, q_t.shape[1], device=q_t.device, dtype=q_t.dtype)
            mean_t.index_add_(0, t_tgt, q_t)
            has_t = torch.zeros(k, dtype=torch.bool, device=q_t.device)
            has_t[t_tgt] = True
            keep = has_t[s_tgt]
            if keep.any():
                q_s = emb_s[i, s_idx[keep]]
                terms.append(similarity_loss(q_s, mean_t[s_tgt[keep]]))
        zero = student.embeddings.sum() * 0
        if not terms:
            return zero
        return self.sim_weight * torch.cat(terms).mean() + zero
