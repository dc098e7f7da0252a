"""torchvision-layout ResNet checkpoints -> detectron2 ResNet names.

torchvision's ResNet (and the self-supervised methods that train it: DINO, MoCo v2/v3, CLoVE,
PixPro, ...) names its trunk ``conv1``, ``bn1``, ``layer{1-4}.{block}.{conv,bn}{1-3}`` and
``layer{1-4}.0.downsample.{0,1}``; detectron2's ResNet names the same tensors ``stem.conv1``,
``stem.conv1.norm``, ``res{2-5}.{block}.conv{1-3}[.norm]`` and ``res{2-5}.0.shortcut[.norm]``.
A ResNet already in detectron2's names (e.g. the official v-CLR code's
``dino_RN50_pretrain_d2_format.pkl``, or a vclr_d2 checkpoint) is checked and re-prefixed.
Weights are copied unchanged, so the model must see what torchvision's did: RGB in [0, 1]
normalised by the ImageNet mean and std (in detectron2's 0-255 units below), and the stride in
the 3x3 convolution (``MODEL.RESNETS.STRIDE_IN_1X1 False``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .io import Report, choose_prefix, find_prefixes

__all__ = ["IMAGENET_PIXEL_MEAN", "IMAGENET_PIXEL_STD", "convert_resnet"]

# torchvision's normalisation, in detectron2's units (RGB, 0-255).
IMAGENET_PIXEL_MEAN = (123.675, 116.28, 103.53)
IMAGENET_PIXEL_STD = (58.395, 57.12, 57.375)

_NORM_PARAMS = ("weight", "bias", "running_mean", "running_var")
_STEM = re.compile(r"^(conv1\.weight|bn1\.(weight|bias|running_mean|running_var))$")
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv([1-3])\.weight"
                    r"|bn([1-3])\.(weight|bias|running_mean|running_var)"
                    r"|downsample\.0\.weight"
                    r"|downsample\.1\.(weight|bias|running_mean|running_var))$")
_D2_KEY = re.compile(r"^(stem\.conv1|res[2-5]\.\d+\.(conv[1-3]|shortcut))"
                     r"(\.weight|\.norm\.(weight|bias|running_mean|running_var))$")
# detectron2 depth by (blocks per stage, bottleneck blocks?)
_DEPTHS = {((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
           ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152}


def _rename(key: str) -> str | None:
    """The detectron2 name of a torchvision trunk key, None for keys of no trunk tensor."""
    if _STEM.match(key):
        return "stem.conv1.weight" if key == "conv1.weight" else "stem.conv1.norm." + key[4:]
    m = _BLOCK.match(key)
    if m is None:
        return None
    stage, block, rest = f"res{int(m.group(1)) + 1}", m.group(2), m.group(3)
    if m.group(4):
        return f"{stage}.{block}.conv{m.group(4)}.weight"
    if m.group(5):
        return f"{stage}.{block}.conv{m.group(5)}.norm.{m.group(6)}"
    if rest == "downsample.0.weight":
        return f"{stage}.{block}.shortcut.weight"
    return f"{stage}.{block}.shortcut.norm.{m.group(7)}"


def _expected_keys(blocks: list[int], bottleneck: bool, shortcuts: set[tuple[int, int]]
                   ) -> list[str]:
    keys = ["stem.conv1.weight"] + [f"stem.conv1.norm.{p}" for p in _NORM_PARAMS]
    convs = (1, 2, 3) if bottleneck else (1, 2)
    for s, n in enumerate(blocks):
        for b in range(n):
            names = [f"conv{c}" for c in convs]
            if (s, b) in shortcuts or (b == 0 and (bottleneck or s > 0)):
                names.append("shortcut")
            for name in names:
                keys.append(f"res{s + 2}.{b}.{name}.weight")
                keys += [f"res{s + 2}.{b}.{name}.norm.{p}" for p in _NORM_PARAMS]
    return keys


def convert_resnet(state: Mapping[str, torch.Tensor], *, prefix: str | None = None,
                   source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], Report]:
    """Rename a torchvision-layout ResNet trunk to detectron2's ResNet names.

    Args:
        state: a flat state dict (``unwrap_state_dict``'s output).
        prefix: the trunk's key prefix; None finds it (``find_prefixes``/``choose_prefix``).
        source: the file name, for messages.

    Returns:
        (detectron2 ResNet state dict, without the model's ``backbone.bottom_up.`` prefix;
        a ``Report`` whose notes give the ``MODEL.RESNETS`` keys that build this trunk and
        the input normalisation the weights expect). Classifier / projection heads under the
        prefix (``fc.*``; ``linear.*`` in detectron2's layout), other networks and buffers
        outside it, and ``num_batches_tracked`` are dropped and listed in the report.

    Raises:
        ValueError: no trunk found; keys under the prefix that are neither trunk nor ``fc``
            (named: e.g. a deep stem ``conv1.0.weight``); trunk tensors missing (named); or
            block counts of no detectron2 depth.
    """
    candidates = find_prefixes(state, "conv1.weight", "layer1.0.conv1.weight")
    d2_layout = not candidates
    if d2_layout:
        candidates = find_prefixes(state, "stem.conv1.weight", "res2.0.conv1.weight")
    prefix = choose_prefix(candidates, prefix, what="ResNet", source=source,
                           example="layer1.0.conv1.weight")
    report = Report(source=source, prefix=prefix)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if not key.startswith(prefix):
            report.dropped.append(key)
            continue
        local = key[len(prefix):]
        if local.endswith("num_batches_tracked") or local.startswith(("fc.", "linear.")):
            report.dropped.append(key)
            continue
        name = (local if _D2_KEY.match(local) else None) if d2_layout else _rename(local)
        if name is None:
            unknown.append(key)
        else:
            out[name] = value
    if unknown:
        layout = "detectron2" if d2_layout else "torchvision"
        raise ValueError(f"{source}: {len(unknown)} keys under {prefix!r} are not understood as "
                         f"a {layout}-layout ResNet trunk: {unknown[:10]}")

    blocks = []
    for stage in range(2, 6):
        ids = {int(k.split(".")[1]) for k in out if k.startswith(f"res{stage}.")}
        if ids != set(range(len(ids))) or not ids:
            raise ValueError(f"{source}: stage layer{stage - 1} has blocks {sorted(ids)}; "
                             "expected 0..n-1")
        blocks.append(len(ids))
    bottleneck = "res2.0.conv3.weight" in out
    shortcuts = {(int(k[3]) - 2, int(k.split(".")[1])) for k in out if ".shortcut." in k}
    missing = [k for k in _expected_keys(blocks, bottleneck, shortcuts) if k not in out]
    if missing:
        raise ValueError(f"{source}: the ResNet trunk under {prefix!r} lacks {len(missing)} "
                         f"tensors (detectron2 names): {missing[:10]}")
    depth = _DEPTHS.get((tuple(blocks), bottleneck))
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise ValueError(f"{source}: {kind} blocks per stage {blocks} match no detectron2 "
                         "ResNet depth (18, 34, 50, 101, 152)")
    report.converted = len(out)
    report.notes.append(_config_note(out, depth, bottleneck))
    return out, report


def _config_note(out: Mapping[str, torch.Tensor], depth: int, bottleneck: bool) -> str:
    res2_out = out[f"res2.0.conv{3 if bottleneck else 2}.weight"].shape[0]
    keys = [f"MODEL.RESNETS.DEPTH {depth}", "MODEL.RESNETS.STRIDE_IN_1X1 False",
            f"MODEL.RESNETS.STEM_OUT_CHANNELS {out['stem.conv1.weight'].shape[0]}",
            f"MODEL.RESNETS.RES2_OUT_CHANNELS {res2_out}"]
    if bottleneck:
        width, per_group = out["res2.0.conv2.weight"].shape[:2]
        groups = width // per_group
        keys += [f"MODEL.RESNETS.NUM_GROUPS {groups}",
                 f"MODEL.RESNETS.WIDTH_PER_GROUP {width // groups}"]
    return ("build with: " + " ".join(keys) + "; input as torchvision's: INPUT.FORMAT RGB "
            f"MODEL.PIXEL_MEAN {list(IMAGENET_PIXEL_MEAN)} "
            f"MODEL.PIXEL_STD {list(IMAGENET_PIXEL_STD)}")
