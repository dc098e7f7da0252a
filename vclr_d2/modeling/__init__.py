"""Models: the ConvNeXt-FPN backbone, the dense v-CLR head and the VCLR meta-architecture."""

from .backbone import build_convnext_fpn_backbone

__all__ = ["build_convnext_fpn_backbone"]
