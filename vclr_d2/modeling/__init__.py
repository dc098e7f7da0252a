"""Models: the ConvNeXt-FPN and ResNet-FPN backbones, the dense v-CLR head and the VCLR
meta-architecture."""

from .augment import StudentAugmentation
from .backbone import build_convnext_fpn_backbone, build_vclr_resnet_fpn_backbone
from .criterion import VCLR_CRITERION_REGISTRY, Targets, VCLRCriterion, build_vclr_criterion
from .head import VCLR_HEAD_REGISTRY, HeadOutputs, VCLRHead, build_vclr_head
from .matcher import VCLR_MATCHER_REGISTRY, DynamicKMatcher, HungarianMatcher, build_matcher
from .meta_arch import VCLR

__all__ = [
    "VCLR",
    "VCLR_CRITERION_REGISTRY",
    "VCLR_HEAD_REGISTRY",
    "VCLR_MATCHER_REGISTRY",
    "DynamicKMatcher",
    "HeadOutputs",
    "HungarianMatcher",
    "StudentAugmentation",
    "Targets",
    "VCLRCriterion",
    "VCLRHead",
    "build_convnext_fpn_backbone",
    "build_matcher",
    "build_vclr_criterion",
    "build_vclr_head",
    "build_vclr_resnet_fpn_backbone",
]
