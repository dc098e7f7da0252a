"""``VCLRStepTrainer``: detectron2's ``SimpleTrainer`` step with what long runs need.

- **Per-iteration seeding**: before the forward pass of iteration ``i``, process ``r`` seeds
  torch's (CPU and CUDA), NumPy's and Python's global RNGs from ``(seed, i, r)``. The in-model
  randomness (the student's patch mixing, erasing and grayscale, drop path, the subsampling of
  mask targets) is then a function of the iteration, so a resumed run draws what the
  uninterrupted one drew, whatever ran in between (evaluation, checkpointing).
- **Mixed precision on any device**: with ``amp_dtype`` the forward pass runs under
  ``torch.autocast`` of the model's device type (detectron2 0.6's ``AMPTrainer`` only knows
  CUDA); float16 uses a ``GradScaler``, bfloat16 needs none. The model computes matching and
  losses in float32 (``vclr_d2.modeling.numerics``).
- **Divergence guard**: a NaN or infinite loss term, or gradient, stops training with a
  ``FloatingPointError`` naming the iteration, the loss terms and the parameters, before the
  optimizer step: no weight becomes non-finite, so no such checkpoint can be written. With a
  float16 ``GradScaler``, overflowing gradients are the scaler's business (it skips the step and
  lowers the scale); training stops only after ``max_skipped_steps`` such steps in a row.

Its ``state_dict`` holds the optimizer, the grad scaler and the seed.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Mapping

import numpy as np
import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils import comm
from torch import nn

from vclr_d2.data.stream import sample_seed

__all__ = ["VCLRStepTrainer", "amp_dtype_from_config", "seed_iteration"]

_ITER_TAG = 4
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def seed_iteration(seed: int, iteration: int, rank: int = 0) -> None:
    """Seed torch (all devices), NumPy and Python from ``(seed, iteration, rank)``."""
    s = sample_seed(seed, _ITER_TAG, iteration, rank)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def amp_dtype_from_config(cfg) -> torch.dtype | None:
    """``None`` without ``SOLVER.AMP.ENABLED``; else ``SOLVER.AMP.DTYPE``, by default float16 on
    CUDA and bfloat16 on the CPU."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    name = cfg.SOLVER.AMP.DTYPE or (
        "float16" if torch.device(cfg.MODEL.DEVICE).type == "cuda" else "bfloat16")
    if name not in _DTYPES:
        raise ValueError(f"SOLVER.AMP.DTYPE={name!r}: use 'float16', 'bfloat16' or '' (automatic)")
    return _DTYPES[name]


def _format_losses(loss_dict: Mapping[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in loss_dict.items())


class VCLRStepTrainer(SimpleTrainer):
    """See the module docstring.

    Args:
        model, data_loader, optimizer: as ``SimpleTrainer``'s.
        seed: the run's seed (``TrainStreamLoader.seed``).
        amp_dtype: autocast dtype, or None for full precision.
        max_skipped_steps: with a float16 grad scaler, consecutive skipped steps that stop
            training.
    """

    def __init__(self, model: nn.Module, data_loader, optimizer: torch.optim.Optimizer, *,
                 seed: int, amp_dtype: torch.dtype | None = None, max_skipped_steps: int = 20):
        super().__init__(model, data_loader, optimizer)
        self.seed = seed
        self.amp_dtype = amp_dtype
        param = next(model.parameters())
        self.device_type = param.device.type
        self.grad_scaler = torch.amp.GradScaler(
            self.device_type, enabled=amp_dtype == torch.float16)
        self.max_skipped_steps = max_skipped_steps
        self._skipped = 0

    def restart_data(self, start_iter: int) -> None:
        """Start the data stream (anew) at ``start_iter`` with this trainer's seed."""
        if hasattr(self.data_loader, "start_iter"):
            self.data_loader.start_iter = start_iter
            self.data_loader.seed = self.seed
        if isinstance(getattr(type(self), "_data_loader_iter", None), property):
            # upstream detectron2: a lazy property over ``_data_loader_iter_obj``
            self._data_loader_iter_obj = iter(self.data_loader)
        else:  # detectron2 0.6: a plain attribute
            self._data_loader_iter = iter(self.data_loader)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.amp_dtype)

    def run_step(self) -> None:
        assert self.model.training, "[VCLRStepTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        seed_iteration(self.seed, self.iter, comm.get_rank())
        with self._autocast():
            try:
                loss_dict = self.model(data)
            except FloatingPointError as e:
                raise FloatingPointError(f"iteration {self.iter}: {e}") from e
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())
        self._check_losses(loss_dict)

        self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler.is_enabled():
            self.grad_scaler.unscale_(self.optimizer)  # clipping and the guard see true values
        if self._check_gradients(loss_dict):
            self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def _check_losses(self, loss_dict: Mapping[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()])
        if bool(torch.isfinite(values).all()):
            return
        bad = [k for k, v in zip(loss_dict, values) if not torch.isfinite(v)]
        raise FloatingPointError(
            f"non-finite loss at iteration {self.iter}: {', '.join(bad)} (loss terms: "
            f"{_format_losses(loss_dict)}); stopped before the optimizer step, the weights are "
            "those of the previous iteration")

    def _check_gradients(self, loss_dict: Mapping[str, torch.Tensor]) -> bool:
        """True when every gradient is finite; otherwise False with a float16 grad scaler (the
        step is skipped) or ``FloatingPointError``."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]
                  if p.grad is not None]
        if not params:
            return True
        norms = torch._foreach_norm([p.grad for p in params])
        if bool(torch.isfinite(torch.stack(norms)).all()):
            self._skipped = 0
            return True
        if self.grad_scaler.is_enabled():
            self._skipped += 1
            if self._skipped < self.max_skipped_steps:
                return False
        names = {id(p): n for n, p in self.model.named_parameters()}
        bad = [names.get(id(p), "?") for p, n in zip(params, norms) if not torch.isfinite(n)]
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        skipped = (f" ({self._skipped} float16 steps skipped in a row)"
                   if self.grad_scaler.is_enabled() else "")
        raise FloatingPointError(
            f"non-finite gradients at iteration {self.iter}{skipped} in {len(bad)} parameters "
            f"({shown}); loss terms: {_format_losses(loss_dict)}; stopped before the optimizer "
            "step, the weights are those of the previous iteration")

    def state_dict(self) -> dict:
        ret = super().state_dict()
        ret["seed"] = self.seed
        if self.grad_scaler.is_enabled():
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.seed = state_dict.get("seed", self.seed)
        if self.grad_scaler.is_enabled() and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
