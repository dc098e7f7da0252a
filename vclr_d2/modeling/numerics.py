"""Numerics of training that the model's losses and matchers share.

- ``float32_outside_autocast``: a decorator that runs a loss or matching function with autocast
  off and its floating-point tensor arguments (also those inside dataclasses such as
  ``HeadOutputs``) in float32, so that ``SOLVER.AMP.ENABLED`` lowers the precision of the
  backbone and head only;
- ``check_finite_predictions``: names non-finite predictions before a matcher hands them to
  scipy (whose own error names nothing);
- ``mean_count_over_processes``: the per-process share of a count summed over all training
  processes, so that a loss normalised by it gives, once DDP averages gradients, the gradient of
  the loss of the whole batch of all processes (as DETR normalises by the number of targets).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = ["check_finite_predictions", "float32_outside_autocast", "mean_count_over_processes"]

F = TypeVar("F", bound=Callable[..., Any])

_AUTOCAST_DEVICES = ("cpu", "cuda")


def _to_float32(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.replace(x, **{f.name: _to_float32(getattr(x, f.name))
                                         for f in dataclasses.fields(x) if f.init})
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float32(v) for v in x)
    return x


def float32_outside_autocast(fn: F) -> F:
    """Run ``fn`` with autocast disabled and its floating-point tensor arguments in float32.

    Outside autocast (the default, ``SOLVER.AMP.ENABLED False``) it only calls ``fn``: float32
    tensors are returned as they are by ``.float()``.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        active = [d for d in _AUTOCAST_DEVICES if torch.is_autocast_enabled(d)]
        if not active:
            return fn(*args, **kwargs)
        args = _to_float32(args)
        kwargs = {k: _to_float32(v) for k, v in kwargs.items()}
        with _autocast_off(active):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _autocast_off:
    def __init__(self, devices: list[str]):
        self.contexts = [torch.autocast(device_type=d, enabled=False) for d in devices]

    def __enter__(self):
        for c in self.contexts:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.contexts):
            c.__exit__(*exc)


def check_finite_predictions(**predictions: torch.Tensor) -> None:
    """Raise ``FloatingPointError`` naming each prediction (keyword name) that holds NaN or
    infinite values, with how many: the model has diverged."""
    flags = torch.stack([torch.isfinite(t).all() for t in predictions.values()])
    if bool(flags.all()):  # one device synchronisation when everything is finite
        return
    bad = []
    for name, t in predictions.items():
        n = int((~torch.isfinite(t)).sum())
        if n:
            bad.append(f"{name}: {n} of {t.numel()} values")
    if bad:
        raise FloatingPointError(
            "non-finite predictions reached the matcher (" + "; ".join(bad) + "): training has "
            "diverged; lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS")


def mean_count_over_processes(count: float, device: torch.device | str) -> float:
    """``count`` summed over all training processes, divided by their number.

    In a single process this is ``count``. Every process must call it at the same point (it is
    a collective operation).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(count)
    t = torch.tensor([float(count)], dtype=torch.float64, device=device)
    if dist.get_backend() == "gloo":
        t = t.cpu()
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
