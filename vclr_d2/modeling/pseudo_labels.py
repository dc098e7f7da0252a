"""Pseudo-labels from the EMA teacher: its confident detections become extra proposal targets.

Shape shorthand:
    K: targets of an image   P: pseudo-labels of an image   Hm, Wm: mask-feature grid
    Hl, Wl: mask-loss grid (padded input / mask-loss stride)

Not part of the official v-CLR (its teacher only gives L_sim targets). With the teacher on a
view that shows every object the same way (``INPUT.VIEWS.TEACHER`` = ``"depth"``), its
detections include objects that no annotation and no proposal covers; as targets, they teach the
student, on every view it is shown, what the teacher finds on that view. A detection becomes a
pseudo-label when its score reaches ``score_thresh`` and its box overlaps no existing target (ground
truth or proposal) above ``target_iou``; NMS at ``nms_thresh`` among them, then at most
``max_per_image`` per image, best first. Pseudo-
labels join the proposals (the L_obj term) with the teacher's mask, cut to its box, and the
teacher's score as their proposal score (``MODEL.VCLR_LOSS.PROPOSAL_SCORE_WEIGHTING``).

A loop: the student learns the pseudo-labels, the EMA teacher follows the student, and its false
detections come back as pseudo-labels. On the synthetic set the cap fills with them and the
confident false detections grow with training (docs/experiments.md, "Why (e) stalls");
``end_iter`` stops the pseudo-labels so the student can unlearn them; ``score_weight`` 0 keeps
them but leaves the objectness of their locations untrained, so they cannot confirm themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torchvision.ops import box_iou, nms

from .boxes import box_mask
from .criterion import Targets
from .head import HeadOutputs, VCLRHead
from .postprocess import PostProcessor

__all__ = ["TeacherPseudoLabeler"]


class TeacherPseudoLabeler:
    """Adds the teacher's confident, uncovered detections to each image's targets."""

    @configurable
    def __init__(self, *, score_thresh: float = 0.5, max_per_image: int = 10,
                 target_iou: float = 0.5, nms_thresh: float = 0.5, start_iter: int = 0,
                 end_iter: int = -1, mask_thresh: float = 0.5, score_weight: float = 1.0):
        """
        Args:
            score_thresh: minimum teacher score (``PostProcessor`` score) of a pseudo-label.
            max_per_image: at most this many pseudo-labels per image.
            target_iou: a detection whose box IoU with an existing target exceeds this is
                dropped (the object already has a target).
            nms_thresh: NMS IoU threshold among an image's pseudo-labels (one per object).
            start_iter: training iteration from which pseudo-labels are made (the teacher
                first has to learn something).
            end_iter: training iteration from which no more pseudo-labels are made (< 0: no
                end, they go on to the end of training); the student then unlearns the
                teacher's false ones.
            mask_thresh: probability threshold of the teacher's masks.
            score_weight: objectness-loss weight of the locations matched to a pseudo-label
                (``Targets.score_weights``); 0 leaves their score untrained, so the teacher's
                detections do not confirm themselves, while their boxes and masks are learned.
        """
        if not 0.0 <= score_thresh <= 1.0:
            raise ValueError(f"MODEL.VCLR.PSEUDO_LABELS.SCORE_THRESH={score_thresh}: must be "
                             "in [0, 1]")
        if max_per_image < 0:
            raise ValueError(f"MODEL.VCLR.PSEUDO_LABELS.MAX_PER_IMAGE={max_per_image}: must be "
                             ">= 0")
        if 0 <= end_iter <= start_iter:
            raise ValueError(f"MODEL.VCLR.PSEUDO_LABELS.END_ITER={end_iter}: must be < 0 (to the "
                             f"end of training) or > START_ITER={start_iter}")
        if not 0.0 <= score_weight <= 1.0:
            raise ValueError(f"MODEL.VCLR.PSEUDO_LABELS.SCORE_WEIGHT={score_weight}: must be in "
                             "[0, 1]")
        self.score_weight = score_weight
        self.score_thresh = score_thresh
        self.max_per_image = max_per_image
        self.target_iou = target_iou
        self.nms_thresh = nms_thresh
        self.start_iter = start_iter
        self.end_iter = end_iter
        self.mask_thresh = mask_thresh

    @classmethod
    def from_config(cls, cfg) -> dict:
        p = cfg.MODEL.VCLR.PSEUDO_LABELS
        return {
            "score_thresh": p.SCORE_THRESH,
            "max_per_image": p.MAX_PER_IMAGE,
            "target_iou": p.TARGET_IOU,
            "nms_thresh": p.NMS_THRESH,
            "start_iter": p.START_ITER,
            "end_iter": p.END_ITER,
            "score_weight": p.SCORE_WEIGHT,
            "mask_thresh": cfg.MODEL.VCLR.MASK_THRESH,
        }

    def active(self, iteration: int) -> bool:
        return (self.max_per_image > 0 and iteration >= self.start_iter
                and (self.end_iter < 0 or iteration < self.end_iter))

    @torch.no_grad()
    def __call__(self, out: HeadOutputs, head: VCLRHead, postprocessor: PostProcessor,
                 targets: list[Targets], image_sizes: list[tuple[int, int]],
                 mask_grid: tuple[int, int], mask_loss_stride: int
                 ) -> tuple[list[Targets], int]:
        """
        Args:
            out: the teacher's head outputs of the batch (same geometry as the student's).
            head: the teacher's head (for its mask logits and stride).
            postprocessor: selects the teacher's detections (top-k, rescoring, NMS).
            targets: per image, ground truth and proposals.
            image_sizes: per image, (h, w) before padding.
            mask_grid: (Hl, Wl), the mask-loss grid of ``targets``; mask_loss_stride: its
                stride.

        Returns:
            the targets with the pseudo-labels appended (``is_gt`` False), and their number.
        """
        new, total = [], 0
        for i, t in enumerate(targets):
            idx, boxes, scores = postprocessor.select(out[i], head, image_sizes[i])
            keep = scores >= self.score_thresh
            boxes = boxes.tensor
            if len(t) and len(boxes):
                overlap = box_iou(boxes, t.boxes.to(boxes.dtype)).max(dim=1).values
                keep &= overlap <= self.target_iou
            keep = keep.nonzero()[:, 0]
            keep = keep[nms(boxes[keep], scores[keep], self.nms_thresh)][: self.max_per_image]
            idx, boxes, scores = idx[keep], boxes[keep], scores[keep]
            if not len(boxes):
                new.append(t)
                continue
            total += len(boxes)
            masks, has_mask = t.masks, t.has_mask
            if out.mask_coeffs is not None:
                grid = mask_grid
                logits = head.mask_logits(out.mask_coeffs[i, idx], out.mask_features[i])
                if logits.shape[-2:] != grid:
                    logits = F.interpolate(logits[None], size=grid, mode="bilinear",
                                           align_corners=False)[0]
                pseudo = (logits.sigmoid() > self.mask_thresh).float()
                pseudo = pseudo * box_mask(boxes, grid, mask_loss_stride)
                if masks is None:
                    masks = pseudo.new_zeros(len(t), *grid)
                masks = torch.cat([masks, pseudo])
                has_mask = torch.cat([has_mask, has_mask.new_ones(len(boxes))])
            else:
                has_mask = torch.cat([has_mask, has_mask.new_zeros(len(boxes))])
            score_weights = t.score_weights
            if self.score_weight != 1.0 or score_weights is not None:
                if score_weights is None:
                    score_weights = t.boxes.new_ones(len(t))
                score_weights = torch.cat(
                    [score_weights, score_weights.new_full((len(boxes),), self.score_weight)])
            new.append(Targets(
                boxes=torch.cat([t.boxes, boxes.to(t.boxes.dtype)]),
                is_gt=torch.cat([t.is_gt, t.is_gt.new_zeros(len(boxes))]),
                masks=masks, has_mask=has_mask,
                weights=None if t.weights is None else torch.cat(
                    [t.weights, scores.to(t.weights.dtype)]),
                score_weights=score_weights))
        return new, total
