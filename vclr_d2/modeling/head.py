"""The dense class-agnostic v-CLR head.

Shape shorthand used in this module:
    N: images in the batch          L: FPN levels the head runs on
    R: locations over all levels    C: FPN channels
    D: object-embedding dim         M: mask-coefficient dim (= mask-feature channels)
    Hm, Wm: size of the stride-``mask_stride`` mask-feature map

At every location of every level, the head computes an object embedding ``q`` (the dense
analogue of a DETR query) from two GroupNorm towers, and decodes everything else from ``q``:
an objectness logit, a box as distances to the four sides (times the level's stride), an
optional quality logit (IoU or centerness), and a mask-coefficient vector. Because every
prediction is read from ``q``, the similarity loss on ``q`` shapes the representation that
objectness, boxes and masks use, and ``q`` cannot collapse to a constant without breaking them.

``embed_norm="LN"`` (the official v-CLR's arrangement) layer-normalises ``q`` over its channels
at each location and the predictors read it *linearly* (1x1 convs), like the class, box and
mask heads of a DETR decoder read its LayerNorm'd query: L_sim then acts on exactly the tensor
the predictions are read from. ``embed_norm="none"`` is the first release's arrangement: ``q``
is the raw 1x1-conv output and the predictors read ``ReLU(q)``.

Masks: a mask-feature branch fuses FPN levels at stride ``mask_stride`` (8 by default, 4 with
``mask_upsample=2``); the mask logits of a location are ``<coefficients, per-pixel mask
feature>``. As in YOLACT, a mask is only trusted inside its box: the loss is computed inside the
target box and inference zeroes the mask outside the predicted box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["VCLR_HEAD_REGISTRY", "VCLRHead", "HeadOutputs", "Scale", "build_vclr_head"]

VCLR_HEAD_REGISTRY = Registry("VCLR_HEAD")
VCLR_HEAD_REGISTRY.__doc__ = """
Dense heads of the v-CLR meta-architecture, chosen by ``MODEL.VCLR_HEAD.NAME``. A registered
class is built with ``cls(cfg, input_shape)`` (``@configurable``; ``input_shape``: the backbone's
output shapes by name) and returns ``HeadOutputs`` as ``VCLRHead`` does.
"""


@dataclass
class HeadOutputs:
    """Per-location predictions of a batch, flattened over levels (level-major, then row-major).

    Attributes:
        objectness: (N, R) logits.
        boxes: (N, R, 4) decoded boxes, XYXY absolute in the padded input.
        embeddings: (N, R, D) object embeddings q (not normalised).
        mask_coeffs: (N, R, M) mask coefficients, or None when masks are off.
        quality: (N, R) quality logits, or None when the quality branch is off.
        mask_features: (N, M, Hm, Wm) mask features, or None when masks are off.
        locations: (R, 2) location centres (x, y) in input pixels.
        strides: (R,) stride of each location's level.
        level_sizes: number of locations of each level (sums to R).
    """

    objectness: torch.Tensor
    boxes: torch.Tensor
    embeddings: torch.Tensor
    mask_coeffs: torch.Tensor | None
    quality: torch.Tensor | None
    mask_features: torch.Tensor | None
    locations: torch.Tensor
    strides: torch.Tensor
    level_sizes: list[int]

    def __getitem__(self, i: int) -> HeadOutputs:
        """The outputs of image ``i`` with a batch dimension of 1 kept off: shapes lose N."""
        pick = lambda t: None if t is None else t[i]  # noqa: E731
        return HeadOutputs(
            objectness=self.objectness[i],
            boxes=self.boxes[i],
            embeddings=self.embeddings[i],
            mask_coeffs=pick(self.mask_coeffs),
            quality=pick(self.quality),
            mask_features=pick(self.mask_features),
            locations=self.locations,
            strides=self.strides,
            level_sizes=self.level_sizes,
        )


class Scale(nn.Module):
    """A learnable scalar multiplier (one per FPN level for box regression)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _tower(in_channels: int, channels: int, num_convs: int, norm: str) -> nn.Sequential:
    layers = []
    for i in range(num_convs):
        layers += [
            Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=not norm,
                   norm=get_norm(norm, channels)),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class MaskFeatureBranch(nn.Module):
    """Fuses several FPN levels into one (N, M, Hm, Wm) mask-feature map at the finest level's
    stride divided by ``upsample`` (YOLACT's prototypes: upsampled, then one more conv)."""

    def __init__(self, in_channels: int, channels: int, mask_dim: int, num_levels: int,
                 norm: str, upsample: int = 1):
        super().__init__()
        self.refine = nn.ModuleList(
            Conv2d(in_channels, channels, 3, padding=1, bias=not norm,
                   norm=get_norm(norm, channels), activation=F.relu)
            for _ in range(num_levels)
        )
        self.upsample = upsample
        convs = 2 if upsample > 1 else 1
        self.tower = nn.Sequential(
            *(Conv2d(channels, channels, 3, padding=1, bias=not norm,
                     norm=get_norm(norm, channels), activation=F.relu) for _ in range(convs)),
            Conv2d(channels, mask_dim, 1),
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.refine[0](features[0])
        for refine, f in zip(self.refine[1:], features[1:]):
            x = x + F.interpolate(refine(f), size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)
        if self.upsample > 1:
            x = self.tower[0](x)
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
            return self.tower[1:](x)
        return self.tower(x)


@VCLR_HEAD_REGISTRY.register()
class VCLRHead(nn.Module):
    """Dense head over FPN levels: objectness, boxes, quality, embeddings and mask coefficients."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: dict[str, ShapeSpec],
        in_features: list[str],
        num_convs: int = 4,
        norm: str = "GN",
        prior_prob: float = 0.01,
        embed_dim: int = 256,
        embed_norm: str = "LN",
        quality: str = "none",
        mask_on: bool = True,
        mask_in_features: list[str] = ("p3", "p4", "p5"),
        mask_dim: int = 32,
        mask_branch_channels: int = 128,
        mask_upsample: int = 1,
    ):
        """
        Args:
            input_shape: FPN output shapes by name.
            in_features: FPN levels the head runs on, finest first.
            num_convs: 3x3 conv + norm + ReLU layers in each of the two towers.
            norm: detectron2 norm name for the towers ("GN" = GroupNorm with 32 groups).
            prior_prob: initial objectness probability.
            embed_dim: D, the object-embedding dimension.
            embed_norm: "LN": q is layer-normalised over channels and read linearly by the
                predictors; "none": q is unnormalised and the predictors read ReLU(q).
            quality: "none", "iou" or "centerness".
            mask_on: build the mask branch and the mask coefficients.
            mask_in_features: FPN levels fused by the mask branch, finest first.
            mask_dim: M, mask coefficients per location.
            mask_branch_channels: channels inside the mask branch.
            mask_upsample: the mask features are upsampled by this factor inside the branch
                (1 or 2): their stride is the finest mask level's divided by it.
        """
        super().__init__()
        if quality not in ("none", "iou", "centerness"):
            raise ValueError(f"MODEL.VCLR_HEAD.QUALITY={quality!r}: use none, iou or centerness")
        if embed_norm not in ("LN", "none"):
            raise ValueError(f"MODEL.VCLR_HEAD.EMBED_NORM={embed_norm!r}: use LN or none")
        missing = [f for f in [*in_features, *(mask_in_features if mask_on else [])]
                   if f not in input_shape]
        if missing:
            raise ValueError(
                f"Head features {missing} are not produced by the backbone "
                f"(it gives {list(input_shape)})"
            )
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"Head levels {in_features} must share one channel count: {channels}")
        in_channels = channels.pop()
        self.in_features = list(in_features)
        self.strides = [input_shape[f].stride for f in in_features]
        self.quality = quality
        self.mask_on = mask_on

        self.cls_tower = _tower(in_channels, in_channels, num_convs, norm)
        self.box_tower = _tower(in_channels, in_channels, num_convs, norm)
        self.embed = Conv2d(2 * in_channels, embed_dim, 1)
        self.embed_norm = LayerNorm2d(embed_dim) if embed_norm == "LN" else None
        self.objectness = Conv2d(embed_dim, 1, 1)
        self.box_pred = Conv2d(embed_dim, 4, 1)
        self.box_scales = nn.ModuleList(Scale() for _ in in_features)
        self.quality_pred = Conv2d(embed_dim, 1, 1) if quality != "none" else None
        if mask_on:
            self.mask_in_features = list(mask_in_features)
            if mask_upsample not in (1, 2):
                raise ValueError(f"MODEL.VCLR_HEAD.MASK_UPSAMPLE={mask_upsample}: use 1 or 2")
            self.mask_stride = input_shape[mask_in_features[0]].stride // mask_upsample
            self.mask_coeff = Conv2d(embed_dim, mask_dim, 1)
            self.mask_branch = MaskFeatureBranch(
                in_channels, mask_branch_channels, mask_dim, len(mask_in_features), norm,
                upsample=mask_upsample,
            )
        else:
            self.mask_coeff = None
            self.mask_branch = None
        self._init_weights(prior_prob)

    def _init_weights(self, prior_prob: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
        if self.mask_branch is not None:
            for m in self.mask_branch.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_uniform_(m.weight, a=1)
        nn.init.normal_(self.embed.weight, std=math.sqrt(1.0 / self.embed.in_channels))
        nn.init.constant_(self.objectness.bias, -math.log((1 - prior_prob) / prior_prob))
        # A box of about 2 strides a side at init: relu(1) * stride per side.
        nn.init.constant_(self.box_pred.bias, 1.0)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]) -> dict:
        h = cfg.MODEL.VCLR_HEAD
        return {
            "input_shape": input_shape,
            "in_features": list(h.IN_FEATURES),
            "num_convs": h.NUM_CONVS,
            "norm": h.NORM,
            "prior_prob": h.PRIOR_PROB,
            "embed_dim": h.EMBED_DIM,
            "embed_norm": h.EMBED_NORM,
            "quality": h.QUALITY,
            "mask_on": cfg.MODEL.MASK_ON,
            "mask_in_features": list(h.MASK_IN_FEATURES),
            "mask_dim": h.MASK_DIM,
            "mask_branch_channels": h.MASK_BRANCH_CHANNELS,
            "mask_upsample": h.MASK_UPSAMPLE,
        }

    @staticmethod
    def _flatten(x: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) -> (N, H*W, K)."""
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])

    def forward(self, features: dict[str, torch.Tensor]) -> HeadOutputs:
        """
        Args:
            features: FPN maps by name, each (N, C, H_l, W_l).

        Returns:
            HeadOutputs of the batch (boxes in input-pixel coordinates).
        """
        obj, boxes, emb, coeffs, qual, locs, strides, sizes = [], [], [], [], [], [], [], []
        for name, stride, scale in zip(self.in_features, self.strides, self.box_scales):
            x = features[name]
            q = self.embed(torch.cat([self.cls_tower(x), self.box_tower(x)], dim=1))
            if self.embed_norm is not None:
                q = self.embed_norm(q)
                hidden = q
            else:
                hidden = F.relu(q)
            n, _, h, w = x.shape
            loc = self._locations(h, w, stride, x.device, x.dtype)
            ltrb = F.relu(scale(self.box_pred(hidden))) * stride
            ltrb = self._flatten(ltrb)
            boxes.append(torch.cat([loc - ltrb[..., :2], loc + ltrb[..., 2:]], dim=-1))
            obj.append(self._flatten(self.objectness(hidden))[..., 0])
            emb.append(self._flatten(q))
            if self.mask_coeff is not None:
                coeffs.append(self._flatten(self.mask_coeff(hidden)))
            if self.quality_pred is not None:
                qual.append(self._flatten(self.quality_pred(hidden))[..., 0])
            locs.append(loc)
            strides.append(torch.full((h * w,), float(stride), device=x.device, dtype=x.dtype))
            sizes.append(h * w)
        mask_features = None
        if self.mask_branch is not None:
            mask_features = self.mask_branch([features[f] for f in self.mask_in_features])
        return HeadOutputs(
            objectness=torch.cat(obj, dim=1),
            boxes=torch.cat(boxes, dim=1),
            embeddings=torch.cat(emb, dim=1),
            mask_coeffs=torch.cat(coeffs, dim=1) if coeffs else None,
            quality=torch.cat(qual, dim=1) if qual else None,
            mask_features=mask_features,
            locations=torch.cat(locs, dim=0),
            strides=torch.cat(strides, dim=0),
            level_sizes=sizes,
        )

    @staticmethod
    def _locations(h: int, w: int, stride: int, device, dtype) -> torch.Tensor:
        """(h*w, 2) centres (x, y) of the cells of an (h, w) map of the given stride."""
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)

    def mask_logits(self, coeffs: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            coeffs: (P, M) coefficients of P locations of one image.
            mask_features: (M, Hm, Wm) that image's mask features.

        Returns:
            (P, Hm, Wm) mask logits at stride ``self.mask_stride``.
        """
        return torch.einsum("pm,mhw->phw", coeffs, mask_features)


def build_vclr_head(cfg, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The head named by ``MODEL.VCLR_HEAD.NAME`` in ``VCLR_HEAD_REGISTRY``."""
    name = cfg.MODEL.VCLR_HEAD.NAME
    if name not in VCLR_HEAD_REGISTRY:
        raise ValueError(f"MODEL.VCLR_HEAD.NAME={name!r} is not in VCLR_HEAD_REGISTRY "
                         f"({sorted(k for k, _ in VCLR_HEAD_REGISTRY)})")
    return VCLR_HEAD_REGISTRY.get(name)(cfg, input_shape)
