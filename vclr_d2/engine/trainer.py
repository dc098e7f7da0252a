"""``VCLRTrainer``: detectron2's ``DefaultTrainer`` with what v-CLR changes.

- the training loader uses ``VCLRDatasetMapper`` (one view per image, natural image, proposals);
- the optimizer is ``vclr_d2.engine.optimizer.build_optimizer``;
- the evaluator is chosen by the dataset's ``evaluator_type`` (``vclr_d2.evaluation``);
- ``EMAHook`` updates the teacher after every step, before checkpointing and evaluation.
"""

from __future__ import annotations

import logging
import os

from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from torch.nn.parallel import DistributedDataParallel

from .hooks import EMAHook
from .optimizer import build_optimizer

__all__ = ["VCLRTrainer"]

logger = logging.getLogger(__name__)


class VCLRTrainer(DefaultTrainer):
    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        from vclr_d2.data import VCLRDatasetMapper

        return build_detection_train_loader(cfg, mapper=VCLRDatasetMapper(cfg, is_train=True))

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
