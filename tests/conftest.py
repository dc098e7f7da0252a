"""Shared fixtures. Tests run on the CPU with tiny models and data written under tmp_path."""

import pytest
import torch
from detectron2.config import get_cfg

from vclr_d2 import add_vclr_config


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)


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
