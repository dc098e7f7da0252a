"""VCLRDatasetMapper and open-world dataset registration."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from vclr_d2.data import VCLRDatasetMapper, ViewSpec, view_path
from vclr_d2.data import views as views_module
from vclr_d2.data.datasets import (
    OFFICIAL_OPENWORLD_DATASETS,
    load_openworld_json,
    parse_proposal_rule,
    register_openworld_dataset,
)

from .data_utils import GT_BOXES, PROPOSALS, H, write_dataset


@pytest.fixture
def data_cfg(cfg):
    """Mapper config for the 48x64 fixture: view "rev" only, no crop, no flip, no resize."""
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.VIEWS.NAMES = ["rev"]
    cfg.INPUT.VIEWS.PROBS = [1.0]
    cfg.INPUT.VIEWS.DIRS = ["{split}_rev"]
    cfg.INPUT.VIEWS.EXTS = [".png"]
    return cfg


@pytest.fixture
def mixed(tmp_path):
    return write_dataset(str(tmp_path), mixed=True)


def _dicts(paths, rule="field:is_proposal"):
    return load_openworld_json(paths["json_file"], paths["image_root"], "fixture",
                               paths["proposals_file"], rule)


def test_view_path_follows_the_official_layout_root_and_absolute_folders(monkeypatch):
    nat = "/d/coco/train2017/000000000009.jpg"
    depth = ViewSpec("depth", "{split}_depth_cmap", ".png")
    assert view_path(nat, depth) == "/d/coco/train2017_depth_cmap/000000000009.png"
    assert view_path(nat, ViewSpec("style", "style_coco_{split}", ".jpg")) == (
        "/d/coco/style_coco_train2017/000000000009.jpg")
    assert view_path(nat, depth, root="/views") == "/views/train2017_depth_cmap/000000000009.png"
    assert view_path(nat, ViewSpec("e", "/abs/edges", ".png")) == "/abs/edges/000000000009.png"
    monkeypatch.setenv("DETECTRON2_DATASETS", "/ds")
    assert view_path(nat, depth, root="$DETECTRON2_DATASETS/x") == (
        "/ds/x/train2017_depth_cmap/000000000009.png")
    assert view_path(nat, ViewSpec("natural")) == nat



def test_config_defaults_and_voc_config_are_the_views_layout(cfg):
    """INPUT.VIEWS.DIRS/EXTS defaults (and configs/voc.yaml) are the views module's layout,
    and the mapper looks a view up exactly where tools/generate_views.py writes it."""
    layout = views_module.LAYOUT
    v = cfg.INPUT.VIEWS
    assert list(v.NAMES) == ["natural", "depth", "style"]
    assert list(v.DIRS) == ["", layout["depth"].folder, layout["style"].folder]
    assert list(v.EXTS) == ["", layout["depth"].ext, layout["style"].ext]
    assert list(v.DIRS) == ["", "{split}_depth_cmap", "style_coco_{split}"]
    assert list(v.EXTS) == ["", ".png", ".jpg"]
    voc = cfg.clone()
    voc.merge_from_file(os.path.join(os.path.dirname(__file__), "..", "configs", "voc.yaml"))
    assert (list(voc.INPUT.VIEWS.DIRS), list(voc.INPUT.VIEWS.EXTS)) == (list(v.DIRS),
                                                                        list(v.EXTS))
    assert layout["depth"] is views_module.DEPTH and ViewSpec is views_module.ViewSpec
    nat = "/d/coco/train2017/000000000009.jpg"
    dirs = views_module.output_dirs(os.path.dirname(nat))
    for name, folder, ext in zip(v.NAMES, v.DIRS, v.EXTS):
        spec = ViewSpec(name, folder, ext)
        if spec.is_natural:
            continue
        assert spec == layout[name]
        assert view_path(nat, spec) == str(views_module.output_path(dirs, name, Path(nat)))
    edges = layout["edges"]
    assert view_path(nat, edges) == str(views_module.output_path(dirs, "edges", Path(nat)))
    assert view_path(nat, edges) == "/d/coco/train2017_edges/000000000009.png"


def test_same_geometry_reaches_view_and_natural_pixel_exactly(data_cfg, mixed):
    """Random crop (p=0.5), random resize and random flip: the view ("rev" = channels reversed)
    must stay exactly the channel-reversed natural image, whatever geometry was drawn."""
    data_cfg.INPUT.MIN_SIZE_TRAIN = (40, 56, 72, 96)
    data_cfg.INPUT.RANDOM_FLIP = "horizontal"
    data_cfg.INPUT.CROP.ENABLED = True
    data_cfg.INPUT.CROP.TYPE = "relative_range"
    data_cfg.INPUT.CROP.SIZE = [0.5, 0.5]
    data_cfg.INPUT.CROP.PROB = 0.5
    mapper = VCLRDatasetMapper(data_cfg, is_train=True)
    d = _dicts(mixed)[0]
    np.random.seed(0)
    shapes = set()
    for _ in range(30):
        out = mapper(d)
        nat, view = out["image_natural"], out["image"]
        assert out["view"] == "rev" and not out["view_fallback"]
        assert torch.equal(view, nat.flip(0))
        shapes.add(tuple(nat.shape))
    assert len(shapes) >= 4  # crops and sizes vary, so the check above is not trivial


def test_crop_and_flip_keep_boxes_and_masks_on_the_objects(data_cfg, mixed):
    data_cfg.INPUT.MIN_SIZE_TRAIN = (64, 96)
    data_cfg.INPUT.RANDOM_FLIP = "horizontal"
    data_cfg.INPUT.CROP.ENABLED = True
    data_cfg.INPUT.CROP.TYPE = "relative_range"
    data_cfg.INPUT.CROP.SIZE = [0.6, 0.6]
    data_cfg.INPUT.CROP.PROB = 0.5
    mapper = VCLRDatasetMapper(data_cfg, is_train=True)
    d = _dicts(mixed)[0]
    np.random.seed(1)
    checked = 0
    colors = {0: (250, 40, 40), 1: (40, 250, 90)}
    for _ in range(20):
        out = mapper(d)
        img = out["image_natural"].permute(1, 2, 0).numpy().astype(int)
        inst = out["instances"]
        for box, mask in zip(inst.gt_boxes.tensor, inst.gt_masks.tensor):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            # box = tight box of its mask (recomputed after the crop)
            tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert torch.allclose(box, tight, atol=1.0)
            # the mask's interior (boundary pixels blend under bilinear resize) has one object's
            # colour
            inner = cv2.erode(mask.numpy().astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            if inner.sum() < 4:
                continue
            inside = img[inner]
            dist = {k: np.abs(inside - np.array(c)).sum(1) < 30 for k, c in colors.items()}
            assert max(v.mean() for v in dist.values()) == 1.0
            checked += 1
    assert checked >= 20


def test_scale_jitter_crops_every_image_to_the_size_and_keeps_the_targets_on_the_objects(
        data_cfg, mixed):
    """INPUT.SCALE_JITTER: ResizeScale + FixedSizeCrop; no training image exceeds SIZE x SIZE
    (so a batch is never padded beyond it), smaller ones stay unpadded, the view gets the same
    geometry, boxes are the tight boxes of the cropped masks; testing is unaffected."""
    data_cfg.INPUT.RANDOM_FLIP = "horizontal"
    data_cfg.INPUT.CROP.ENABLED = True  # ignored under scale jitter
    data_cfg.INPUT.SCALE_JITTER.ENABLED = True
    data_cfg.INPUT.SCALE_JITTER.SIZE = 40
    data_cfg.INPUT.SCALE_JITTER.MIN_SCALE = 0.5
    data_cfg.INPUT.SCALE_JITTER.MAX_SCALE = 2.0
    mapper = VCLRDatasetMapper(data_cfg, is_train=True)
    d = _dicts(mixed)[0]
    np.random.seed(2)
    shapes, boxes = set(), 0
    for _ in range(30):
        out = mapper(d)
        nat, view = out["image_natural"], out["image"]
        assert torch.equal(view, nat.flip(0))
        shapes.add(tuple(nat.shape[1:]))
        for box, mask in zip(out["instances"].gt_boxes.tensor, out["instances"].gt_masks.tensor):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            assert torch.equal(box, tight)
            boxes += 1
    assert max(h for h, _ in shapes) == 40 and max(w for _, w in shapes) == 40
    assert (40, 40) in shapes and min(h for h, _ in shapes) < 40  # scale 0.5 of 48x64 -> 15x20
    assert all(h <= 40 and w <= 40 for h, w in shapes) and boxes >= 30
    data_cfg.INPUT.MIN_SIZE_TEST = 2 * H
    data_cfg.INPUT.MAX_SIZE_TEST = 1000
    test_out = VCLRDatasetMapper(data_cfg, is_train=False)(d)
    assert tuple(test_out["image"].shape[1:]) == (2 * H, 128)  # the shortest-edge resize


@pytest.mark.parametrize("key,value,message", [
    ("SIZE", 0, "INPUT.SCALE_JITTER.SIZE must be > 0, got 0"),
    ("MIN_SCALE", 3.0, "0 < MIN_SCALE <= MAX_SCALE, got 3.0 and 2.0"),
])
def test_scale_jitter_rejects_bad_values_naming_the_key(data_cfg, key, value, message):
    data_cfg.INPUT.SCALE_JITTER.ENABLED = True
    data_cfg.INPUT.SCALE_JITTER.MAX_SCALE = 2.0
    data_cfg.INPUT.SCALE_JITTER[key] = value
    with pytest.raises(ValueError) as e:
        VCLRDatasetMapper(data_cfg, is_train=True)
    assert message in str(e.value)


def test_view_frequencies_follow_the_configured_probabilities(data_cfg, mixed):
    data_cfg.INPUT.VIEWS.NAMES = ["natural", "rev", "inv"]
    data_cfg.INPUT.VIEWS.PROBS = [0.5, 0.3, 0.2]
    data_cfg.INPUT.VIEWS.DIRS = ["", "{split}_rev", "{split}_inv"]
    data_cfg.INPUT.VIEWS.EXTS = ["", ".png", ".png"]
    mapper = VCLRDatasetMapper(data_cfg, is_train=True)
    np.random.seed(0)
    names = [mapper.sample_view().name for _ in range(3000)]
    for name, p in zip(["natural", "rev", "inv"], [0.5, 0.3, 0.2]):
        assert abs(names.count(name) / 3000 - p) < 0.03  # ~3.5 standard deviations


def test_ground_truth_and_proposals_are_never_mixed(data_cfg, tmp_path):
    for mixed_json in (True, False):
        paths = write_dataset(str(tmp_path / str(mixed_json)), mixed=mixed_json)
        dicts = _dicts(paths)
        gt_ids = [a["id"] for d in dicts for a in d["annotations"]]
        prop_ids = [a["id"] for d in dicts for a in d["pseudo_annotations"]]
        assert gt_ids == paths["gt_ids"] and prop_ids == paths["proposal_ids"]
        assert {a["category_id"] for d in dicts for a in d["annotations"]} == {0}
        out = VCLRDatasetMapper(data_cfg, is_train=True)(dicts[1])
        assert out["instances"].gt_boxes.tensor.tolist() == [list(map(float, b))
                                                              for b in GT_BOXES]
        assert out["proposals"].gt_boxes.tensor.tolist() == [list(map(float, b))
                                                              for b, _ in PROPOSALS]
        assert out["proposals"].scores.tolist() == pytest.approx([s for _, s in PROPOSALS])
        assert out["instances"].gt_masks.tensor.sum(dim=(1, 2)).tolist() == [480, 720]
        assert out["proposals"].has("gt_masks")


def test_proposal_rules(mixed):
    # "none": everything is ground truth (what the official code does with its mixed files)
    d = _dicts(mixed, "none")[0]
    assert len(d["annotations"]) == 4 and d["pseudo_annotations"] == []
    d = _dicts(mixed, "category:1")[0]
    assert [a["id"] for a in d["pseudo_annotations"]] == [5000, 5001]
    d = _dicts(mixed, "has:score")[0]
    assert [a["id"] for a in d["annotations"]] == [1000, 1001]
    for bad in ("field", "bogus:x", "category:a,b"):
        with pytest.raises(ValueError, match="rule"):
            parse_proposal_rule(bad)


def test_missing_view_raises_with_path_or_falls_back_counted(data_cfg, mixed):
    d = _dicts(mixed)[2]
    missing = os.path.join(os.path.dirname(mixed["image_root"]), "images_rev", "000002.png")
    os.remove(missing)
    with pytest.raises(FileNotFoundError, match=missing):
        VCLRDatasetMapper(data_cfg, is_train=True)(d)
    data_cfg.INPUT.VIEWS.FALLBACK_TO_NATURAL = True
    mapper = VCLRDatasetMapper(data_cfg, is_train=True)
    out = mapper(d)
    assert out["view_fallback"] is True and out["view"] == "rev"
    assert torch.equal(out["image"], out["image_natural"])
    mapper(d)
    assert mapper.num_fallbacks == 2


def test_bad_images_and_view_shapes_give_errors_naming_the_file(data_cfg, mixed, tmp_path):
    d = _dicts(mixed)[0]
    view = os.path.join(os.path.dirname(mixed["image_root"]), "images_rev", "000000.png")
    cv2.imwrite(view, np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="000000.png.*resolution"):
        VCLRDatasetMapper(data_cfg, is_train=True)(d)
    empty = tmp_path / "images" / "000001.png"
    empty.write_bytes(b"")
    with pytest.raises(OSError, match=str(empty)):
        VCLRDatasetMapper(data_cfg, is_train=True)(_dicts(mixed)[1])


def test_bad_view_config_values_name_the_key(data_cfg):
    data_cfg.INPUT.VIEWS.PROBS = [0.5, 0.5]
    with pytest.raises(ValueError, match="INPUT.VIEWS.PROBS"):
        VCLRDatasetMapper(data_cfg, is_train=True)
    data_cfg.INPUT.VIEWS.PROBS = [-1.0]
    with pytest.raises(ValueError, match="INPUT.VIEWS.PROBS"):
        VCLRDatasetMapper(data_cfg, is_train=True)
    data_cfg.INPUT.VIEWS.PROBS = [1.0]
    data_cfg.INPUT.VIEWS.DIRS = ["a", "b"]
    with pytest.raises(ValueError, match="INPUT.VIEWS.DIRS"):
        VCLRDatasetMapper(data_cfg, is_train=True)


def test_missing_and_malformed_json_name_the_file(tmp_path, mixed):
    register_openworld_dataset("_vclr_test_missing", str(tmp_path / "absent.json"),
                               str(tmp_path))
    try:
        assert MetadataCatalog.get("_vclr_test_missing").evaluator_type == "openworld"
        with pytest.raises(FileNotFoundError, match="_vclr_test_missing.*absent.json"):
            DatasetCatalog.get("_vclr_test_missing")
    finally:
        DatasetCatalog.remove("_vclr_test_missing")
        MetadataCatalog.remove("_vclr_test_missing")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"images\": [")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        load_openworld_json(str(bad), str(tmp_path))
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="bad.json.*'annotations'"):
        load_openworld_json(str(bad), str(tmp_path))
    data = json.load(open(mixed["json_file"]))
    del data["annotations"][0]["bbox"]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="bad.json.*annotation id 1000.*bbox"):
        load_openworld_json(str(bad), str(tmp_path))


def test_official_names_are_registered_class_agnostic_and_fail_only_on_use(monkeypatch,
                                                                           tmp_path):
    from vclr_d2.data.datasets import register_official_openworld_datasets

    register_official_openworld_datasets(root=str(tmp_path))
    try:
        for name, (_, json_name) in OFFICIAL_OPENWORLD_DATASETS.items():
            meta = MetadataCatalog.get(name)
            assert meta.thing_classes == ["object"] and meta.evaluator_type == "openworld"
            assert meta.json_file == str(tmp_path / json_name)
        with pytest.raises(FileNotFoundError, match="openworld_nonvoc_classes_val2017.*"
                           "openworld_instances_nonvoc_val2017_insseg.json"):
            DatasetCatalog.get("openworld_nonvoc_classes_val2017")
    finally:
        register_official_openworld_datasets()


def test_teacher_view_has_the_student_geometry_and_names_a_bad_view(data_cfg, mixed):
    """INPUT.VIEWS.TEACHER "rev" while the student is shown the natural image: the teacher's
    image is the channel-reversed natural image under every sampled crop, resize and flip."""
    data_cfg.INPUT.MIN_SIZE_TRAIN = (40, 56, 72)
    data_cfg.INPUT.RANDOM_FLIP = "horizontal"
    data_cfg.INPUT.CROP.ENABLED = True
    data_cfg.INPUT.CROP.TYPE = "relative_range"
    data_cfg.INPUT.CROP.SIZE = [0.5, 0.5]
    data_cfg.INPUT.VIEWS.NAMES = ["natural", "rev"]
    data_cfg.INPUT.VIEWS.PROBS = [1.0, 0.0]
    data_cfg.INPUT.VIEWS.DIRS = ["", "{split}_rev"]
    data_cfg.INPUT.VIEWS.EXTS = ["", ".png"]
    data_cfg.INPUT.VIEWS.TEACHER = "rev"
    mapper = VCLRDatasetMapper(data_cfg, is_train=True)
    d = _dicts(mixed)[0]
    np.random.seed(0)
    shapes = set()
    for _ in range(12):
        out = mapper(d)
        assert out["view"] == "natural"
        assert torch.equal(out["image"], out["image_natural"])
        assert torch.equal(out["image_teacher"], out["image_natural"].flip(0))
        shapes.add(tuple(out["image"].shape))
    assert len(shapes) >= 3
    data_cfg.INPUT.VIEWS.TEACHER = "depth"
    with pytest.raises(ValueError, match="INPUT.VIEWS.TEACHER='depth'"):
        VCLRDatasetMapper(data_cfg, is_train=True)
    data_cfg.INPUT.VIEWS.TEACHER = "natural"
    assert "image_teacher" not in VCLRDatasetMapper(data_cfg, is_train=True)(d)
