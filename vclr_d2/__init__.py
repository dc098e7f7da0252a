"""vclr_d2: v-CLR open-world instance segmentation in Detectron2.

Importing this package registers its components in detectron2's registries; each is named here,
one hop from ``import vclr_d2``:

- meta-architecture (``META_ARCH_REGISTRY``): ``VCLR`` (student, EMA teacher, losses,
  post-processing), with ``VCLRHead``, ``VCLRCriterion``, ``PostProcessor`` and
  ``TeacherPseudoLabeler`` as its parts;
- backbones (``BACKBONE_REGISTRY``): ``build_convnext_fpn_backbone`` (timm ConvNeXt + FPN),
  ``build_vclr_resnet_fpn_backbone`` (detectron2 ResNet + FPN);
- the meta-architecture's parts, each chosen by name from its registry: heads
  (``VCLR_HEAD_REGISTRY``, ``MODEL.VCLR_HEAD.NAME``): ``VCLRHead``; criteria
  (``VCLR_CRITERION_REGISTRY``, ``MODEL.VCLR_LOSS.NAME``): ``VCLRCriterion``; matchers
  (``VCLR_MATCHER_REGISTRY``, ``MODEL.VCLR_MATCHER.NAME``): ``HungarianMatcher``,
  ``DynamicKMatcher``;
- data: ``VCLRDatasetMapper`` (views, proposals), the built-in open-world and synthetic
  datasets (``register_all``);
- evaluation: ``OpenWorldEvaluator`` (class-agnostic AR, known/novel split);
- engine: ``VCLRTrainer`` (``DefaultTrainer`` with the EMA hook, exact resume and the divergence
  guard), ``get_vclr_cfg`` / ``setup_cfg`` (config + dataset registration).
"""

from . import data, evaluation, modeling  # noqa: F401  (imported to register components)
from .config import add_vclr_config
from .data import VCLRDatasetMapper
from .data.datasets import register_all
from .evaluation import OpenWorldEvaluator
from .modeling import (
    VCLR,
    VCLR_CRITERION_REGISTRY,
    VCLR_HEAD_REGISTRY,
    VCLR_MATCHER_REGISTRY,
    DynamicKMatcher,
    HungarianMatcher,
    VCLRCriterion,
    VCLRHead,
    build_convnext_fpn_backbone,
    build_vclr_resnet_fpn_backbone,
)
from .modeling.postprocess import PostProcessor
from .modeling.pseudo_labels import TeacherPseudoLabeler

__all__ = [
    "VCLR",
    "VCLR_CRITERION_REGISTRY",
    "VCLR_HEAD_REGISTRY",
    "VCLR_MATCHER_REGISTRY",
    "DynamicKMatcher",
    "HungarianMatcher",
    "OpenWorldEvaluator",
    "PostProcessor",
    "TeacherPseudoLabeler",
    "VCLRCriterion",
    "VCLRDatasetMapper",
    "VCLRHead",
    "add_vclr_config",
    "build_convnext_fpn_backbone",
    "build_vclr_resnet_fpn_backbone",
    "register_all",
]


def __getattr__(name: str):
    # the engine (trainer, config set-up) imports detectron2.engine: loaded on first use
    if name in ("VCLRTrainer", "get_vclr_cfg", "setup_cfg"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'vclr_d2' has no attribute {name!r}")
