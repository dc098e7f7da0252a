"""``convert_file``: a pretraining checkpoint file -> the file a vclr_d2 backbone loads."""

from __future__ import annotations

from .convnext import convert_convnext
from .io import (
    Report,
    read_checkpoint,
    save_detectron2_checkpoint,
    save_state_dict,
    unwrap_state_dict,
)
from .resnet import convert_resnet

__all__ = ["ARCHS", "convert_file"]

ARCHS = ("resnet", "convnext")
# Where the ResNet trunk sits in a vclr_d2 model (student; the teacher starts as a copy of it).
RESNET_MODEL_PREFIX = "backbone.bottom_up."
_OUTPUTS = {"resnet": (".pth", ".pkl"), "convnext": (".safetensors", ".pth")}


def convert_file(source: str, output: str, *, arch: str = "resnet", name: str | None = None,
                 key: str | None = None, prefix: str | None = None,
                 trust_pickle: bool = False) -> Report:
    """Convert ``source`` and write ``output``.

    Args:
        arch: ``"resnet"``: a torchvision-layout ResNet -> a detectron2 checkpoint (``.pth`` or
            ``.pkl``) with the trunk under ``backbone.bottom_up.``, for ``MODEL.WEIGHTS``;
            ``"convnext"``: an official / FCMAE / timm ConvNeXt -> a timm state dict
            (``.safetensors`` or ``.pth``) for ``MODEL.CONVNEXT.WEIGHTS``.
        name: the timm ConvNeXt name (``arch="convnext"`` only, required there).
        key: the checkpoint entry holding the weights (``unwrap_state_dict``); None finds it.
        prefix: the backbone's key prefix; None finds it.
        trust_pickle: allow reading files that pickle more than tensors (``read_checkpoint``).

    Returns:
        the conversion's ``Report``.
    """
    if arch not in ARCHS:
        raise ValueError(f"--arch {arch!r}: must be one of {list(ARCHS)}")
    endings = _OUTPUTS[arch]
    if not output.endswith(endings):
        raise ValueError(f"output {output}: --arch {arch} writes {' or '.join(endings)} files")
    if arch == "convnext" and not name:
        raise ValueError("--arch convnext needs --name, the timm model (MODEL.CONVNEXT.NAME)")
    state, wrapper = unwrap_state_dict(read_checkpoint(source, trust_pickle=trust_pickle), key,
                                       source=source)
    if arch == "resnet":
        converted, report = convert_resnet(state, prefix=prefix, source=source)
        save_detectron2_checkpoint(
            {RESNET_MODEL_PREFIX + k: v for k, v in converted.items()}, output,
            author=f"vclr_d2.checkpoint from {source}")
        report.notes.append(f"use with: MODEL.WEIGHTS {output}")
    else:
        converted, report = convert_convnext(state, name, prefix=prefix, source=source)
        save_state_dict(converted, output)
        report.notes[-1] = report.notes[-1].replace("<output>", output)
    report.wrapper = wrapper
    return report
