from .convnext import ConvNeXt, build_convnext_fpn_backbone

__all__ = ["ConvNeXt", "build_convnext_fpn_backbone"]
