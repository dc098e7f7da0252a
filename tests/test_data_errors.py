"""Bad training annotations and config values: errors that name the file, the annotation or the
key, and dropped annotations that are counted."""

from __future__ import annotations

import json
import logging

import pytest

from vclr_d2.data import VCLRDatasetMapper
from vclr_d2.data.datasets import load_openworld_json

from .data_utils import H, W, write_dataset


@pytest.fixture
def mixed(tmp_path):
    return write_dataset(str(tmp_path), mixed=True)


def _rewrite(paths, edit) -> str:
    data = json.load(open(paths["json_file"]))
    edit(data)
    path = paths["json_file"].replace(".json", "_edited.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


@pytest.mark.parametrize("segmentation, problem", [
    ({"counts": 12, "size": [H, W]}, "'counts' must be a non-empty string or a list"),
    ({"counts": "PPYo0", "size": [W, H]}, rf"'size' \[{W}, {H}\] is not the image's"),
    ({"counts": [5, 10], "size": [H, W]}, rf"counts' sum to 15, not {H} x {W}"),
    ({"counts": "PPYo0"}, "'size' must be \\[height, width\\]"),
])
def test_an_invalid_rle_names_the_file_and_the_annotation(mixed, segmentation, problem):
    """Before: pycocotools' 'Invalid RLE mask representation' while training, naming nothing."""
    def edit(data):
        data["annotations"][3]["segmentation"] = segmentation

    path = _rewrite(mixed, edit)
    with pytest.raises(ValueError, match=rf"_edited.json: annotation id 1011 of image 101 has an "
                                         rf"invalid RLE segmentation: its .*{problem}"):
        load_openworld_json(path, mixed["image_root"])


def test_an_rle_pycocotools_rejects_names_the_image_and_the_annotation(cfg, mixed):
    """A well-formed but corrupt compressed RLE only fails when decoded (in the mapper)."""
    cfg.INPUT.FORMAT, cfg.MODEL.MASK_ON, cfg.INPUT.CROP.ENABLED = "RGB", True, False
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP = (H,), "none"
    cfg.INPUT.VIEWS.NAMES, cfg.INPUT.VIEWS.PROBS = ["natural"], [1.0]
    cfg.INPUT.VIEWS.DIRS, cfg.INPUT.VIEWS.EXTS = [""], [""]
    d = load_openworld_json(mixed["json_file"], mixed["image_root"])[1]
    # runs that add up to more pixels than the image has
    d["annotations"][1]["segmentation"] = {"counts": "0" + "Q" * 20 + "1", "size": [H, W]}
    with pytest.raises(ValueError, match=r"image .*000001.png: annotation id 1011 cannot be "
                                         r"converted to a mask: ValueError: Invalid RLE"):
        VCLRDatasetMapper(cfg, is_train=True)(d)


def test_unusable_annotations_are_dropped_counted_and_logged(mixed, caplog):
    """Before: 25 of 26 annotations loaded and nothing said."""
    def edit(data):
        anns = data["annotations"]
        anns[0]["image_id"] = 999  # no such image
        anns[1]["bbox"][2] = float("nan")
        anns[2]["bbox"][3] = -4.0
        anns[9]["bbox"][0] = float("inf")  # a proposal

    path = _rewrite(mixed, edit)
    logger = logging.getLogger("vclr_d2.data.datasets.openworld")
    logger.addHandler(caplog.handler)  # the vclr_d2 logger may not propagate
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            dicts = load_openworld_json(path, mixed["image_root"])
    finally:
        logger.removeHandler(caplog.handler)
    kept = [a["id"] for d in dicts for a in d["annotations"] + d["pseudo_annotations"]]
    assert len(kept) == 16 - 4
    assert not {1000, 1001, 1010, 5001} & set(kept)
    message = {r.getMessage() for r in caplog.records if "dropped" in r.getMessage()}
    assert message == {
        f"{path}: dropped 4 annotations: 1 with an image_id not in 'images' (ids [1000]); "
        "2 with non-finite bbox (ids [1001, 5001]); 1 with negative bbox width or height "
        "(ids [1010])"}


def test_a_non_numeric_view_probability_names_the_key(cfg):
    """Before: "could not convert string to float: 'a'"."""
    cfg.INPUT.VIEWS.PROBS = [0.5, "a", 0.5]
    with pytest.raises(ValueError, match=r"INPUT.VIEWS.PROBS\[1\]='a' is not a number"):
        VCLRDatasetMapper(cfg, is_train=True)
