"""The v-CLR losses: L_gt, L_obj (detection and mask terms) and L_sim.

Shape shorthand:
    N: images   R: locations   K: targets of an image   P: matched (location, target) pairs
    D: embedding dim   Hl, Wl: mask-loss map size (padded input / mask-loss stride)

Targets of an image are ground truth (``is_gt``) and proposals, matched together once, so a
location is positive for at most one target. L_gt's box and mask terms are computed on locations
matched to ground truth, L_obj's on locations matched to proposals, each normalised by its number
of positives in the batch and zero (but graph-connected) when the batch has none (in multi-process
training the batch of all processes: each normalises by the mean count per process, so DDP's
averaged gradient is the one-process gradient of the whole batch). Objectness is
supervised by one focal loss over every location (``score_loss="joint"``, the official code):
positives weighted by their term's lambda, background once, normalised by the number of positive
locations (= the number of matched targets under one-to-one matching, the official normaliser).
``score_loss="split"`` (the first release) gives L_gt and L_obj a focal term each, over all
background locations, each ignoring the other's positives:

    L_x   = w_l1 * L1 + w_giou * GIoU + w_dice * dice + w_mask * BCE   (+ w_score * focal, split)
    L     = lambda_match * (lambda_obj * L_obj + lambda_sim * L_sim) + lambda_gt * L_gt
            (+ w_score * focal over all locations, joint)
    L_sim = mean over student positives of 1 - cos(q_S, sg(q_T)),

where q_T is the normalised mean embedding of the teacher locations matched to the same target.
The returned dict holds each weighted term separately (detectron2 sums them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from .boxes import box_mask, centerness
from .head import HeadOutputs
from .numerics import float32_outside_autocast, mean_count_over_processes
from .soft_targets import proposal_weight_map

__all__ = ["VCLR_CRITERION_REGISTRY", "Targets", "VCLRCriterion", "build_vclr_criterion",
           "dice_loss", "quality_focal_loss", "similarity_loss"]

VCLR_CRITERION_REGISTRY = Registry("VCLR_CRITERION")
VCLR_CRITERION_REGISTRY.__doc__ = """
Losses of the v-CLR meta-architecture, chosen by ``MODEL.VCLR_LOSS.NAME``. A registered class is
built with ``cls(cfg)`` (``@configurable``) and called as ``VCLRCriterion`` is.
"""


@dataclass
class Targets:
    """Class-agnostic targets of one image.

    Attributes:
        boxes: (K, 4) XYXY absolute boxes.
        is_gt: (K,) bool, True for ground truth, False for proposals.
        masks: (K, Hl, Wl) float mask targets at the mask-loss stride (padded size), or None.
        has_mask: (K,) bool, whether target k has a mask.
        weights: (K,) objectness-loss weights (proposal scores, 1 for ground truth), or None;
            used with ``MODEL.VCLR_LOSS.PROPOSAL_SCORE_WEIGHTING``.
        score_weights: (K,) objectness-loss weights applied in any case (the pseudo-labels'
            ``MODEL.VCLR.PSEUDO_LABELS.SCORE_WEIGHT``), or None (all 1).
    """

    boxes: torch.Tensor
    is_gt: torch.Tensor
    masks: torch.Tensor | None
    has_mask: torch.Tensor
    weights: torch.Tensor | None = None
    score_weights: torch.Tensor | None = None

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


def quality_focal_loss(logits: torch.Tensor, targets: torch.Tensor, beta: float = 2.0
                       ) -> torch.Tensor:
    """Elementwise quality focal loss (GFL): ``BCE(sigmoid(x), y) * |y - sigmoid(x)| ** beta``
    with soft targets ``y`` in [0, 1] (the IoU of a positive's box, 0 for background); its
    minimum is at ``sigmoid(x) = y``."""
    p = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return bce * (targets - p).abs().pow(beta)


def similarity_loss(q_student: torch.Tensor, q_teacher: torch.Tensor) -> torch.Tensor:
    """(P,) ``1 - cos(q_student, q_teacher)``; the teacher side gets no gradient."""
    return 1 - F.cosine_similarity(q_student, q_teacher.detach(), dim=-1)


@VCLR_CRITERION_REGISTRY.register()
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
        score_loss: str = "joint",
        score_target: str = "binary",
        gt_weight: float = 1.0,
        obj_weight: float = 1.0,
        sim_weight: float = 1.0,
        sim_center: bool = False,
        sim_form: str = "cosine",
        sim_temperature: float = 0.2,
        match_weight: float = 1.0,
        quality: str = "none",
        mask_loss_stride: int = 4,
        max_masks_per_image: int = 64,
        proposal_score_weighting: bool = False,
    ):
        if score_loss not in ("joint", "split"):
            raise ValueError(f"MODEL.VCLR_LOSS.SCORE_LOSS={score_loss!r}: use joint or split")
        self.score_loss = score_loss
        if score_target not in ("binary", "iou"):
            raise ValueError(f"MODEL.VCLR_LOSS.SCORE_TARGET={score_target!r}: use binary or iou")
        self.score_target = score_target
        self.w = {"score": score_weight, "box_l1": box_l1_weight, "giou": giou_weight,
                  "dice": dice_weight, "mask": mask_weight}
        self.quality_weight = quality_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.term_weight = {"gt": gt_weight, "obj": match_weight * obj_weight}
        self.sim_weight = match_weight * sim_weight
        self.sim_center = sim_center
        if sim_form not in ("cosine", "contrastive"):
            raise ValueError(f"MODEL.VCLR_LOSS.SIM_FORM={sim_form!r}: use cosine or contrastive")
        if not sim_temperature > 0:
            raise ValueError(f"MODEL.VCLR_LOSS.SIM_TEMPERATURE={sim_temperature}: must be > 0")
        self.sim_form = sim_form
        self.sim_temperature = sim_temperature
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
            "score_loss": lo.SCORE_LOSS,
            "score_target": lo.SCORE_TARGET,
            "gt_weight": lo.GT_WEIGHT,
            "obj_weight": lo.OBJ_WEIGHT,
            "sim_weight": lo.SIM_WEIGHT,
            "sim_center": lo.SIM_CENTER,
            "sim_form": lo.SIM_FORM,
            "sim_temperature": lo.SIM_TEMPERATURE,
            "proposal_score_weighting": lo.PROPOSAL_SCORE_WEIGHTING,
            "match_weight": lo.MATCH_WEIGHT,
            "quality": cfg.MODEL.VCLR_HEAD.QUALITY,
            "mask_loss_stride": cfg.MODEL.VCLR_HEAD.MASK_LOSS_STRIDE,
            "max_masks_per_image": cfg.MODEL.VCLR_HEAD.MAX_MASKS_PER_IMAGE,
        }

    @float32_outside_autocast
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

        # per location: -1 background, 0 matched to ground truth, 1 matched to a proposal
        src = torch.full_like(out.objectness, -1, dtype=torch.int64)
        for i, ((pred_idx, tgt_idx), t) in enumerate(zip(matches, targets)):
            src[i, pred_idx] = torch.where(t.is_gt[tgt_idx], 0, 1)
        if self.score_target == "binary":
            focal = sigmoid_focal_loss(
                out.objectness, (src >= 0).to(out.objectness.dtype), alpha=self.focal_alpha,
                gamma=self.focal_gamma, reduction="none",
            )
        else:
            focal = quality_focal_loss(out.objectness, self._iou_targets(out, targets, matches),
                                       beta=self.focal_gamma)
        if self.proposal_score_weighting:  # soft proposal targets (soft_targets.py)
            focal = focal * proposal_weight_map(focal, targets, matches)
        if any(t.score_weights is not None for t in targets):  # e.g. pseudo-labels' weight
            focal = focal * proposal_weight_map(focal, targets, matches, field="score_weights")

        pos = {"gt": [], "obj": []}  # per image: (pred_idx, tgt_idx) of that term
        for (pred_idx, tgt_idx), t in zip(matches, targets):
            gt = t.is_gt[tgt_idx]
            pos["gt"].append((pred_idx[gt], tgt_idx[gt]))
            pos["obj"].append((pred_idx[~gt], tgt_idx[~gt]))

        losses = {}
        dev = out.objectness.device
        if self.score_loss == "joint":
            # one focal loss over every location; positives weighted by their term's lambda
            w_loc = torch.ones_like(focal)
            w_loc[src == 0] = self.term_weight["gt"]
            w_loc[src == 1] = self.term_weight["obj"]
            num_pos = max(mean_count_over_processes(int((src >= 0).sum()), dev), 1.0)
            losses["loss_score"] = self.w["score"] * (focal * w_loc).sum() / num_pos
        for term, code in (("gt", 0), ("obj", 1)):
            num = mean_count_over_processes(sum(len(p) for p, _ in pos[term]), dev)
            keys = [f"loss_{term}_{k}" for k in ("score", "box_l1", "giou", "dice", "mask")]
            if self.score_loss == "joint":
                keys = keys[1:]
            if num == 0:
                losses.update({k: zero for k in keys})
                continue
            weight = self.term_weight[term]
            if self.score_loss == "split":
                # each term's focal loss ignores the other term's positives
                considered = (src == code) | (src == -1)
                losses[keys.pop(0)] = weight * self.w["score"] * (focal * considered).sum() / num
            l1, giou = self._box_losses(out, targets, pos[term], image_sizes)
            losses[keys[0]] = weight * self.w["box_l1"] * l1 / num + zero
            losses[keys[1]] = weight * self.w["giou"] * giou / num + zero
            if out.mask_coeffs is None:
                continue
            dice, bce, num_masks = self._mask_losses(out, targets, pos[term], mask_logits_fn)
            n = mean_count_over_processes(num_masks, dev) or 1.0
            losses[keys[2]] = weight * self.w["dice"] * dice / n + zero
            losses[keys[3]] = weight * self.w["mask"] * bce / n + zero
        if out.mask_coeffs is None:
            losses = {k: v for k, v in losses.items() if not k.endswith(("_dice", "_mask"))}
        if out.quality is not None:
            losses["loss_quality"] = self._quality_loss(out, targets, matches, zero)
        return losses

    @staticmethod
    def _iou_targets(out, targets, matches) -> torch.Tensor:
        """(N, R) objectness targets: IoU of each positive's (detached) box with its target,
        0 elsewhere."""
        y = torch.zeros_like(out.objectness)
        for i, ((pred_idx, tgt_idx), t) in enumerate(zip(matches, targets)):
            if len(pred_idx):
                iou = box_iou(out.boxes[i, pred_idx].detach().float(), t.boxes[tgt_idx].float())
                y[i, pred_idx] = iou.diagonal().to(y.dtype)
        return y

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
        return self.quality_weight * loss / (mean_count_over_processes(num, zero.device) or 1.0)

    @float32_outside_autocast
    def sim_loss(
        self,
        student: HeadOutputs,
        teacher: HeadOutputs,
        student_matches: list[tuple[torch.Tensor, torch.Tensor]],
        teacher_matches: list[tuple[torch.Tensor, torch.Tensor]],
        num_targets: list[int],
    ) -> torch.Tensor:
        """Weighted L_sim over student locations whose target the teacher also matched.

        The teacher's side of a target is the mean of the normalised embeddings of the
        locations the teacher matched to it (its prototype). ``sim_form`` "cosine" (the paper):
        ``1 - cos(q_S, prototype of its target)``. "contrastive": cross-entropy of the cosines
        of ``q_S`` with every prototype of the batch (this process's images), divided by
        ``sim_temperature``, against its own target's: a direction shared by every location
        raises all cosines alike and cannot lower it, unlike the cosine form's. With
        ``sim_center``, each branch's embeddings are first centred on their mean over all
        locations of the batch (a constant, no gradient).
        """
        emb_s, emb_t = student.embeddings.float(), teacher.embeddings.float()
        if self.sim_center:
            emb_s = emb_s - emb_s.detach().mean(dim=(0, 1))
            emb_t = emb_t - emb_t.mean(dim=(0, 1))
        q_s_all, proto_idx, protos = [], [], []
        offset = 0
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
                # prototypes of the targets the teacher matched, renumbered 0.. in the batch
                rank = torch.cumsum(has_t.long(), 0) - 1
                q_s_all.append(emb_s[i, s_idx[keep]])
                proto_idx.append(rank[s_tgt[keep]] + offset)
                protos.append(mean_t[has_t])
                offset += int(has_t.sum())
        zero = student.embeddings.sum() * 0
        num = mean_count_over_processes(sum(len(q) for q in q_s_all), zero.device)
        if not q_s_all:
            return zero
        q_s, idx, proto = torch.cat(q_s_all), torch.cat(proto_idx), torch.cat(protos)
        if self.sim_form == "cosine":
            terms = similarity_loss(q_s, proto[idx])
        else:
            logits = F.normalize(q_s, dim=-1) @ F.normalize(proto, dim=-1).detach().T
            terms = F.cross_entropy(logits / self.sim_temperature, idx, reduction="none")
        return self.sim_weight * terms.sum() / num + zero


def build_vclr_criterion(cfg):
    """The criterion named by ``MODEL.VCLR_LOSS.NAME`` in ``VCLR_CRITERION_REGISTRY``."""
    name = cfg.MODEL.VCLR_LOSS.NAME
    if name not in VCLR_CRITERION_REGISTRY:
        raise ValueError(f"MODEL.VCLR_LOSS.NAME={name!r} is not in VCLR_CRITERION_REGISTRY "
                         f"({sorted(k for k, _ in VCLR_CRITERION_REGISTRY)})")
    return VCLR_CRITERION_REGISTRY.get(name)(cfg)
