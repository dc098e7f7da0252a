"""``setup_cfg``: the config of a training or evaluation run, from command-line arguments."""

from __future__ import annotations

import argparse

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vclr_d2.config import add_vclr_config
from vclr_d2.data.datasets import register_all

__all__ = ["argument_parser", "get_vclr_cfg", "setup_cfg"]


def argument_parser(epilog: str | None = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` plus ``--allow-random-weights``."""
    parser = default_argument_parser(epilog)
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="with --eval-only and no MODEL.WEIGHTS, evaluate the randomly "
                             "initialised model instead of stopping with an error")
    return parser


def get_vclr_cfg(config_file: str | None = None, opts: list[str] | None = None):
    """detectron2's defaults + the v-CLR keys, merged with a file and ``KEY VALUE`` pairs."""
    cfg = get_cfg()
    add_vclr_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


def load_cfg(config_file: str | None = None, opts: list[str] | None = None, **top_level):
    """``get_vclr_cfg`` + top-level keys (``OUTPUT_DIR="..."``, ``SEED=0``), frozen, with the
    datasets it names registered (``register_all``): what every tool needs before it builds a
    loader or an evaluator.

    Raises:
        KeyError: a keyword that is not a top-level config key.
    """
    cfg = get_vclr_cfg(config_file, opts)
    for key, value in top_level.items():
        if key not in cfg:
            raise KeyError(f"load_cfg: {key!r} is not a top-level config key")
        setattr(cfg, key, value)
    cfg.freeze()
    register_all(cfg)
    return cfg


def setup_cfg(args, *, setup_logging: bool = True):
    """Frozen config from ``args.config_file`` and ``args.opts``; datasets re-registered with
    the config's dataset keys; detectron2's ``default_setup`` (logging, output dir, seed) and
    the ``vclr_d2`` logger."""
    cfg = get_vclr_cfg(args.config_file, args.opts)
    cfg.freeze()
    register_all(cfg)
    if setup_logging:
        default_setup(cfg, args)
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="vclr_d2")
    return cfg
