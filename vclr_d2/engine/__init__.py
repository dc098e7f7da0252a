"""Training engine: trainer, step, checkpointer, launcher, EMA hook and optimizer for v-CLR;
self-training rounds."""

from .checkpoint import VCLRCheckpointer, load_for_evaluation, nonfinite_tensors
from .hooks import EMAHook
from .launch import launch
from .optimizer import build_optimizer, optimizer_param_groups
from .report import summary_table
from .self_training import SelfTrainingParams, run_self_training, train_and_evaluate
from .setup import argument_parser, get_vclr_cfg, load_cfg, setup_cfg
from .train_loop import VCLRStepTrainer, amp_dtype_from_config, seed_iteration
from .trainer import VCLRTrainer

__all__ = [
    "EMAHook", "SelfTrainingParams", "VCLRCheckpointer", "VCLRStepTrainer", "VCLRTrainer",
    "amp_dtype_from_config", "argument_parser", "build_optimizer", "get_vclr_cfg", "launch",
    "load_cfg", "load_for_evaluation", "nonfinite_tensors", "optimizer_param_groups",
    "run_self_training", "seed_iteration", "setup_cfg", "summary_table", "train_and_evaluate",
]
