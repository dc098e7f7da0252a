"""The installed detectron2 works with today's libraries (pure-Python build or upstream)."""

import importlib

import pytest
import torch


def test_detectron2_engine_and_evaluation_import():
    for name in ("detectron2.engine", "detectron2.evaluation", "detectron2.modeling",
                 "detectron2.data", "detectron2.model_zoo"):
        importlib.import_module(name)


def test_collect_env_info_runs():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "detectron2" in info and "PyTorch" in info


def test_model_zoo_config_files_resolve():
    from detectron2 import model_zoo

    path = model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    assert path.endswith("retinanet_R_50_FPN_1x.yaml")


def test_compiled_only_op_says_it_needs_the_extension():
    import detectron2._C as ext

    if getattr(ext, "__file__", "").endswith(".so"):
        pytest.skip("detectron2 was built with its compiled extension")
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
    with pytest.raises(RuntimeError, match="needs detectron2's compiled extension"):
        pairwise_iou_rotated(boxes, boxes)


def test_importing_vclr_d2_registers_the_backbone():
    from detectron2.modeling import BACKBONE_REGISTRY

    import vclr_d2  # noqa: F401

    assert BACKBONE_REGISTRY.get("build_convnext_fpn_backbone").__module__ == (
        "vclr_d2.modeling.backbone.convnext"
    )
