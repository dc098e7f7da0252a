"""Training hooks of v-CLR."""

from __future__ import annotations

from detectron2.engine import HookBase
from torch.nn.parallel import DistributedDataParallel

__all__ = ["EMAHook"]


class EMAHook(HookBase):
    """Updates the teacher of a ``VCLR`` model after every optimizer step.

    Place it before ``PeriodicCheckpointer`` and ``EvalHook`` so that checkpoints and
    evaluations see the teacher of the same iteration. Every rank updates its own copy from
    identical student weights, so teachers stay in sync without communication.
    """

    def after_step(self) -> None:
        model = self.trainer.model
        if isinstance(model, DistributedDataParallel):
            model = model.module
        model.update_teacher()
