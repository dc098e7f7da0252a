"""Shared fixtures. Tests run on the CPU with tiny models and data written under tmp_path."""

import logging

import pytest
import torch
from detectron2.config import get_cfg

from vclr_d2 import add_vclr_config


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_loggers():
    """Tests that run tools/train_net.py's ``main`` in this process call detectron2's
    ``setup_logger`` (DEBUG level, no propagation, new handlers): undo it afterwards."""
    loggers = [logging.getLogger(n) for n in ("detectron2", "fvcore", "vclr_d2")]
    saved = [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    yield
    for lg, (level, propagate, handlers) in zip(loggers, saved):
        lg.setLevel(level)
        lg.propagate = propagate
        lg.handlers[:] = handlers


@pytest.fixture
def cfg():
    """A detectron2 config with the v-CLR keys and a tiny ConvNeXt-FPN backbone."""
    c = get_cfg()
    add_vclr_config(c)
    c.MODEL.BACKBONE.NAME = "build_convnext_fpn_backbone"
    c.MODEL.CONVNEXT.NAME = "convnext_atto"
    c.MODEL.CONVNEXT.DROP_PATH_RATE = 0.0
    c.MODEL.DEVICE = "cpu"
    return c


@pytest.fixture
def model_cfg(cfg):
    """A tiny VCLR model: convnext_atto, 64-channel FPN p3-p5, 2-conv towers, no student augs."""
    cfg.MODEL.META_ARCHITECTURE = "VCLR"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.PIXEL_MEAN = [128.0, 128.0, 128.0]
    cfg.MODEL.PIXEL_STD = [64.0, 64.0, 64.0]
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.FPN.TOP_BLOCK = "none"
    cfg.MODEL.VCLR_HEAD.IN_FEATURES = ["p3", "p4", "p5"]
    cfg.MODEL.VCLR_HEAD.NUM_CONVS = 2
    cfg.MODEL.VCLR_HEAD.EMBED_DIM = 64
    cfg.MODEL.VCLR_HEAD.MASK_BRANCH_CHANNELS = 32
    cfg.MODEL.VCLR.PATCH_MIX_PROB = 0.0
    cfg.MODEL.VCLR.RANDOM_ERASE_PROB = 0.0
    cfg.MODEL.VCLR.GRAYSCALE_PROB = 0.0
    return cfg
