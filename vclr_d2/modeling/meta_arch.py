"""The ``VCLR`` meta-architecture: a student (backbone + dense head) and its EMA teacher.

Shape shorthand:
    N: images   R: locations   K: targets of an image   P: kept detections of an image

Training input per image (``VCLRDatasetMapper``'s output): ``image`` (the student's view,
uint8 CHW in ``INPUT.FORMAT``), ``image_natural`` (the natural image, same geometry; when absent
the student's image is used), ``instances`` (ground truth: ``gt_boxes``, ``gt_masks``),
``proposals`` (pseudo instances: ``gt_boxes``, optional ``gt_masks``), ``view`` (the view's
name) and optionally ``view_fallback`` (True when a missing view file was replaced by the
natural image). Inference input: ``image`` and optionally ``height``/``width``.

The teacher is a copy of the student, updated only by ``update_teacher`` (the trainer's EMA
hook calls it after every optimizer step): it has no gradients, is not in the optimizer, is
always in eval mode, and is saved with the checkpoint as ``teacher.backbone.*`` and
``teacher.head.*``. A checkpoint without teacher weights initialises the teacher from its
student weights.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import BitMasks, Boxes, ImageList, Instances, PolygonMasks
from detectron2.utils.events import get_event_storage
from torch import nn
from torchvision.ops import box_iou, nms

from .augment import StudentAugmentation
from .criterion import Targets, VCLRCriterion, box_cells
from .head import HeadOutputs, VCLRHead
from .matcher import build_matcher

__all__ = ["VCLR"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class VCLR(nn.Module):
    """v-CLR with a dense head. ``sim_on=False`` and natural-only views give the baseline."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: VCLRHead,
        matcher,
        criterion: VCLRCriterion,
        augmentation: StudentAugmentation | None,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        ema_decay: float = 0.999,
        sim_on: bool = True,
        test_with_teacher: bool = True,
        proposal_gt_dedup_iou: float = 0.7,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        mask_thresh: float = 0.5,
        max_detections_per_image: int = 300,
    ):
        """
        Args:
            backbone, head: the student's modules; the teacher is a deep copy of them.
            matcher: a ``VCLR_MATCHER_REGISTRY`` matcher.
            criterion: computes the loss dict.
            augmentation: student-only augmentations, or None for none.
            pixel_mean, pixel_std: normalisation of the raw images, in ``INPUT.FORMAT`` order.
            ema_decay: m in ``teacher <- m * teacher + (1 - m) * student``.
            sim_on: run the teacher and L_sim in training.
            test_with_teacher: inference with the teacher's (EMA) weights.
            proposal_gt_dedup_iou: drop proposals whose box IoU with a ground-truth box exceeds
                this (1.0 keeps all).
            topk_candidates: candidates per level kept before NMS at inference.
            nms_thresh: class-agnostic NMS IoU threshold at inference.
            score_thresh: minimum objectness of a candidate at inference.
            mask_thresh: probability threshold of the binary ``pred_masks``.
            max_detections_per_image: detections kept after NMS.
        """
        super().__init__()
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"MODEL.VCLR.EMA_DECAY={ema_decay}: must be in [0, 1]")
        self.backbone = backbone
        self.head = head
        self.teacher = nn.ModuleDict(
            {"backbone": copy.deepcopy(backbone), "head": copy.deepcopy(head)}
        )
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.matcher = matcher
        self.criterion = criterion
        self.augmentation = augmentation
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.ema_decay = ema_decay
        self.sim_on = sim_on
        self.test_with_teacher = test_with_teacher
        self.proposal_gt_dedup_iou = proposal_gt_dedup_iou
        self.topk_candidates = topk_candidates
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.mask_thresh = mask_thresh
        self.max_detections_per_image = max_detections_per_image
        self.register_load_state_dict_pre_hook(self._teacher_from_student_if_absent)

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        v = cfg.MODEL.VCLR
        return {
            "backbone": backbone,
            "head": VCLRHead(cfg, backbone.output_shape()),
            "matcher": build_matcher(cfg),
            "criterion": VCLRCriterion(cfg),
            "augmentation": StudentAugmentation(cfg),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "ema_decay": v.EMA_DECAY,
            "sim_on": v.SIM_ON,
            "test_with_teacher": v.TEST_WITH_TEACHER,
            "proposal_gt_dedup_iou": v.PROPOSAL_GT_DEDUP_IOU,
            "topk_candidates": v.TOPK_CANDIDATES,
            "nms_thresh": v.NMS_THRESH,
            "score_thresh": v.SCORE_THRESH,
            "mask_thresh": v.MASK_THRESH,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True) -> VCLR:
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------ teacher
    @torch.no_grad()
    def update_teacher(self, decay: float | None = None) -> None:
        """``teacher <- m * teacher + (1 - m) * student`` on every float parameter and buffer;
        other buffers are copied. ``decay`` overrides ``ema_decay`` (0 copies the student)."""
        m = self.ema_decay if decay is None else decay
        student = dict(self.backbone.state_dict(prefix="backbone.", keep_vars=True))
        student.update(self.head.state_dict(prefix="head.", keep_vars=True))
        teacher = self.teacher.state_dict(keep_vars=True)
        floats_t, floats_s = [], []
        for k, t in teacher.items():
            s = student[k]
            if t.dtype.is_floating_point:
                floats_t.append(t.data)
                floats_s.append(s.data)
            else:
                t.data.copy_(s.data)
        torch._foreach_mul_(floats_t, m)
        torch._foreach_add_(floats_t, torch._foreach_mul(floats_s, 1 - m))

    @staticmethod
    def _teacher_from_student_if_absent(module, state_dict, prefix, *args) -> None:
        has_teacher = any(k.startswith(prefix + "teacher.") for k in state_dict)
        student_keys = [k for k in state_dict
                        if k.startswith((prefix + "backbone.", prefix + "head."))]
        if has_teacher or not student_keys:
            return
        logger.info("Checkpoint has no teacher weights: the teacher starts as the student.")
        for k in student_keys:
            state_dict[prefix + "teacher." + k[len(prefix):]] = state_dict[k]

    # ------------------------------------------------------------------ inputs
    def preprocess(self, batched_inputs: list[dict], key: str, augment: bool) -> ImageList:
        """Normalise ``batched_inputs[i][key]`` (student augmentations if ``augment``), pad."""
        images = [x[key].to(self.device, non_blocking=True).float() for x in batched_inputs]
        if augment and self.augmentation is not None:
            images = self.augmentation.grayscale(images)
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        if augment and self.augmentation is not None:
            images = [self.augmentation.per_image(x) for x in images]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def prepare_targets(self, batched_inputs: list[dict], padded: tuple[int, int]
                        ) -> list[Targets]:
        """Ground truth and proposals of each image as one class-agnostic target set."""
        stride = self.criterion.mask_loss_stride
        mask_shape = (padded[0] // stride, padded[1] // stride)
        out = []
        for x in batched_inputs:
            gt, props = x.get("instances"), x.get("proposals")
            gt = gt.to(self.device) if gt is not None else None
            props = props.to(self.device) if props is not None else None
            if gt is not None and props is not None and len(gt) and len(props):
                iou = box_iou(props.gt_boxes.tensor, gt.gt_boxes.tensor)
                props = props[iou.max(dim=1).values <= self.proposal_gt_dedup_iou]
            boxes = [torch.zeros(0, 4, device=self.device)]
            is_gt = [torch.zeros(0, dtype=torch.bool, device=self.device)]
            masks, has_mask = [torch.zeros(0, *mask_shape, device=self.device)], [is_gt[0]]
            weights = [boxes[0][:, 0]]  # proposal scores for soft targets, 1 for ground truth
            for part, flag in ((gt, True), (props, False)):
                if part is None:
                    continue
                n = len(part)
                with_masks = self.head.mask_on and part.has("gt_masks")
                weights.append(part.scores.float() if not flag and part.has("scores")
                               else torch.ones(n, device=self.device))
                boxes.append(part.gt_boxes.tensor.float())
                is_gt.append(torch.full((n,), flag, dtype=torch.bool, device=self.device))
                has_mask.append(torch.full((n,), with_masks, dtype=torch.bool,
                                           device=self.device))
                masks.append(self._mask_targets(part, padded, stride) if with_masks
                             else torch.zeros(n, *mask_shape, device=self.device))
            has_mask_t = torch.cat(has_mask)
            out.append(Targets(
                boxes=torch.cat(boxes), is_gt=torch.cat(is_gt),
                masks=torch.cat(masks) if has_mask_t.any() else None, has_mask=has_mask_t,
                weights=torch.cat(weights),
            ))
        return out

    def _mask_targets(self, part: Instances, padded: tuple[int, int], stride: int
                      ) -> torch.Tensor:
        """(K, H / stride, W / stride) soft masks (area fractions) over the padded image."""
        m = part.gt_masks
        h, w = part.image_size
        if isinstance(m, PolygonMasks):
            m = BitMasks.from_polygon_masks(m, h, w)
        t = m.tensor.to(self.device, torch.float32)
        t = F.pad(t, (0, padded[1] - t.shape[-1], 0, padded[0] - t.shape[-2]))
        return F.avg_pool2d(t[:, None], stride)[:, 0] if len(t) else t[:, ::stride, ::stride]

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess(batched_inputs, "image", augment=True)
        out_s = self.head(self.backbone(images.tensor))
        targets = self.prepare_targets(batched_inputs, tuple(images.tensor.shape[-2:]))
        matches_s = self._match(out_s, targets, images.image_sizes)
        losses = self.criterion.detection_losses(
            out_s, targets, matches_s, images.image_sizes, self.head.mask_logits)
        if self.sim_on:
            key = "image_natural" if "image_natural" in batched_inputs[0] else "image"
            with torch.no_grad():
                natural = self.preprocess(batched_inputs, key, augment=False)
                out_t = self.teacher["head"](self.teacher["backbone"](natural.tensor))
                matches_t = self._match(out_t, targets, natural.image_sizes)
            losses["loss_sim"] = self.criterion.sim_loss(
                out_s, out_t, matches_s, matches_t, [len(t) for t in targets])
        self._log(batched_inputs, targets, matches_s)
        return losses

    def _match(self, out: HeadOutputs, targets: list[Targets], image_sizes
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            self.matcher(out.objectness[i].detach(), out.boxes[i].detach(), out.locations,
                         out.strides, t.boxes, image_sizes[i])
            for i, t in enumerate(targets)
        ]

    def _log(self, batched_inputs, targets, matches) -> None:
        try:
            storage = get_event_storage()
        except AssertionError:
            return
        n = max(len(batched_inputs), 1)
        storage.put_scalar("vclr/num_gt", sum(int(t.is_gt.sum()) for t in targets) / n)
        storage.put_scalar("vclr/num_proposals",
                           sum(int((~t.is_gt).sum()) for t in targets) / n)
        storage.put_scalar("vclr/num_pos", sum(len(p) for p, _ in matches) / n)
        views = [x.get("view", "natural") for x in batched_inputs]
        for name in sorted(set(views)):
            storage.put_scalar(f"vclr/view_{name}", views.count(name) / n)
        storage.put_scalar("vclr/view_fallbacks",
                           sum(bool(x.get("view_fallback", False)) for x in batched_inputs),
                           smoothing_hint=False)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        """Per image ``{"instances": Instances}`` at (height, width) of the input dict (else
        the image size): ``pred_boxes``, ``scores`` (sorted), ``pred_classes`` (0) and, with
        masks, ``pred_masks`` (bool)."""
        images = self.preprocess(batched_inputs, "image", augment=False)
        backbone, head = ((self.teacher["backbone"], self.teacher["head"])
                          if self.test_with_teacher else (self.backbone, self.head))
        out = head(backbone(images.tensor))
        results = []
        for i, (x, (h, w)) in enumerate(zip(batched_inputs, images.image_sizes)):
            out_h, out_w = x.get("height", h), x.get("width", w)
            results.append({"instances": self._inference_single(out[i], head, (h, w),
                                                                (out_h, out_w))})
        return results

    def _inference_single(self, out: HeadOutputs, head: VCLRHead, size: tuple[int, int],
                          out_size: tuple[int, int]) -> Instances:
        score = out.objectness.sigmoid()
        if out.quality is not None:
            score = score * out.quality.sigmoid()
        keep_idx = []
        start = 0
        for n in out.level_sizes:
            s = score[start:start + n]
            k = min(self.topk_candidates, n)
            top = s.topk(k).indices + start
            keep_idx.append(top[score[top] > self.score_thresh])
            start += n
        idx = torch.cat(keep_idx)
        h, w = size
        boxes = Boxes(out.boxes[idx].float())
        boxes.clip((h, w))
        nonempty = boxes.nonempty()
        idx, boxes, cand_scores = idx[nonempty], boxes[nonempty], score[idx][nonempty]
        keep = nms(boxes.tensor, cand_scores.float(), self.nms_thresh)
        keep = keep[: self.max_detections_per_image]
        idx, boxes, scores = idx[keep], boxes[keep], cand_scores[keep].float()

        out_h, out_w = out_size
        boxes.scale(out_w / w, out_h / h)
        boxes.clip((out_h, out_w))
        result = Instances((out_h, out_w))
        if out.mask_coeffs is not None:
            fg, maskness = self.paste_masks(
                head.mask_logits(out.mask_coeffs[idx], out.mask_features), head.mask_stride,
                size, out_size, boxes.tensor, self.mask_thresh)
            scores = (scores * maskness).sqrt()
            result.pred_masks = fg
        order = scores.argsort(descending=True, stable=True)
        result.pred_boxes = boxes[order]
        result.scores = scores[order]
        result.pred_classes = torch.zeros(len(order), dtype=torch.int64, device=scores.device)
        if result.has("pred_masks"):
            result.pred_masks = result.pred_masks[order]
        return result

    @staticmethod
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
