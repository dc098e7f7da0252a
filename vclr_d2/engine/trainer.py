"""``VCLRTrainer``: detectron2's ``DefaultTrainer`` with what v-CLR changes.

- the training loader is a ``TrainStreamLoader`` (``vclr_d2.data.stream``) over
  ``VCLRDatasetMapper`` (one view per image, natural image, proposals): the batches and their
  augmentations are a function of (seed, iteration), so a resumed run sees what an
  uninterrupted one would have seen;
- each step is a ``VCLRStepTrainer`` step: per-iteration seeding of the in-model randomness,
  mixed precision on the CPU or CUDA (``SOLVER.AMP``) and a guard that stops on non-finite
  losses or gradients before they reach the weights;
- checkpoints (``VCLRCheckpointer``) are written atomically, never with non-finite weights, and
  hold the model (student and teacher), the optimizer, the scheduler, the iteration, the grad
  scaler and the seed of the stream;
- on the CPU, several processes train with ``DistributedDataParallel`` over gloo
  (``vclr_d2.engine.launch``);
- the optimizer is ``vclr_d2.engine.optimizer.build_optimizer``;
- the evaluator is chosen by the dataset's ``evaluator_type`` (``vclr_d2.evaluation``);
- ``EMAHook`` updates the teacher after every step, before checkpointing and evaluation.
"""

from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from .checkpoint import VCLRCheckpointer
from .hooks import EMAHook
from .optimizer import build_optimizer
from .train_loop import VCLRStepTrainer, amp_dtype_from_config

__all__ = ["VCLRTrainer"]

logger = logging.getLogger(__name__)


def _wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """``DistributedDataParallel`` when there are several processes: detectron2's
    ``create_ddp_model`` (one device per process) for a CUDA model, no device ids on the CPU."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        return create_ddp_model(model, broadcast_buffers=False)
    return DistributedDataParallel(model, broadcast_buffers=False)


class VCLRTrainer(DefaultTrainer):
    """See the module docstring. Built like ``DefaultTrainer`` from the same ``build_*``
    methods; what differs is the step trainer, the DDP wrapping on the CPU and the
    checkpointer."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = _wrap_ddp(model)
        self._trainer = VCLRStepTrainer(
            model, data_loader, optimizer, seed=self._stream_seed(cfg, data_loader),
            amp_dtype=amp_dtype_from_config(cfg))
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = VCLRCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @staticmethod
    def _stream_seed(cfg, data_loader) -> int:
        seed = getattr(data_loader, "seed", None)
        if seed is None:
            seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return int(seed)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        """A ``TrainStreamLoader`` seeded with ``cfg.SEED`` (a seed shared by all processes
        when it is negative)."""
        from vclr_d2.data import VCLRDatasetMapper
        from vclr_d2.data.stream import build_train_stream_loader

        if cfg.MODEL.LOAD_PROPOSALS:
            raise ValueError(
                "MODEL.LOAD_PROPOSALS=True asks for detectron2's precomputed RPN proposals "
                "(DATASETS.PROPOSAL_FILES_TRAIN), which this trainer does not read; v-CLR's "
                "proposal targets are switched by INPUT.LOAD_PROPOSALS and come from the dataset "
                "(DATASETS.OPENWORLD.PROPOSAL_FILES)")
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return build_train_stream_loader(cfg, VCLRDatasetMapper(cfg, is_train=True), seed)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from vclr_d2.evaluation import build_evaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self):
        ret = super().build_hooks()
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else (
            self.model)
        if hasattr(model, "update_teacher"):
            first = next(i for i, h in enumerate(ret)
                         if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook)))
            ret.insert(first, EMAHook())
        logger.info("VCLRTrainer hooks, in order: "
                    + ", ".join(type(h).__name__ for h in ret if h is not None))
        return ret

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Iteration and hook states (the scheduler), plus the step trainer's: optimizer, grad
        scaler and the stream's seed."""
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:
            seed = self._trainer.seed
            self._trainer.load_state_dict(state_dict["_trainer"])
            if self._trainer.seed != seed:
                logger.info(f"Resuming with the checkpoint's seed {self._trainer.seed} (the "
                            f"config asks for {seed}) so that the data stream continues")
        else:
            logger.warning("The checkpoint has no optimizer state (it was written before "
                           "vclr_d2 saved it): the optimizer starts afresh")

    def train(self):
        """Train from ``start_iter`` (0, or the iteration after the resumed checkpoint): the
        data stream starts there."""
        self._trainer.restart_data(self.start_iter)
        return super().train()
