"""detectron2's ResNet (any ``MODEL.RESNETS.DEPTH``) + FPN under the v-CLR head.

The trunk is detectron2's own ``build_resnet_backbone`` (``MODEL.RESNETS``, frozen stages by
``MODEL.BACKBONE.FREEZE_AT``), the FPN detectron2's ``FPN``; only the top block is chosen by
``MODEL.FPN.TOP_BLOCK`` / ``TOP_BLOCK_IN``, as for the ConvNeXt backbone. With
``TOP_BLOCK_IN res5`` the module (and so the checkpoint layout) is that of detectron2's
``build_retinanet_resnet_fpn_backbone``: P3-P5 from res3-res5, P6 and P7 from res5.

Weights come through ``MODEL.WEIGHTS`` as a detectron2 checkpoint: ``tools/convert_pretrained.py``
turns torchvision-layout ResNet checkpoints (ImageNet, DINO, MoCo, CLoVE...) into one.
"""

from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .fpn import build_fpn_on

__all__ = ["build_vclr_resnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_vclr_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """detectron2 ResNet trunk (``MODEL.RESNETS``) with an FPN (``MODEL.FPN``) on top."""
    return build_fpn_on(cfg, build_resnet_backbone(cfg, input_shape), "MODEL.RESNETS.OUT_FEATURES")
