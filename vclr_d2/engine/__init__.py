"""Training engine: trainer, EMA hook and optimizer for v-CLR."""

from .hooks import EMAHook
from .optimizer import build_optimizer, optimizer_param_groups
from .setup import get_vclr_cfg, setup_cfg
from .trainer import VCLRTrainer

__all__ = [
    "EMAHook", "VCLRTrainer", "build_optimizer", "get_vclr_cfg", "optimizer_param_groups",
    "setup_cfg",
]
