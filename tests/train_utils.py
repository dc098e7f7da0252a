"""Helpers for training tests: tools/train_net.py as a module and a tiny synthetic config."""

from __future__ import annotations

from pathlib import Path

import torch

from vclr_d2.utils import load_tool

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "synthetic" / "vclr.yaml")

# configs/synthetic/vclr.yaml shrunk: 8 training images of 64 px, a small head, no evaluation.
TINY = [
    "DATASETS.SYNTHETIC.NUM_TRAIN", "8", "DATASETS.SYNTHETIC.NUM_VAL", "4",
    "DATASETS.SYNTHETIC.IMAGE_SIZE", "64", "INPUT.SCALE_JITTER.SIZE", "64",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MIN_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0",
    "TEST.DETECTIONS_PER_IMAGE", "20", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.VCLR_HEAD.NUM_CONVS", "1", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.VCLR_HEAD.EMBED_DIM", "32", "MODEL.VCLR_HEAD.MASK_BRANCH_CHANNELS", "32",
]


def train_net():
    """``tools/train_net.py`` imported as a module."""
    return load_tool("train_net")


def cli_args(out_dir, *opts: str, flags: tuple[str, ...] = ()):
    """Parsed train_net arguments: the tiny config, ``opts`` overrides, ``OUTPUT_DIR``."""
    return train_net().argument_parser().parse_args(
        ["--config-file", CONFIG, *flags, *TINY, *opts, "OUTPUT_DIR", str(out_dir)])


def model_state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def max_abs_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item()
               for k in a if a[k].is_floating_point())
