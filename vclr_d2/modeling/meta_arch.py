"""The ``VCLR`` meta-architecture: a student (backbone + dense head) and its EMA teacher.

Shape shorthand:
    N: images   R: locations   K: targets of an image   P: kept detections of an image

Training input per image (``VCLRDatasetMapper``'s output): ``image`` (the student's view, uint8
CHW in ``INPUT.FORMAT``), ``image_natural`` (the natural image, same geometry),
``image_teacher`` (the teacher's view when ``INPUT.VIEWS.TEACHER`` is not "natural"; the teacher
sees the first of ``image_teacher``, ``image_natural``, ``image`` present), ``instances``
(ground truth: ``gt_boxes``, ``gt_masks``), ``proposals`` (pseudo instances: ``gt_boxes``,
optional ``gt_masks``), ``view`` (the view's name) and optionally ``view_fallback`` (True when a
missing view file was replaced by the natural image). Inference input: ``image`` and optionally
``height``/``width``.

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
from detectron2.modeling import FPN, META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from detectron2.utils.events import get_event_storage
from torch import nn
from torchvision.ops import box_iou

from .augment import StudentAugmentation
from .criterion import Targets, VCLRCriterion, build_vclr_criterion
from .head import HeadOutputs, VCLRHead, build_vclr_head
from .matcher import build_matcher
from .postprocess import PostProcessor
from .pseudo_labels import TeacherPseudoLabeler

__all__ = ["VCLR"]

logger = logging.getLogger(__name__)


def freeze_unread_fpn_outputs(backbone: nn.Module, read: list[str]) -> list[str]:
    """Stop gradients to the output convs of an FPN's levels that nothing reads (neither
    ``read`` nor the FPN's top block): their parameters would never get a gradient, which
    ``DistributedDataParallel`` refuses. Returns the frozen levels (none for another backbone).
    """
    if not isinstance(backbone, FPN):
        return []
    needed = set(read)
    if backbone.top_block is not None:
        needed.add(getattr(backbone.top_block, "in_feature", ""))
    frozen = []
    for name in backbone._out_features:
        conv = getattr(backbone, f"fpn_output{name[1:]}", None)
        if conv is not None and name not in needed:
            conv.requires_grad_(False)
            frozen.append(name)
    return frozen


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
        proposal_min_score: float = 0.0,
        postprocessor: PostProcessor | None = None,
        pseudo_labeler: TeacherPseudoLabeler | None = None,
        view_iters: tuple[int, int] = (0, -1),
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
            proposal_min_score: drop proposals whose score (the discoverer's confidence, the
                ``scores`` of the proposals' Instances) is below this (0 keeps all).
            postprocessor: turns head outputs into detections (default ``PostProcessor()``).
            pseudo_labeler: adds the teacher's confident detections to the targets (not in the
                official v-CLR); None for none.
            view_iters: ``(start, end)``: the student sees its drawn view (``image``) at
                training iterations ``start <= it < end`` (``end < 0``: to the end), the
                natural image (``image_natural``) at the others; (0, -1) always the view.
        """
        super().__init__()
        view_iters = tuple(view_iters)
        if (len(view_iters) != 2 or not all(isinstance(i, int) for i in view_iters)
                or view_iters[0] < 0 or 0 <= view_iters[1] <= view_iters[0]):
            raise ValueError(f"MODEL.VCLR.VIEW_ITERS={list(view_iters)}: must be [start, end] "
                             "with 0 <= start < end, or end < 0 for no end")
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"MODEL.VCLR.EMA_DECAY={ema_decay}: must be in [0, 1]")
        self.backbone = backbone
        self.head = head
        read = [*head.in_features, *getattr(head, "mask_in_features", [])]
        unread = freeze_unread_fpn_outputs(backbone, read)
        if unread:
            logger.info(f"FPN levels {unread} are not read by the head: their output convs get "
                        "no gradient and are frozen (multi-process training needs every "
                        "trainable parameter used)")
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
        self.proposal_min_score = proposal_min_score
        self.postprocessor = postprocessor if postprocessor is not None else PostProcessor()
        self.pseudo_labeler = pseudo_labeler
        self.view_iters = view_iters
        self.register_load_state_dict_pre_hook(self._teacher_from_student_if_absent)

    @classmethod
    def from_config(cls, cfg) -> dict:
        backbone = build_backbone(cfg)
        v = cfg.MODEL.VCLR
        return {
            "backbone": backbone,
            "head": build_vclr_head(cfg, backbone.output_shape()),
            "matcher": build_matcher(cfg),
            "criterion": build_vclr_criterion(cfg),
            "augmentation": StudentAugmentation(cfg),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "ema_decay": v.EMA_DECAY,
            "sim_on": v.SIM_ON,
            "test_with_teacher": v.TEST_WITH_TEACHER,
            "proposal_gt_dedup_iou": v.PROPOSAL_GT_DEDUP_IOU,
            "proposal_min_score": v.PROPOSAL_MIN_SCORE,
            "postprocessor": PostProcessor(cfg),
            "pseudo_labeler": (TeacherPseudoLabeler(cfg) if v.PSEUDO_LABELS.ENABLED else None),
            "view_iters": tuple(v.VIEW_ITERS),
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
            if props is not None and self.proposal_min_score > 0 and props.has("scores"):
                props = props[props.scores >= self.proposal_min_score]
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
        views_on = self._views_active(batched_inputs)
        images = self.preprocess(batched_inputs, "image" if views_on else "image_natural",
                                 augment=True)
        out_s = self.head(self.backbone(images.tensor))
        padded = tuple(images.tensor.shape[-2:])
        targets = self.prepare_targets(batched_inputs, padded)
        out_t = None
        if self.sim_on or self._pseudo_labels_active():
            key = next(k for k in ("image_teacher", "image_natural", "image")
                       if k in batched_inputs[0])
            with torch.no_grad():
                teacher_images = self.preprocess(batched_inputs, key, augment=False)
                out_t = self.teacher["head"](self.teacher["backbone"](teacher_images.tensor))
            if self._pseudo_labels_active():
                stride = self.criterion.mask_loss_stride
                targets, num_pseudo = self.pseudo_labeler(
                    out_t, self.teacher["head"], self.postprocessor, targets,
                    teacher_images.image_sizes, (padded[0] // stride, padded[1] // stride),
                    stride)
                self._put_scalar("vclr/num_pseudo", num_pseudo / max(len(batched_inputs), 1))
        matches_s = self._match(out_s, targets, images.image_sizes)
        losses = self.criterion.detection_losses(
            out_s, targets, matches_s, images.image_sizes, self.head.mask_logits)
        if self.sim_on:
            with torch.no_grad():
                matches_t = self._match(out_t, targets, teacher_images.image_sizes)
            losses["loss_sim"] = self.criterion.sim_loss(
                out_s, out_t, matches_s, matches_t, [len(t) for t in targets])
        self._log(batched_inputs, targets, matches_s, views_on)
        return losses

    @staticmethod
    def _iteration() -> int:
        try:
            return get_event_storage().iter
        except AssertionError:  # outside a trainer
            return 0

    def _views_active(self, batched_inputs: list[dict]) -> bool:
        """Whether the student sees its drawn view now (``view_iters``); outside the window it
        sees ``image_natural`` (the inputs must have it)."""
        start, end = self.view_iters
        it = self._iteration()
        if start <= it and (end < 0 or it < end):
            return True
        if any("image_natural" not in x for x in batched_inputs):
            raise ValueError(f"MODEL.VCLR.VIEW_ITERS={list(self.view_iters)}: at iteration {it} "
                             "the student sees the natural image, but an input has no "
                             "'image_natural' (use VCLRDatasetMapper)")
        return False

    def _pseudo_labels_active(self) -> bool:
        if self.pseudo_labeler is None:
            return False
        return self.pseudo_labeler.active(self._iteration())

    @staticmethod
    def _put_scalar(name: str, value: float) -> None:
        try:
            get_event_storage().put_scalar(name, value)
        except AssertionError:
            pass

    def _match(self, out: HeadOutputs, targets: list[Targets], image_sizes
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            self.matcher(out.objectness[i].detach(), out.boxes[i].detach(), out.locations,
                         out.strides, t.boxes, image_sizes[i])
            for i, t in enumerate(targets)
        ]

    def _log(self, batched_inputs, targets, matches, views_on: bool = True) -> None:
        try:
            storage = get_event_storage()
        except AssertionError:
            return
        n = max(len(batched_inputs), 1)
        storage.put_scalar("vclr/num_gt", sum(int(t.is_gt.sum()) for t in targets) / n)
        storage.put_scalar("vclr/num_proposals",
                           sum(int((~t.is_gt).sum()) for t in targets) / n)
        storage.put_scalar("vclr/num_pos", sum(len(p) for p, _ in matches) / n)
        views = [x.get("view", "natural") if views_on else "natural" for x in batched_inputs]
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
            out_size = (x.get("height", h), x.get("width", w))
            results.append({"instances": self.postprocessor(out[i], head, (h, w), out_size)})
        return results
