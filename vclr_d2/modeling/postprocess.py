"""Inference post-processing of the dense head: candidate selection, mask rescoring, NMS and
mask pasting.

Shape shorthand:
    R: locations of an image   C: candidates kept per level before NMS   P: kept detections
    Hm, Wm: mask-feature grid   H, W: output image size

``PostProcessor.select`` turns one image's ``HeadOutputs`` into kept detections (location
indices, boxes in input pixels, scores); ``PostProcessor.__call__`` adds the pasted masks and
returns ``Instances`` at the requested output size. The teacher's pseudo-labels
(``vclr_d2.modeling.pseudo_labels``) use ``select`` too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Boxes, Instances
from torchvision.ops import nms

from .boxes import box_cells
from .head import HeadOutputs, VCLRHead

__all__ = ["PostProcessor", "grid_maskness", "paste_masks"]


class PostProcessor:
    """Class-agnostic detections of one image from the dense head's outputs."""

    @configurable
    def __init__(
        self,
        *,
        topk_candidates: int = 1000,
        score_thresh: float = 0.0,
        nms_thresh: float = 0.7,
        mask_thresh: float = 0.5,
        mask_rescore: str = "before_nms",
        max_detections_per_image: int = 300,
    ):
        """
        Args:
            topk_candidates: candidates per level kept (by objectness) before NMS.
            score_thresh: minimum objectness of a candidate.
            nms_thresh: class-agnostic NMS IoU threshold.
            mask_thresh: probability threshold of the binary masks.
            mask_rescore: "before_nms": score = sqrt(objectness * maskness) of every
                candidate, then NMS and the cut (the official order); "after_nms": NMS and the
                cut on objectness, then the rescoring (the first release); "none": objectness.
            max_detections_per_image: detections kept after NMS.
        """
        if mask_rescore not in ("before_nms", "after_nms", "none"):
            raise ValueError(f"MODEL.VCLR.MASK_RESCORE={mask_rescore!r}: use before_nms, "
                             "after_nms or none")
        self.topk_candidates = topk_candidates
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.mask_thresh = mask_thresh
        self.mask_rescore = mask_rescore
        self.max_detections_per_image = max_detections_per_image

    @classmethod
    def from_config(cls, cfg) -> dict:
        v = cfg.MODEL.VCLR
        return {
            "topk_candidates": v.TOPK_CANDIDATES,
            "score_thresh": v.SCORE_THRESH,
            "nms_thresh": v.NMS_THRESH,
            "mask_thresh": v.MASK_THRESH,
            "mask_rescore": v.MASK_RESCORE,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    def select(self, out: HeadOutputs, head: VCLRHead, size: tuple[int, int]
               ) -> tuple[torch.Tensor, Boxes, torch.Tensor]:
        """Kept detections of one image, best first.

        Args:
            out: the image's head outputs (no batch dimension).
            size: (h, w) of the unpadded input.

        Returns:
            location indices (P,), boxes (P, 4) clipped to ``size``, scores (P,).
        """
        score = out.objectness.sigmoid()
        if out.quality is not None:
            score = score * out.quality.sigmoid()
        keep_idx = []
        start = 0
        for n in out.level_sizes:
            top = score[start:start + n].topk(min(self.topk_candidates, n)).indices + start
            keep_idx.append(top[score[top] > self.score_thresh])
            start += n
        idx = torch.cat(keep_idx)
        boxes = Boxes(out.boxes[idx].float())
        boxes.clip(size)
        nonempty = boxes.nonempty()
        idx, boxes, scores = idx[nonempty], boxes[nonempty], score[idx][nonempty].float()
        if out.mask_coeffs is not None and self.mask_rescore == "before_nms" and len(idx):
            # in chunks: all candidates' mask logits at once can be large at 800 px
            maskness = torch.cat([
                grid_maskness(head.mask_logits(out.mask_coeffs[i], out.mask_features), b,
                              head.mask_stride, self.mask_thresh)
                for i, b in zip(idx.split(512), boxes.tensor.split(512))
            ])
            scores = (scores * maskness).sqrt()
        keep = nms(boxes.tensor, scores, self.nms_thresh)[: self.max_detections_per_image]
        return idx[keep], boxes[keep], scores[keep]

    def __call__(self, out: HeadOutputs, head: VCLRHead, size: tuple[int, int],
                 out_size: tuple[int, int]) -> Instances:
        """``Instances`` of one image at ``out_size``: ``pred_boxes``, ``scores`` (sorted),
        ``pred_classes`` (0) and, with masks, ``pred_masks`` (bool)."""
        idx, boxes, scores = self.select(out, head, size)
        (h, w), (out_h, out_w) = size, out_size
        boxes.scale(out_w / w, out_h / h)
        boxes.clip((out_h, out_w))
        result = Instances((out_h, out_w))
        masks = None
        if out.mask_coeffs is not None:
            masks, maskness = paste_masks(
                head.mask_logits(out.mask_coeffs[idx], out.mask_features), head.mask_stride,
                size, out_size, boxes.tensor, self.mask_thresh)
            if self.mask_rescore == "after_nms":
                scores = (scores * maskness).sqrt()
        order = scores.argsort(descending=True, stable=True)
        result.pred_boxes = boxes[order]
        result.scores = scores[order]
        result.pred_classes = torch.zeros(len(order), dtype=torch.int64, device=scores.device)
        if masks is not None:
            result.pred_masks = masks[order]
        return result


def grid_maskness(logits: torch.Tensor, boxes: torch.Tensor, stride: int, thresh: float
                  ) -> torch.Tensor:
    """Maskness on the mask-feature grid: the mean probability of the cells inside each box
    whose probability exceeds ``thresh`` (0 for none).

    Args:
        logits: (P, Hm, Wm) mask logits at ``stride``; boxes: (P, 4) in input pixels.

    Returns:
        (P,) maskness.
    """
    in_y, in_x = box_cells(boxes, tuple(logits.shape[-2:]), stride)
    p = logits.float().sigmoid()
    fg = (p > thresh) & in_y[:, :, None] & in_x[:, None, :]
    return (p * fg).flatten(1).sum(1) / fg.flatten(1).sum(1).clamp(min=1)


def paste_masks(logits: torch.Tensor, stride: int, size: tuple[int, int],
                out_size: tuple[int, int], boxes: torch.Tensor, thresh: float,
                windowed: bool | None = None, chunk: int = 32
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks at the output size, empty outside each box, and their maskness.

    The mask probability of an output pixel is the sigmoid of the mask logits resampled
    bilinearly from the stride grid at the pixel's centre, in one step; ``pred_masks`` is
    probability > ``thresh`` inside the box (pixel centres, see ``box_cells``); maskness is
    the mean probability over the mask's pixels (0 for an empty mask).

    Args:
        logits: (P, Hm, Wm) mask logits of the padded input at ``stride``.
        size: (h, w) of the unpadded input; out_size: (H, W) wanted.
        boxes: (P, 4) boxes in output coordinates.
        windowed: resample only each box's window, one mask at a time (less work: the
            boxes' area instead of P x H x W; the default on the CPU), or whole images in
            chunks of ``chunk`` masks (fewer, larger kernels: the default on a GPU). Both
            give the same masks.

    Returns:
        (P, H, W) bool masks and (P,) maskness.
    """
    (h, w), (out_h, out_w) = size, out_size
    hm, wm = logits.shape[-2:]
    dev = logits.device
    # output pixel centre -> input pixel -> normalised feature coordinate (align_corners=0)
    gx = (torch.arange(out_w, device=dev) + 0.5) * (w / out_w) * 2 / (stride * wm) - 1
    gy = (torch.arange(out_h, device=dev) + 0.5) * (h / out_h) * 2 / (stride * hm) - 1
    masks = torch.zeros(len(logits), out_h, out_w, dtype=torch.bool, device=dev)
    maskness = torch.zeros(len(logits), device=dev)
    if not len(logits):
        return masks, maskness
    in_y, in_x = box_cells(boxes.float(), (out_h, out_w), 1)

    def sample(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        return F.grid_sample(x[None].float(), grid, mode="bilinear",
                             padding_mode="border", align_corners=False)[0].sigmoid()

    if windowed is None:
        windowed = dev.type == "cpu"
    if windowed:
        # the inside of a box is a rectangle of rows x columns: its first and last ones
        rows = torch.arange(out_h, device=dev)
        cols = torch.arange(out_w, device=dev)
        big = torch.iinfo(torch.int64).max
        y0 = torch.where(in_y, rows, big).amin(1).tolist()
        y1 = (torch.where(in_y, rows, -1).amax(1) + 1).tolist()
        x0 = torch.where(in_x, cols, big).amin(1).tolist()
        x1 = (torch.where(in_x, cols, -1).amax(1) + 1).tolist()
        for i in range(len(logits)):
            if y1[i] <= y0[i] or x1[i] <= x0[i]:
                continue
            p = sample(logits[i:i + 1], gy[y0[i]:y1[i]], gx[x0[i]:x1[i]])[0]
            fg = p > thresh
            masks[i, y0[i]:y1[i], x0[i]:x1[i]] = fg
            maskness[i] = (p * fg).sum() / fg.sum().clamp(min=1)
        return masks, maskness
    for s in range(0, len(logits), chunk):
        inside = in_y[s:s + chunk, :, None] & in_x[s:s + chunk, None, :]
        p = sample(logits[s:s + chunk], gy, gx)
        fg = (p > thresh) & inside
        masks[s:s + chunk] = fg
        maskness[s:s + chunk] = ((p * fg).flatten(1).sum(1)
                                 / fg.flatten(1).sum(1).clamp(min=1))
    return masks, maskness
