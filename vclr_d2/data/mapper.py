"""``VCLRDatasetMapper``: one view per image, the natural image, ground truth and proposals.

For each training image the mapper

1. reads the natural image and samples ONE view name (``INPUT.VIEWS.NAMES`` with
   ``INPUT.VIEWS.PROBS``), reading that view's file (for ``"natural"`` the image itself);
2. samples ONE set of geometric transforms (optional random crop with ``INPUT.CROP.PROB``, then
   resize of the shortest edge and flip) and applies it to the view, the natural image, the
   ground truth (``annotations``) and the proposals (``pseudo_annotations``);
3. returns ``image`` (the student's view, uint8 CHW), ``image_natural`` (the teacher's input),
   ``image_teacher`` (the view ``INPUT.VIEWS.TEACHER`` when it is not "natural": then the
   teacher's input),
   ``instances`` (class-agnostic ground truth: ``gt_boxes``, ``gt_classes`` = 0, ``gt_masks``),
   ``proposals`` (pseudo instances: ``gt_boxes``, ``scores`` and ``gt_masks`` when every
   proposal of the image has a segmentation), ``view`` (the name) and ``view_fallback``.

Where a view's file lives is defined in ``vclr_d2.data.views.layout`` (``ViewSpec``,
``view_path``, re-exported here): for a natural image ``<parent>/<split>/<stem>.<ext>`` the view
``(name, folder, ext)`` is ``<parent>/<folder>/<stem><ext>`` with ``{split}`` in ``folder``
replaced by ``<split>`` (the official layout: ``coco/train2017/x.jpg`` ->
``coco/train2017_depth_cmap/x.png``). ``INPUT.VIEWS.ROOT`` replaces ``<parent>``; an absolute
folder is used as is. ``$DETECTRON2_DATASETS`` in either is expanded (default ``datasets``).

A missing view file raises ``FileNotFoundError`` naming the path, unless
``INPUT.VIEWS.FALLBACK_TO_NATURAL`` is on: then the natural image is shown, the output carries
``view_fallback=True`` and the model logs the count per iteration (``vclr/view_fallbacks``).

At test time detectron2's ``DatasetMapper`` serves; this mapper is for training.
"""

from __future__ import annotations

import copy
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances

from .views.layout import ViewSpec, view_path

__all__ = ["ViewSpec", "VCLRDatasetMapper", "build_geometric_augmentation", "view_path"]

logger = logging.getLogger(__name__)


def build_geometric_augmentation(cfg, is_train: bool) -> list[T.Augmentation]:
    """Resize + flip from detectron2's config keys, with a crop of probability
    ``INPUT.CROP.PROB`` first when ``INPUT.CROP.ENABLED`` (training only). With
    ``INPUT.SCALE_JITTER.ENABLED``, training uses scale jitter + a fixed-size crop + flip instead
    (``INPUT.CROP`` and ``MIN/MAX_SIZE_TRAIN`` are then not used)."""
    if is_train and cfg.INPUT.SCALE_JITTER.ENABLED:
        return _scale_jitter(cfg)
    augs = utils.build_augmentation(cfg, is_train)
    if is_train and cfg.INPUT.CROP.ENABLED:
        prob = float(cfg.INPUT.CROP.PROB)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"INPUT.CROP.PROB must be in [0, 1], got {prob}")
        crop = T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE)
        if prob > 0:
            augs.insert(0, crop if prob == 1.0 else T.RandomApply(crop, prob=prob))
    return augs


def _scale_jitter(cfg) -> list[T.Augmentation]:
    sj = cfg.INPUT.SCALE_JITTER
    size, lo, hi = int(sj.SIZE), float(sj.MIN_SCALE), float(sj.MAX_SCALE)
    if size <= 0:
        raise ValueError(f"INPUT.SCALE_JITTER.SIZE must be > 0, got {sj.SIZE}")
    if not 0 < lo <= hi:
        raise ValueError("INPUT.SCALE_JITTER.MIN_SCALE and MAX_SCALE must satisfy "
                         f"0 < MIN_SCALE <= MAX_SCALE, got {sj.MIN_SCALE} and {sj.MAX_SCALE}")
    flips = [a for a in utils.build_augmentation(cfg, True) if isinstance(a, T.RandomFlip)]
    return [T.ResizeScale(min_scale=lo, max_scale=hi, target_height=size, target_width=size),
            T.FixedSizeCrop(crop_size=(size, size), pad=False), *flips]


def _check_views(views: list[ViewSpec], probs: list[float]) -> np.ndarray:
    if not views:
        raise ValueError("INPUT.VIEWS.NAMES is empty: give at least one view, e.g. ['natural']")
    if len(probs) != len(views):
        raise ValueError(f"INPUT.VIEWS.PROBS has {len(probs)} values for {len(views)} views "
                         f"{[v.name for v in views]}")
    values = []
    for i, x in enumerate(probs):
        try:
            values.append(float(x))
        except (TypeError, ValueError):
            raise ValueError(f"INPUT.VIEWS.PROBS[{i}]={x!r} is not a number (INPUT.VIEWS.PROBS="
                             f"{list(probs)})") from None
    p = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(p)) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"INPUT.VIEWS.PROBS must be non-negative with a positive sum, got {probs}")
    names = [v.name for v in views]
    if len(set(names)) != len(names):
        raise ValueError(f"INPUT.VIEWS.NAMES has duplicates: {names}")
    for v in views:
        if not v.is_natural and not v.folder:
            raise ValueError(f"INPUT.VIEWS.DIRS is empty for view '{v.name}'; only 'natural' "
                             "may have no folder")
    return p / p.sum()


class VCLRDatasetMapper:
    """Training mapper of v-CLR; see the module docstring for inputs and outputs."""

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: list[T.Augmentation | T.Transform],
        image_format: str,
        views: list[ViewSpec],
        view_probs: list[float],
        view_root: str = "",
        fallback_to_natural: bool = False,
        teacher_view: str = "natural",
        use_instance_mask: bool = True,
        instance_mask_format: str = "bitmask",
        load_proposals: bool = True,
        recompute_boxes: bool = False,
    ):
        """
        Args:
            augmentations: geometric augmentations, sampled once per image for all its inputs.
            image_format: detectron2 image format of every image read (e.g. "RGB").
            views: the views the student can be shown; ``view_probs``: their probabilities.
            view_root: replaces the natural folder's parent when locating view files.
            fallback_to_natural: show the natural image (and flag it) when a view is missing.
            teacher_view: the view the teacher sees, "natural" or one of ``views``' names; when
                not natural it is output as ``image_teacher`` (same geometry).
            use_instance_mask: output ``gt_masks`` for ground truth and proposals.
            instance_mask_format: "bitmask" (polygons and RLE) or "polygon" (polygons only).
            load_proposals: output ``proposals`` from the dicts' ``pseudo_annotations``.
            recompute_boxes: after a crop, ground-truth boxes = tight boxes of the cut masks.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.views = list(views)
        self.view_probs = _check_views(self.views, view_probs)
        self.view_root = view_root
        self.fallback_to_natural = fallback_to_natural
        names = [v.name for v in self.views]
        if teacher_view != "natural" and teacher_view not in names:
            raise ValueError(f"INPUT.VIEWS.TEACHER={teacher_view!r}: use 'natural' or one of "
                             f"INPUT.VIEWS.NAMES {names}")
        self.teacher_view = (None if teacher_view == "natural"
                             else self.views[names.index(teacher_view)])
        self.use_instance_mask = use_instance_mask
        if instance_mask_format not in ("bitmask", "polygon"):
            raise ValueError(f"INPUT.MASK_FORMAT must be 'bitmask' or 'polygon', got "
                             f"'{instance_mask_format}'")
        self.instance_mask_format = instance_mask_format
        self.load_proposals = load_proposals
        self.recompute_boxes = recompute_boxes and use_instance_mask
        # Per-process count for read_view's warnings (each dataloader worker has its own copy);
        # the per-iteration count is logged by the model (vclr/view_fallbacks).
        self.num_fallbacks = 0
        probs = [(v.name, round(float(p), 4)) for v, p in zip(self.views, self.view_probs)]
        logger.info(f"[VCLRDatasetMapper] augmentations: {augmentations}; views: {probs}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        v = cfg.INPUT.VIEWS
        n = len(v.NAMES)
        for key in ("DIRS", "EXTS"):
            if len(v[key]) != n:
                raise ValueError(f"INPUT.VIEWS.{key} has {len(v[key])} entries for {n} views "
                                 f"{list(v.NAMES)}")
        views = [ViewSpec(name, folder, ext) for name, folder, ext in zip(v.NAMES, v.DIRS, v.EXTS)]
        crop_masks = ((cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.PROB > 0)
                      or (is_train and cfg.INPUT.SCALE_JITTER.ENABLED))
        return {
            "is_train": is_train,
            "augmentations": build_geometric_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "views": views,
            "view_probs": list(v.PROBS),
            "view_root": v.ROOT,
            "fallback_to_natural": v.FALLBACK_TO_NATURAL,
            "teacher_view": v.TEACHER,
            "use_instance_mask": cfg.MODEL.MASK_ON,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "load_proposals": cfg.INPUT.LOAD_PROPOSALS,
            "recompute_boxes": crop_masks,
        }

    # ------------------------------------------------------------------ reading
    def _read(self, path: str, what: str) -> np.ndarray:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what} file not found: {path}")
        try:
            image = utils.read_image(path, format=self.image_format)
        except Exception as e:  # PIL raises several types for empty/corrupt files
            raise OSError(f"cannot read {what} file {path}: {e}") from e
        if image.size == 0:
            raise OSError(f"{what} file {path} is an empty image")
        return image

    def sample_view(self) -> ViewSpec:
        return self.views[int(np.random.choice(len(self.views), p=self.view_probs))]

    def read_view(self, dataset_dict: dict, natural: np.ndarray, view: ViewSpec | None = None
                  ) -> tuple[np.ndarray, str, bool]:
        """The image of ``view`` (default: a sampled view), its name and whether the natural
        image replaced it."""
        if view is None:
            view = self.sample_view()
        if view.is_natural:
            return natural, view.name, False
        path = view_path(dataset_dict["file_name"], view, self.view_root)
        if not os.path.isfile(path) and self.fallback_to_natural:
            self.num_fallbacks += 1
            if self.num_fallbacks <= 5 or self.num_fallbacks % 1000 == 0:
                logger.warning(f"view '{view.name}' missing: {path}; showing the natural image "
                               f"({self.num_fallbacks} fallbacks in this worker so far)")
            return natural, view.name, True
        image = self._read(path, f"view '{view.name}'")
        if image.shape != natural.shape:
            raise ValueError(f"view '{view.name}' file {path} has shape {image.shape}, but the "
                             f"natural image {dataset_dict['file_name']} has {natural.shape}; "
                             "views must have the natural image's resolution")
        return image, view.name, False

    # ------------------------------------------------------------------ targets
    def _to_instances(self, annos: list[dict], transforms, image_shape, orig_shape, *,
                      proposals: bool) -> Instances:
        annos = [copy.copy(a) for a in annos]
        if self.instance_mask_format == "bitmask":
            # Polygons -> RLE at the original size: transforms then move a pixel mask (nearest
            # interpolation), which is exact and needs no polygon clipping (shapely) for crops.
            for a in annos:
                if isinstance(a.get("segmentation"), list):
                    rles = mask_util.frPyObjects(a["segmentation"], *orig_shape)
                    a["segmentation"] = mask_util.merge(rles)
        annos = [utils.transform_instance_annotations(a, transforms, image_shape) for a in annos]
        with_masks = self.use_instance_mask and annos and all("segmentation" in a for a in annos)
        if not with_masks:
            for a in annos:
                a.pop("segmentation", None)
        inst = utils.annotations_to_instances(annos, image_shape,
                                              mask_format=self.instance_mask_format)
        inst.gt_classes = torch.zeros(len(inst), dtype=torch.int64)  # class-agnostic
        if proposals:
            inst.scores = torch.tensor([float(a.get("score", 1.0)) for a in annos],
                                       dtype=torch.float32)
        if not len(inst):
            inst.gt_boxes = Boxes(torch.zeros(0, 4))
        if self.recompute_boxes and inst.has("gt_masks") and len(inst):
            inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
        return utils.filter_empty_instances(inst)

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = dict(dataset_dict)  # shallow: annotations are copied when transformed
        natural = self._read(dataset_dict["file_name"], "image")
        utils.check_image_size(dataset_dict, natural)
        view_image, view_name, fallback = self.read_view(dataset_dict, natural)

        aug_input = T.AugInput(natural)
        transforms = self.augmentations(aug_input)
        natural_t = aug_input.image
        view_t = natural_t if view_image is natural else transforms.apply_image(view_image)
        image_shape = natural_t.shape[:2]

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(view_t.transpose(2, 0, 1)))
        dataset_dict["image_natural"] = torch.as_tensor(
            np.ascontiguousarray(natural_t.transpose(2, 0, 1)))
        dataset_dict["view"] = view_name
        dataset_dict["view_fallback"] = fallback
        if self.teacher_view is not None:
            if view_name == self.teacher_view.name and not fallback:
                teacher_t = view_t
            else:
                teacher_image, _, teacher_fallback = self.read_view(dataset_dict, natural,
                                                                    self.teacher_view)
                teacher_t = (natural_t if teacher_image is natural
                             else transforms.apply_image(teacher_image))
                dataset_dict["view_fallback"] = fallback or teacher_fallback
            dataset_dict["image_teacher"] = torch.as_tensor(
                np.ascontiguousarray(teacher_t.transpose(2, 0, 1)))

        annos = [a for a in dataset_dict.pop("annotations", []) if a.get("iscrowd", 0) == 0]
        orig_shape = natural.shape[:2]
        dataset_dict["instances"] = self._targets(dataset_dict, annos, transforms, image_shape,
                                                  orig_shape, proposals=False)
        pseudo = dataset_dict.pop("pseudo_annotations", None)
        if self.load_proposals and pseudo is not None:
            pseudo = [dict(a, bbox_mode=a.get("bbox_mode", BoxMode.XYWH_ABS)) for a in pseudo]
            dataset_dict["proposals"] = self._targets(dataset_dict, pseudo, transforms,
                                                      image_shape, orig_shape, proposals=True)
        return dataset_dict

    def _targets(self, dataset_dict: dict, annos: list[dict], transforms, image_shape,
                 orig_shape, *, proposals: bool) -> Instances:
        """``_to_instances``, with pycocotools' errors on a bad segmentation re-raised naming
        the image file and the annotation id."""
        try:
            return self._to_instances(annos, transforms, image_shape, orig_shape,
                                      proposals=proposals)
        except (ValueError, TypeError, IndexError, AssertionError) as e:
            what = "proposal" if proposals else "annotation"
            culprit = next((a for a in annos if _bad_segmentation(a, orig_shape)), None)
            ids = (f"{what} id {culprit.get('id')}" if culprit is not None
                   else f"one of the {what}s {[a.get('id') for a in annos]}")
            raise ValueError(f"image {dataset_dict['file_name']}: {ids} cannot be converted to "
                             f"a mask: {type(e).__name__}: {e}") from e


def _bad_segmentation(anno: dict, image_shape: tuple[int, int]) -> bool:
    """Whether pycocotools rejects ``anno``'s segmentation for an image of ``image_shape``."""
    segm = anno.get("segmentation")
    try:
        if isinstance(segm, list):
            mask_util.frPyObjects(segm, *image_shape)
        elif isinstance(segm, dict):
            if isinstance(segm.get("counts"), list):
                segm = mask_util.frPyObjects(segm, *segm["size"])
            if mask_util.decode(segm).shape[:2] != tuple(image_shape):
                return True
    except Exception:  # pycocotools raises ValueError, TypeError, IndexError, Exception
        return True
    return False
