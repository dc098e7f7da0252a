"""Training engine: trainer, EMA hook and optimizer for v-CLR; self-training rounds."""

from .hooks import EMAHook
from .optimizer import build_optimizer, optimizer_param_groups
from .report import summary_table
from .self_training import SelfTrainingParams, run_self_training, train_and_evaluate
from .setup import get_vclr_cfg, setup_cfg
from .trainer import VCLRTrainer

__all__ = [
    "EMAHook", "SelfTrainingParams", "VCLRTrainer", "build_optimizer", "get_vclr_cfg",
    "optimizer_param_groups", "run_self_training", "setup_cfg", "summary_table",
    "train_and_evaluate",
]
