"""Synthetic open-world set: determinism, known/novel split, real annotations, views,
proposals, cache reuse and atomic writes, argument errors, the generation tool."""

from __future__ import annotations

import dataclasses
import filecmp
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from vclr_d2.data.datasets import synthetic as syn
from vclr_d2.data.datasets.synthetic import (
    BACKGROUND_TEXTURES,
    KNOWN_TEXTURES,
    SHAPE_FAMILIES,
    SyntheticOpenWorldParams,
    default_synthetic_root,
    ensure_synthetic_openworld,
    synthetic_openworld_files,
)
from vclr_d2.utils import load_tool

SMALL = dict(num_train=20, num_val=10, image_size=64, seed=0)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def small(roots):
    return ensure_synthetic_openworld(**SMALL, root=str(roots / "a"), progress=False)


def _load(path):
    with open(path) as f:
        return json.load(f)


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def _decode(ann):
    return mask_util.decode(ann["segmentation"]).astype(bool)


def test_layout_and_api(small):
    assert os.path.basename(os.path.dirname(small.dir)) == "a"
    for split in ("train", "val"):
        n = SMALL["num_train"] if split == "train" else SMALL["num_val"]
        for view in ("natural", "depth", "style", "edges"):
            folder = small.view_folder(split, view)
            assert sorted(os.listdir(folder)) == [f"{i:06d}.png" for i in range(n)]
    assert small.view_folder("val", "depth") == os.path.join(small.dir, "val_depth")
    assert small.view_dirs == {"depth": "{split}_depth", "style": "{split}_style",
                               "edges": "{split}_edges"}
    for path in (small.train_json, small.train_proposals_json, small.val_novel_json,
                 small.val_all_json, small.params_json):
        assert os.path.isfile(path)
    assert small.known_classes == ("ellipse", "rectangle", "triangle", "star")
    assert small.novel_classes == ("ring", "cross", "hexagon", "crescent")
    assert synthetic_openworld_files(**SMALL, root=os.path.dirname(small.dir)) == small


def test_deterministic_across_runs_and_workers(small, roots):
    again = ensure_synthetic_openworld(**SMALL, root=str(roots / "b"), workers=2,
                                       progress=False)
    assert os.path.basename(again.dir) == os.path.basename(small.dir)
    names = _files(small.dir)
    assert names == _files(again.dir) and len(names) == 8 * 15 + 6
    _, mismatch, errors = filecmp.cmpfiles(small.dir, again.dir, names, shallow=False)
    assert not mismatch and not errors


def test_other_seed_differs(small, roots):
    other = ensure_synthetic_openworld(**{**SMALL, "seed": 1}, root=str(roots / "a"),
                                       progress=False)
    assert other.dir != small.dir
    for rel in ("annotations/val_all.json", "annotations/train_proposals.json",
                "train/000000.png", "val_depth/000003.png"):
        assert not filecmp.cmp(os.path.join(small.dir, rel), os.path.join(other.dir, rel),
                               shallow=False)
    # validation is a different seeded split from training
    a = cv2.imread(os.path.join(small.train_images, "000000.png"))
    b = cv2.imread(os.path.join(small.val_images, "000000.png"))
    assert not np.array_equal(a, b)


def test_known_and_novel_split(small):
    params = SyntheticOpenWorldParams()
    ids = {f: i + 1 for i, f in enumerate(params.known_families + params.novel_families)}
    known, novel = _load(small.train_json), _load(small.val_novel_json)
    val_all, train_all = _load(small.val_all_json), _load(small.train_all_json)
    assert {c["name"]: c["id"] for c in known["categories"]} == {
        f: ids[f] for f in params.known_families}
    assert {c["name"]: c["id"] for c in novel["categories"]} == {
        f: ids[f] for f in params.novel_families}
    assert {c["name"]: c["id"] for c in val_all["categories"]} == ids
    known_ids = {ids[f] for f in params.known_families}
    assert known["annotations"] and novel["annotations"]
    assert all(a["category_id"] in known_ids for a in known["annotations"])
    assert all(a["category_id"] not in known_ids for a in novel["annotations"])
    # val_all holds both groups; val_novel is exactly its novel part; train_all likewise
    assert {a["category_id"] in known_ids for a in val_all["annotations"]} == {True, False}
    strip = [({k: v for k, v in a.items() if k != "id"}) for a in val_all["annotations"]
             if a["category_id"] not in known_ids]
    assert strip == [{k: v for k, v in a.items() if k != "id"} for a in novel["annotations"]]
    assert len(known["annotations"]) == sum(a["category_id"] in known_ids
                                            for a in train_all["annotations"])
    assert len(known["images"]) == SMALL["num_train"]
    assert len(val_all["images"]) == len(novel["images"]) == SMALL["num_val"]


@pytest.mark.parametrize("name", ["train_json", "train_all_json", "val_novel_json",
                                  "val_all_json"])
def test_ground_truth_is_real_objects(small, name):
    data = _load(getattr(small, name))
    images = {im["id"]: im for im in data["images"]}
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    min_area = syn.SyntheticOpenWorldParams().min_visible_area * SMALL["image_size"] ** 2
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        assert ann["iscrowd"] == 0
        assert isinstance(ann["segmentation"]["counts"], str)
        m = _decode(ann)
        assert m.shape == (im["height"], im["width"])
        assert m.any() and ann["area"] == m.sum() >= min_area
        ys, xs = np.nonzero(m)
        x0, y0 = xs.min(), ys.min()
        assert ann["bbox"] == [x0, y0, xs.max() + 1 - x0, ys.max() + 1 - y0]
    # the visible masks of one image never overlap (occlusion by depth order)
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(_decode(ann).astype(int))
    assert all(np.sum(ms, 0).max() <= 1 for ms in by_image.values())


def test_views_have_the_image_size_and_one_depth_per_object(small):
    data = _load(small.val_all_json)
    anns = {}
    for ann in data["annotations"]:
        anns.setdefault(ann["image_id"], []).append(ann)
    for im in data["images"]:
        nat = cv2.imread(os.path.join(small.val_images, im["file_name"]), cv2.IMREAD_UNCHANGED)
        assert nat.shape == (im["height"], im["width"], 3)
        views = {v: cv2.imread(os.path.join(small.view_folder("val", v), im["file_name"]),
                               cv2.IMREAD_UNCHANGED) for v in ("depth", "style", "edges")}
        for v in views.values():
            assert v.shape == nat.shape and v.dtype == np.uint8
        edges = views["edges"]
        assert set(np.unique(edges)) <= {0, 255}
        assert (edges == edges[..., :1]).all()
        assert not np.array_equal(views["style"], nat)
        covered = np.zeros(nat.shape[:2], bool)
        for ann in anns.get(im["id"], []):
            m = _decode(ann)
            covered |= m
            colours = np.unique(views["depth"][m], axis=0)
            assert len(colours) == 1, "depth view not constant on an object"
        # background plane has a gradient: many depth colours off the objects
        assert len(np.unique(views["depth"][~covered], axis=0)) > 5


def test_textures_follow_the_shortcut_design():
    params = SyntheticOpenWorldParams()
    rng = np.random.default_rng(0)
    seen = {True: set(), False: set()}
    families = set()
    for _ in range(40):
        scene = syn.generate_scene(rng, 96, params)
        for o in scene["objects"]:
            seen[o["novel"]].add(o["texture"])
            families.add(o["family"])
            assert (o["family"] in params.novel_families) == o["novel"]
    assert seen[False] == set(KNOWN_TEXTURES)  # known objects: known pool only
    assert seen[True] == set(BACKGROUND_TEXTURES)  # novel objects: background pool only
    assert families == set(SHAPE_FAMILIES)


def test_proposals(small):
    props = _load(small.train_proposals_json)
    train_all = _load(small.train_all_json)
    known_ids = set(range(1, 5))
    assert props["categories"] == [{"id": 1, "name": "object"}]
    assert [im["id"] for im in props["images"]] == list(range(1, SMALL["num_train"] + 1))
    gts, per_image = {}, {}
    for a in train_all["annotations"]:
        gts.setdefault(a["image_id"], []).append((a["category_id"] in known_ids, _decode(a)))
    hits = {"known": 0, "novel": 0, "fp": 0}
    top_k = SyntheticOpenWorldParams().proposal_top_k
    for p in props["annotations"]:
        assert p["category_id"] == 1 and p["iscrowd"] == 0 and 0 < p["score"] < 1
        assert set(p) == {"id", "image_id", "bbox", "area", "iscrowd", "category_id", "score",
                          "segmentation"}
        m = _decode(p)
        assert m.sum() == p["area"] > 0
        per_image.setdefault(p["image_id"], []).append(p["score"])
        best = max(((np.logical_and(m, g).sum() / np.logical_or(m, g).sum(), k)
                    for k, g in gts.get(p["image_id"], [])), default=(0.0, None))
        if best[0] >= 0.5:
            hits["known" if best[1] else "novel"] += 1
        elif best[0] < 0.1:
            hits["fp"] += 1
    assert hits["known"] > 0 and hits["novel"] > 0 and hits["fp"] > 0
    assert max(len(s) for s in per_image.values()) <= top_k
    assert all(s == sorted(s, reverse=True) for s in per_image.values())


def test_proposals_are_the_top_k_by_score():
    params = SyntheticOpenWorldParams(objects_per_image=(4, 6), proposal_fraction=1.0,
                                      proposal_false_positives=(3, 3), proposal_top_k=50)
    scene = syn.generate_scene(np.random.default_rng(3), 96, params)
    everything = syn.simulate_proposals(np.random.default_rng(4), scene["objects"], 96, params)
    few = syn.simulate_proposals(np.random.default_rng(4), scene["objects"], 96,
                                 dataclasses.replace(params, proposal_top_k=3))
    assert len(everything) == len(scene["objects"]) + 3 > 3
    assert [p["score"] for p in few] == [p["score"] for p in everything[:3]]
    assert sum(p["source"] == "false_positive" for p in everything) == 3


def test_cache_reuse_and_keys(small, roots):
    watched = [small.params_json, small.train_json,
               os.path.join(small.train_images, "000000.png")]
    before = [os.stat(p).st_mtime_ns for p in watched]
    again = ensure_synthetic_openworld(**SMALL, root=os.path.dirname(small.dir), progress=False)
    assert again == small
    assert [os.stat(p).st_mtime_ns for p in watched] == before
    variant = synthetic_openworld_files(**SMALL, root=os.path.dirname(small.dir),
                                        params=SyntheticOpenWorldParams(novel_fraction=0.6))
    assert variant.dir != small.dir and not os.path.exists(variant.dir)  # paths only
    assert synthetic_openworld_files(**{**SMALL, "image_size": 96},
                                     root=str(roots)).dir != small.dir


def test_default_root(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/d2")
    assert default_synthetic_root() == "/data/d2/synth_openworld"
    assert synthetic_openworld_files().dir.startswith("/data/d2/synth_openworld/")
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert default_synthetic_root() == os.path.join("datasets", "synth_openworld")


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = syn.writing._write_png

    def failing(path, rgb):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        real(path, rgb)

    monkeypatch.setattr(syn.writing, "_write_png", failing)
    kwargs = dict(num_train=5, num_val=2, image_size=32, root=str(tmp_path), progress=False)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_openworld(**kwargs)
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(syn.writing, "_write_png", real)
    files = ensure_synthetic_openworld(**kwargs)
    assert files.is_complete() and os.listdir(tmp_path) == [os.path.basename(files.dir)]


def test_another_process_finishing_first_wins(tmp_path, monkeypatch):
    kwargs = dict(num_train=3, num_val=2, image_size=32, root=str(tmp_path), progress=False)
    files = synthetic_openworld_files(**{k: v for k, v in kwargs.items() if k != "progress"})
    real = syn.writing._generate

    def racing(tmp, *args):
        real(tmp, *args)
        shutil.copytree(tmp, files.dir)  # the other process renames its copy first
        Path(files.dir, "theirs").touch()

    monkeypatch.setattr(syn.writing, "_generate", racing)
    assert ensure_synthetic_openworld(**kwargs) == files
    assert os.path.exists(os.path.join(files.dir, "theirs"))
    assert os.listdir(tmp_path) == [os.path.basename(files.dir)]


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_train=0), "num_train"),
    (dict(num_val=0), "num_val"),
    (dict(image_size=16), "image_size"),
    (dict(seed=-1), "seed"),
    (dict(workers=-1), "workers"),
    (dict(params=dict(novel_fraction=1.5)), "novel_fraction"),
    (dict(params=dict(proposal_fraction=-0.1)), "proposal_fraction"),
    (dict(params=dict(known_families=("ellipse", "blob"))), "known_families"),
    (dict(params=dict(novel_families=())), "novel_families"),
    (dict(params=dict(known_families=("ellipse", "ring"))), "overlap"),
    (dict(params=dict(known_textures=("noise",))), "known_textures"),
    (dict(params=dict(objects_per_image=(3, 2))), "objects_per_image"),
    (dict(params=dict(proposal_top_k=0)), "proposal_top_k"),
    (dict(params=dict(depth_colormap="rainbow")), "depth_colormap"),
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        if "params" in kwargs:
            kwargs = {**kwargs, "params": SyntheticOpenWorldParams(**kwargs["params"])}
        ensure_synthetic_openworld(**{"num_train": 2, "num_val": 1, "image_size": 32,
                                      "root": str(tmp_path), "progress": False, **kwargs})
    assert os.listdir(tmp_path) == []


def test_generate_tool(tmp_path, capsys):
    tool = load_tool("generate_synthetic")
    argv = ["--num-train", "4", "--num-val", "2", "--image-size", "48", "--root",
            str(tmp_path), "--no-progress"]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    assert str(tmp_path) in out and "generation time:" in out and "size on disk:" in out
    assert "4 train, 2 val" in out and "on novel objects" in out
    assert tool.main(argv) == 0
    assert "found in the cache" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.main(["--image-size", "8", "--root", str(tmp_path)])


SWAP = (("ring", "cross", "hexagon", "crescent"), ("ellipse", "rectangle", "triangle", "star"))


def test_generate_tool_family_split(tmp_path, capsys):
    tool = load_tool("generate_synthetic")
    argv = ["--num-train", "4", "--num-val", "2", "--image-size", "48", "--root",
            str(tmp_path), "--no-progress", "--known-families", *SWAP[0],
            "--novel-families", *SWAP[1]]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    assert "known classes:     ring, cross, hexagon, crescent" in out
    assert "novel classes:     ellipse, rectangle, triangle, star" in out
    with pytest.raises(SystemExit):  # overlaps the default novel families
        tool.main(["--root", str(tmp_path), "--known-families", "ring"])
    assert "overlap" in capsys.readouterr().err


def test_config_family_split_registers_another_set(tmp_path):
    """DATASETS.SYNTHETIC.KNOWN_FAMILIES / NOVEL_FAMILIES: a held-out split with its own cache
    folder, annotated by the swapped families; a bad family is named with the key."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from vclr_d2.config import add_vclr_config
    from vclr_d2.data.datasets import register_all, synthetic_kwargs

    cfg = get_cfg()
    add_vclr_config(cfg)
    cfg.DATASETS.SYNTHETIC.ROOT = str(tmp_path)
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN, cfg.DATASETS.SYNTHETIC.NUM_VAL = 6, 3
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = 48
    try:
        register_all(cfg)
        default_dir = os.path.dirname(MetadataCatalog.get("synth_openworld_train").json_file)
        cfg.DATASETS.SYNTHETIC.KNOWN_FAMILIES, cfg.DATASETS.SYNTHETIC.NOVEL_FAMILIES = map(
            list, SWAP)
        register_all(cfg)
        kwargs = synthetic_kwargs(cfg)
        assert kwargs["params"].known_families == SWAP[0] and kwargs["seed"] == 0
        assert synthetic_openworld_files(**kwargs).val_all_json == MetadataCatalog.get(
            "synth_openworld_val_all").json_file
        meta = MetadataCatalog.get("synth_openworld_val_all")
        assert meta.known_classes == list(SWAP[0]) and meta.novel_classes == list(SWAP[1])
        assert os.path.dirname(meta.json_file) != default_dir
        train = DatasetCatalog.get("synth_openworld_train")
        names = {c["name"]: c["id"] for c in _load(
            MetadataCatalog.get("synth_openworld_train").json_file)["categories"]}
        assert set(names) == set(SWAP[0])
        assert sum(len(d["annotations"]) for d in train) > 0
        cfg.DATASETS.SYNTHETIC.KNOWN_FAMILIES = ["ring", "blob"]
        with pytest.raises(ValueError, match="DATASETS.SYNTHETIC: known_families: unknown "
                                             "family 'blob'"):
            register_all(cfg)
    finally:
        register_all()  # back to the default names for the other tests
