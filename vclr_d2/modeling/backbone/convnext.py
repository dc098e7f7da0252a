"""ConvNeXt (timm) trunk as a detectron2 ``Backbone``, and the ConvNeXt + FPN builder.

The trunk keeps timm's own module names (``stem``, ``stages.i``), so a timm state dict loads
into it key for key. Stages are named like detectron2's ResNet outputs:
``res2``..``res5`` = ``stages.0``..``stages.3`` with strides 4, 8, 16, 32.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence

import timm
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN
from torch import nn

from .fpn import build_fpn_on

__all__ = ["ConvNeXt", "build_convnext_fpn_backbone", "load_convnext_weights"]

logger = logging.getLogger(__name__)

STAGE_NAMES = ("res2", "res3", "res4", "res5")
# Prefixes under which a trunk's keys are found in the checkpoints we accept: a timm state
# dict (none), a detectron2 checkpoint of a ConvNeXt-FPN model, a DDP-wrapped state dict.
_KEY_PREFIXES = ("", "backbone.bottom_up.", "module.", "module.backbone.bottom_up.")


class ConvNeXt(Backbone):
    """A timm ConvNeXt without its classifier head, returning the requested stages.

    Stages after the last requested one are not built, so every parameter is used.
    """

    def __init__(
        self,
        name: str = "convnext_tiny",
        *,
        out_features: Sequence[str] = ("res3", "res4", "res5"),
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = None,
        conv_mlp: bool | None = None,
        freeze_at: int = 0,
        pretrained_download: bool = False,
    ):
        """
        Args:
            name: any timm ConvNeXt model name (``convnext_atto`` ... ``convnext_xlarge``).
            out_features: stage names to return, a subset of ``res2``..``res5``.
            drop_path_rate: stochastic depth rate of the trunk.
            layer_scale_init: initial value of the blocks' layer-scale gammas (timm's
                ``ls_init_value``); None or a negative value keeps timm's choice for ``name``
                (1e-6 for ConvNeXt, no layer scale for ConvNeXt-V2, whose weights have none).
            conv_mlp: the blocks' MLPs as 1x1 convolutions (True) or linear layers on
                channels-last tensors (False); None keeps timm's choice for ``name`` (True for
                atto to nano). Weights load into either (1x1 kernels and matrices are
                reshaped).
            freeze_at: 0 freezes nothing, 1 the stem, k in 2..5 the stem and res2..res{k}.
            pretrained_download: let timm download its ImageNet weights (needs the internet).
        """
        super().__init__()
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.CONVNEXT.OUT_FEATURES={list(out_features)}: each entry must be one of "
                f"{list(STAGE_NAMES)}"
            )
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"MODEL.CONVNEXT.FREEZE_AT={freeze_at}: must be in 0..5")
        if not name.startswith("convnext"):
            raise ValueError(f"MODEL.CONVNEXT.NAME={name!r} is not a timm ConvNeXt model")
        model = timm.create_model(
            name, pretrained=pretrained_download, num_classes=0, drop_path_rate=drop_path_rate,
            **({} if layer_scale_init is None or layer_scale_init < 0
               else {"ls_init_value": layer_scale_init}),
            **({} if conv_mlp is None else {"conv_mlp": conv_mlp}),
        )
        num_stages = max(STAGE_NAMES.index(f) for f in out_features) + 1
        self.name = name
        self.stem = model.stem
        self.stages = nn.ModuleList(list(model.stages)[:num_stages])
        self._out_features = [f for f in STAGE_NAMES if f in out_features]
        self._out_feature_strides = {}
        self._out_feature_channels = {}
        for info, stage in zip(model.feature_info, STAGE_NAMES):
            self._out_feature_strides[stage] = int(info["reduction"])
            self._out_feature_channels[stage] = int(info["num_chs"])
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients to the stem (``freeze_at >= 1``) and to res2..res{freeze_at}."""
        frozen = [self.stem] if freeze_at >= 1 else []
        frozen += list(self.stages)[: max(freeze_at - 1, 0)]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x: (N, 3, H, W) normalised images.

        Returns:
            dict: stage name -> (N, C_stage, H / stride, W / stride) for each out feature.
        """
        x = self.stem(x)
        outputs = {}
        for stage_name, stage in zip(STAGE_NAMES, self.stages):
            x = stage(x)
            if stage_name in self._out_features:
                outputs[stage_name] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(
                channels=self._out_feature_channels[f], stride=self._out_feature_strides[f]
            )
            for f in self._out_features
        }


def _read_checkpoint(path: str) -> Mapping[str, torch.Tensor]:
    """Read a state dict from a timm (.pth/.bin/.safetensors) or detectron2 (.pth/.pkl) file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ConvNeXt weights file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            data = load_file(path)
        elif path.endswith(".pkl"):
            with open(path, "rb") as f:
                data = pickle.load(f, encoding="latin1")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"Cannot read ConvNeXt weights from {path}: {e}") from e
    for key in ("model", "state_dict"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a state dict")
    return {k: torch.as_tensor(v) for k, v in data.items()}


def _mlp_layout_only(a: Sequence[int], b: Sequence[int]) -> bool:
    """Shapes (O, I, 1, 1) and (O, I), in either order: an MLP weight as a 1x1 conv or a
    matrix."""
    a, b = tuple(a), tuple(b)
    return a != b and (a[2:] == (1, 1) and a[:2] == b or b[2:] == (1, 1) and b[:2] == a)


def load_convnext_weights(trunk: ConvNeXt, path: str) -> None:
    """Load trunk weights from ``path`` into ``trunk``, exactly or not at all.

    Accepts a timm ConvNeXt state dict (keys ``stem.*``, ``stages.*``; the classifier head is
    ignored) or a detectron2 checkpoint of a ConvNeXt-FPN model (keys
    ``backbone.bottom_up.*``). Raises ``ValueError`` naming the file when a trunk key is
    missing or has another shape (e.g. weights of another ConvNeXt size).
    """
    state = _read_checkpoint(path)
    prefix = next((p for p in _KEY_PREFIXES if f"{p}stem.0.weight" in state), None)
    if prefix is None:
        raise ValueError(
            f"{path} holds no ConvNeXt trunk weights: expected a key 'stem.0.weight' (timm) or "
            f"'backbone.bottom_up.stem.0.weight' (detectron2); first keys: {list(state)[:5]}"
        )
    own = trunk.state_dict()
    loaded, missing, mismatched = {}, [], []
    for key, value in own.items():
        src = state.get(prefix + key)
        if src is None:
            missing.append(key)
        elif src.numel() == value.numel() and _mlp_layout_only(src.shape, value.shape):
            loaded[key] = src.reshape(value.shape)  # 1x1 conv <-> linear MLP (conv_mlp)
        elif tuple(src.shape) != tuple(value.shape):
            mismatched.append(f"{key}: file {tuple(src.shape)} vs model {tuple(value.shape)}")
        else:
            loaded[key] = src
    if missing or mismatched:
        raise ValueError(
            f"ConvNeXt weights in {path} do not fit {trunk.name}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(mismatched)} shape mismatches "
            f"{mismatched[:3]}"
        )
    trunk.load_state_dict(loaded, strict=True)
    logger.info("Loaded %d ConvNeXt trunk tensors from %s", len(loaded), path)


def _conv_mlp_value(value: str) -> bool | None:
    choices = {"": None, "true": True, "false": False}
    if str(value).lower() not in choices:
        raise ValueError(f"MODEL.CONVNEXT.CONV_MLP={value!r}: use 'true', 'false' or ''")
    return choices[str(value).lower()]


@BACKBONE_REGISTRY.register()
def build_convnext_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ConvNeXt trunk (``MODEL.CONVNEXT``) with an FPN (``MODEL.FPN``) on top.

    ``MODEL.FPN.TOP_BLOCK`` adds P6/P7 (``"p6p7"``), a max-pooled P6 (``"maxpool"``) or nothing.
    """
    if input_shape.channels != 3:
        raise ValueError(f"ConvNeXt takes 3-channel images, got {input_shape.channels}")
    c = cfg.MODEL.CONVNEXT
    trunk = ConvNeXt(
        c.NAME,
        out_features=c.OUT_FEATURES,
        drop_path_rate=c.DROP_PATH_RATE,
        layer_scale_init=c.LAYER_SCALE_INIT,
        conv_mlp=_conv_mlp_value(c.CONV_MLP),
        freeze_at=c.FREEZE_AT,
        pretrained_download=c.PRETRAINED_DOWNLOAD and not c.WEIGHTS,
    )
    if c.WEIGHTS:
        load_convnext_weights(trunk, c.WEIGHTS)
    return build_fpn_on(cfg, trunk, "MODEL.CONVNEXT.OUT_FEATURES")
