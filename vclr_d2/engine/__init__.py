"""Training engine: trainer, EMA hook and optimizer for v-CLR."""

from .hooks import EMAHook
from .optimizer import build_optimizer, optimizer_param_groups
from .trainer import VCLRTrainer

__all__ = ["EMAHook", "VCLRTrainer", "build_optimizer", "optimizer_param_groups"]
