"""What the v-CLR backbones share: the FPN built from ``MODEL.FPN`` over any bottom-up trunk."""

from __future__ import annotations

from detectron2.modeling import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from torch import nn

__all__ = ["build_fpn_on", "build_top_block"]


def build_top_block(cfg, bottom_up: Backbone) -> nn.Module | None:
    """The extra levels above the last FPN level, from ``MODEL.FPN.TOP_BLOCK`` and
    ``MODEL.FPN.TOP_BLOCK_IN``: detectron2's ``LastLevelP6P7`` (P6, P7 from the FPN's P5 or from
    the trunk's last input feature, e.g. ``res5`` as in RetinaNet), ``LastLevelMaxPool`` (P6 by
    max-pooling P5) or nothing.

    Raises:
        ValueError: naming the key with an unknown value.
    """
    fpn = cfg.MODEL.FPN
    out_channels = fpn.OUT_CHANNELS
    kind = fpn.TOP_BLOCK
    if kind == "p6p7":
        src = fpn.TOP_BLOCK_IN
        if src == "p5":
            return LastLevelP6P7(out_channels, out_channels, in_feature="p5")
        if src == fpn.IN_FEATURES[-1]:
            channels = bottom_up.output_shape()[src].channels
            return LastLevelP6P7(channels, out_channels, in_feature=src)
        raise ValueError(
            f"MODEL.FPN.TOP_BLOCK_IN={src!r}: must be 'p5' or the last FPN input "
            f"{fpn.IN_FEATURES[-1]!r}"
        )
    if kind == "maxpool":
        return LastLevelMaxPool()
    if kind == "none":
        return None
    raise ValueError(f"MODEL.FPN.TOP_BLOCK={kind!r}: must be 'p6p7', 'maxpool' or 'none'")


def build_fpn_on(cfg, bottom_up: Backbone, trunk_key: str) -> FPN:
    """detectron2's ``FPN`` over ``bottom_up`` with ``MODEL.FPN`` settings and
    ``build_top_block``'s top block.

    Args:
        trunk_key: the config key of the trunk's out features, named in the error raised when
            ``MODEL.FPN.IN_FEATURES`` asks for a feature the trunk does not produce.
    """
    in_features = list(cfg.MODEL.FPN.IN_FEATURES)
    produced = list(bottom_up.output_shape())
    missing = [f for f in in_features if f not in produced]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES={in_features} asks for {missing}, which {trunk_key}="
            f"{produced} does not produce"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=build_top_block(cfg, bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
