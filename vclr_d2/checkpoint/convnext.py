"""ConvNeXt checkpoints of the official layouts -> the timm state dict ``MODEL.CONVNEXT.WEIGHTS``
reads.

Three layouts are understood:

- timm (``stem.0.weight``, ``stages.i.blocks.j...``): kept as is, prefix removed;
- the official ConvNeXt / ConvNeXt V2 repositories (``downsample_layers.i``, ``stages.i.j``
  with ``dwconv``, ``pwconv1/2``, ``grn.gamma/beta``, V1's ``gamma``): renamed by timm's own
  ``checkpoint_filter_fn``;
- ConvNeXt V2's FCMAE pretraining checkpoints, whose encoder (under ``encoder.``) is a sparse
  MinkowskiEngine network: ``*.kernel`` tensors of shape (k*k, C_in, C_out) (convolutions) or
  (k*k, C) (depthwise), ``*.ln.*`` layer norms and ``*.linear.*`` linears, biases and GRN
  parameters of shape (1, C). They are first made dense, with the kernel offset ``i`` at
  (row ``i % k``, column ``i // k``) as ConvNeXt V2's own fine-tuning code reads them, then
  renamed as the official layout. The decoder, mask token and prediction head are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import timm
import torch

from .io import Report, choose_prefix

__all__ = ["convert_convnext", "densify_sparse_convnext"]

_TIMM_ANCHOR, _OFFICIAL_ANCHOR = "stem.0.weight", "downsample_layers.0.0.weight"


def densify_sparse_convnext(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MinkowskiEngine (FCMAE) names and shapes -> the official dense ConvNeXt V2 ones.

    Raises:
        ValueError: a ``kernel`` whose first dimension is not a square (names the key).
    """
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[-1] == "kernel":
            k = math.isqrt(value.shape[0])
            if k * k != value.shape[0] or value.dim() not in (2, 3):
                raise ValueError(f"{key}: sparse kernel of shape {tuple(value.shape)}, expected "
                                 "(k*k, C) or (k*k, C_in, C_out)")
            # offset i = column * k + row -> (..., row, column)
            if value.dim() == 3:  # (k*k, C_in, C_out) -> (C_out, C_in, k, k)
                dense = value.reshape(k, k, *value.shape[1:]).permute(3, 2, 1, 0)
            else:  # depthwise (k*k, C) -> (C, 1, k, k)
                dense = value.reshape(k, k, value.shape[1]).permute(2, 1, 0)[:, None]
            out[".".join(parts[:-1] + ["weight"])] = dense.contiguous()
            continue
        parts = [p for p in parts if p not in ("ln", "linear")]
        if parts[-1] == "bias" and value.dim() == 2 and value.shape[0] == 1:
            value = value.reshape(-1)
        out[".".join(parts)] = value
    return out


def convert_convnext(state: Mapping[str, torch.Tensor], name: str, *, prefix: str | None = None,
                     source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], Report]:
    """A ConvNeXt trunk in any understood layout -> timm's names for ``timm.create_model(name)``.

    Args:
        state: a flat state dict (``unwrap_state_dict``'s output).
        name: the timm model the weights are for (``MODEL.CONVNEXT.NAME``), e.g.
            ``convnextv2_tiny`` for a ConvNeXt V2 checkpoint.
        prefix: the trunk's key prefix; None finds it (``encoder.`` in FCMAE files).

    Returns:
        (timm trunk state dict: ``stem.*`` and ``stages.*``, a ``Report``). Keys outside the
        prefix (decoder, mask token...) and the classifier head / final norm are dropped and
        listed.

    Raises:
        ValueError: ``name`` is no timm ConvNeXt; no trunk found; keys not understood (named);
            trunk tensors missing or of other shapes than ``name``'s (named).
    """
    if not name.startswith("convnext"):
        raise ValueError(f"--name {name!r} is not a timm ConvNeXt model")
    keys = set(state)
    candidates = sorted({k[: -len(a)] for a in (_TIMM_ANCHOR, _OFFICIAL_ANCHOR)
                         for k in keys if k.endswith(a)}, key=lambda p: (len(p), p))
    candidates = [p for p in candidates if not p or p.endswith(".")]
    prefix = choose_prefix(candidates, prefix, what="ConvNeXt", source=source,
                           example=_OFFICIAL_ANCHOR)
    report = Report(source=source, prefix=prefix)
    local = {}
    for key, value in state.items():
        if key.startswith(prefix):
            local[key[len(prefix):]] = value
        else:
            report.dropped.append(key)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    if _TIMM_ANCHOR not in local:
        # the classifier and the final norm (official names) are no part of the trunk
        for key in [k for k in local if k.startswith(("head.", "norm."))]:
            report.dropped.append(prefix + key)
            del local[key]
        try:
            local = timm.models.convnext.checkpoint_filter_fn(densify_sparse_convnext(local),
                                                              model)
        except KeyError as e:  # a 2-D tensor of no name the model has
            raise ValueError(f"{source} (prefix {prefix!r}) is not a {name} trunk: key "
                             f"{e.args[0]!r} (timm's name) is not understood") from e
        except RuntimeError as e:  # a Linear weight that cannot take the model's shape
            raise ValueError(f"{source} (prefix {prefix!r}) is not a {name} trunk: tensors of "
                             f"other shapes than {name}'s ({e})") from e
    reference = {k: v for k, v in model.state_dict().items() if k.startswith(("stem.", "stages."))}
    out, unknown, mismatched = {}, [], {}
    for key, value in local.items():
        if key.startswith(("head.", "norm_pre.")):
            report.dropped.append(prefix + key)
        elif key not in reference:
            unknown.append(key)
        elif tuple(value.shape) != tuple(reference[key].shape):
            mismatched[key] = f"{key}: {tuple(value.shape)} vs {tuple(reference[key].shape)}"
        else:
            out[key] = value
    missing = [k for k in reference if k not in out and k not in mismatched]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys not understood (after renaming): {unknown[:10]}")
    if mismatched:
        problems.append(f"{len(mismatched)} tensors of other shapes than {name}'s: "
                        f"{list(mismatched.values())[:5]}")
    if missing:
        problems.append(f"{len(missing)} {name} tensors missing: {missing[:10]}")
    if problems:
        raise ValueError(f"{source} (prefix {prefix!r}) is not a {name} trunk: "
                         + "; ".join(problems))
    report.converted = len(out)
    report.notes.append(f"use with: MODEL.CONVNEXT.NAME {name} MODEL.CONVNEXT.WEIGHTS <output>")
    return out, report

