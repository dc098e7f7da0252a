"""Backbones: a timm ConvNeXt or a detectron2 ResNet trunk, each with an FPN."""

from .convnext import ConvNeXt, build_convnext_fpn_backbone
from .fpn import build_fpn_on, build_top_block
from .resnet import build_vclr_resnet_fpn_backbone

__all__ = [
    "ConvNeXt",
    "build_convnext_fpn_backbone",
    "build_fpn_on",
    "build_top_block",
    "build_vclr_resnet_fpn_backbone",
]
