"""Optimizer of v-CLR: AdamW (or SGD) with a backbone learning-rate multiplier, no weight decay
on normalisation layers, and gradient clipping from ``SOLVER.CLIP_GRADIENTS``.

``CLIP_TYPE`` "value" and "norm" (per parameter) are detectron2's; "full_model" clips the norm
of all gradients together, as DETR-style training (and v-CLR, max norm 0.1) does.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

__all__ = ["build_optimizer", "optimizer_param_groups", "with_full_model_clipping"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def optimizer_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    backbone_multiplier: float,
    backbone_prefix: str = "backbone.bottom_up.",
) -> list[dict]:
    """Parameter groups by (lr, weight decay): parameters under ``backbone_prefix`` get
    ``base_lr * backbone_multiplier``; parameters of normalisation layers get
    ``weight_decay_norm``. Parameters without ``requires_grad`` (the EMA teacher, frozen
    stages) are left out."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = defaultdict(list)
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            lr = base_lr * (backbone_multiplier if full.startswith(backbone_prefix) else 1.0)
            wd = weight_decay_norm if isinstance(module, _NORMS) else weight_decay
            groups[(lr, wd)].append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def with_full_model_clipping(optimizer: type[torch.optim.Optimizer], max_norm: float,
                             norm_type: float = 2.0) -> type[torch.optim.Optimizer]:
    """A subclass of ``optimizer`` whose ``step`` first clips the norm of all gradients."""

    def step(self, closure=None):
        params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
        return optimizer.step(self, closure)

    return type(f"{optimizer.__name__}FullModelGradientClip", (optimizer,), {"step": step})


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` ("ADAMW" or "SGD") over ``optimizer_param_groups``."""
    s = cfg.SOLVER
    groups = optimizer_param_groups(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        backbone_multiplier=s.BACKBONE_MULTIPLIER,
    )
    name = s.OPTIMIZER.upper()
    if name == "ADAMW":
        cls, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        cls, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM, "nesterov": s.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={s.OPTIMIZER!r}: use ADAMW or SGD")
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        cls = with_full_model_clipping(cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    elif clip.ENABLED and clip.CLIP_TYPE not in ("value", "norm"):
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r}: use "
                         "full_model, norm or value")
    else:
        cls = maybe_add_gradient_clipping(cfg, cls)
    return cls(groups, lr=s.BASE_LR, **kwargs)
