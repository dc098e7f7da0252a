"""Data-preparation tools: open-world splits, proposal merging and student views."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vclr_d2.data import views
from vclr_d2.utils import InputError, load_tool

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"

VOC_IDS = {1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72}


_tool = load_tool  # tools/<name>.py as a module


def _cli(name, *args):
    return subprocess.run([sys.executable, str(TOOLS / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _read(path):
    return json.loads(Path(path).read_text())


@pytest.mark.parametrize("name", ["prepare_openworld_splits", "merge_proposals",
                                  "generate_views"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        _tool(name).main(["--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


# --------------------------------------------------------------------------- splits
@pytest.fixture
def coco_json(tmp_path):
    splits = _tool("prepare_openworld_splits")
    cats = [{"id": i, "name": n, "supercategory": "x"} for i, n in splits.COCO_CLASSES.items()]
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 100, "width": 100}
              for i in (1, 2, 3, 4)]

    def ann(i, img, cat, crowd=0):
        return {"id": i, "image_id": img, "category_id": cat, "bbox": [0, 0, 10, 10],
                "area": 100.0, "iscrowd": crowd, "segmentation": [[0, 0, 10, 0, 10, 10]]}

    anns = [ann(10, 1, 1), ann(11, 1, 22), ann(12, 2, 18, crowd=1), ann(13, 2, 47, crowd=1),
            ann(14, 3, 3), ann(15, 3, 88)]
    data = {"info": {"description": "fixture"}, "images": images, "annotations": anns,
            "categories": cats}
    return _write(tmp_path / "instances.json", data)


def test_known_sets_are_the_voc_and_coco_ids():
    splits = _tool("prepare_openworld_splits")
    assert set(splits.VOC_CLASSES) == VOC_IDS
    assert len(splits.COCO_CLASSES) == 80 and set(splits.VOC_CLASSES) < set(splits.COCO_CLASSES)
    cats = [{"id": i, "name": n} for i, n in splits.COCO_CLASSES.items()]
    assert splits.resolve_known_ids(cats, "voc") == VOC_IDS
    assert splits.resolve_known_ids(cats, "coco") == set(splits.COCO_CLASSES)


def test_split_voc_gives_expected_ids(coco_json, tmp_path):
    splits = _tool("prepare_openworld_splits")
    known_p, novel_p = tmp_path / "out/known.json", tmp_path / "out/novel.json"
    assert splits.main(["--ann", str(coco_json), "--out-known", str(known_p), "--out-novel",
                        str(novel_p), "--no-progress"]) == 0
    known, novel = _read(known_p), _read(novel_p)
    assert [a["id"] for a in known["annotations"]] == [10, 12, 14]
    assert [a["id"] for a in novel["annotations"]] == [11, 13, 15]
    assert [i["id"] for i in known["images"]] == [1, 2, 3, 4] == [i["id"] for i in novel["images"]]
    assert {a["id"]: a["iscrowd"] for a in known["annotations"]} == {10: 0, 12: 1, 14: 0}
    assert {a["id"]: a["iscrowd"] for a in novel["annotations"]} == {11: 0, 13: 1, 15: 0}
    assert {a["category_id"] for a in known["annotations"]} == {1, 18, 3}
    assert {c["id"] for c in known["categories"]} == VOC_IDS
    assert novel["categories"] == [{"id": 1, "name": "object"}]
    assert {a["category_id"] for a in novel["annotations"]} == {1}
    assert novel["annotations"][0]["segmentation"] == [[0, 0, 10, 0, 10, 10]]
    assert known["info"] == {"description": "fixture"}


def test_split_keep_labels_and_custom_classes(coco_json, tmp_path):
    splits = _tool("prepare_openworld_splits")
    novel_p = tmp_path / "novel.json"
    assert splits.main(["--ann", str(coco_json), "--out-novel", str(novel_p), "--keep-labels",
                        "--no-progress"]) == 0
    novel = _read(novel_p)
    assert {a["id"]: a["category_id"] for a in novel["annotations"]} == {11: 22, 13: 47, 15: 88}
    assert len(novel["categories"]) == 60 and not {c["id"] for c in novel["categories"]} & VOC_IDS

    known_p = tmp_path / "known.json"
    assert splits.main(["--ann", str(coco_json), "--known-classes", "person, Elephant",
                        "--out-known", str(known_p), "--out-novel", str(novel_p),
                        "--no-progress"]) == 0
    assert [a["id"] for a in _read(known_p)["annotations"]] == [10, 11]
    assert [a["id"] for a in _read(novel_p)["annotations"]] == [12, 13, 14, 15]


def test_split_errors_name_the_problem(coco_json, tmp_path, capsys):
    splits = _tool("prepare_openworld_splits")
    out = ["--out-known", str(tmp_path / "k.json")]
    assert splits.main(["--ann", str(coco_json), "--known-classes", "person,unicorn,yeti",
                        *out]) == 1
    err = capsys.readouterr().err
    assert "unicorn, yeti" in err and str(coco_json) in err
    data = _read(coco_json)
    del data["annotations"][2]["category_id"]
    bad = _write(tmp_path / "bad.json", data)
    assert splits.main(["--ann", str(bad), *out]) == 1
    err = capsys.readouterr().err
    assert "bad.json" in err and "annotations[2]" in err and "'category_id'" in err
    data = _read(coco_json)
    data["annotations"][0]["category_id"] = 999
    assert splits.main(["--ann", str(_write(tmp_path / "bad2.json", data)), *out]) == 1
    assert "999" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        splits.main(["--ann", str(coco_json)])  # no output
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        splits.main(["--ann", str(coco_json), "--known", "voc", "--known-classes", "cat", *out])


def test_split_cli(coco_json, tmp_path):
    r = _cli("prepare_openworld_splits", "--ann", coco_json, "--out-novel", tmp_path / "n.json")
    assert r.returncode == 0, r.stderr
    assert "novel: 3 annotations (1 crowd)" in r.stdout
    assert [a["id"] for a in _read(tmp_path / "n.json")["annotations"]] == [11, 13, 15]
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    r = _cli("prepare_openworld_splits", "--ann", bad, "--out-novel", tmp_path / "n2.json")
    assert r.returncode == 1 and "broken.json" in r.stderr and "not valid JSON" in r.stderr
    r = _cli("prepare_openworld_splits", "--ann", tmp_path / "missing.json", "--out-novel",
             tmp_path / "n2.json")
    assert r.returncode == 1 and "missing.json" in r.stderr and "not found" in r.stderr
    assert not (tmp_path / "n2.json").exists()


# --------------------------------------------------------------------------- proposals
def _rle_box(h, w, box):
    m = np.zeros((h, w), dtype=np.uint8, order="F")
    x, y, bw, bh = box
    m[y:y + bh, x:x + bw] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture
def proposal_inputs(tmp_path):
    gt = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 100, "width": 100}
                     for i in (1, 2, 3)],
          "annotations": [
              {"id": 5, "image_id": 1, "bbox": [0, 0, 10, 10], "category_id": 1, "area": 100,
               "iscrowd": 0},
              {"id": 7, "image_id": 2, "bbox": [50, 50, 20, 20], "category_id": 18,
               "area": 400, "iscrowd": 1}],
          "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]}

    def det(img, box, score, **kw):
        return {"image_id": img, "bbox": box, "score": score, "category_id": 7, **kw}

    dets = [
        det(1, [0, 0, 10, 10], 0.9),         # a: duplicates the ground truth
        det(1, [20, 20, 10, 10], 0.8),       # b: kept
        det(1, [21, 21, 10, 10], 0.7),       # c: NMS (IoU 0.68 with b)
        det(1, [40, 0, 10, 10], 0.6),        # d: kept
        det(1, [60, 0, 10, 10], 0.05),       # e: below threshold
        det(1, [80, 0, 10, 10], 0.5),        # f: beyond top-2
        det(2, [50, 50, 20, 20], 0.9),       # g: duplicates the crowd box
        det(2, [0, 0, 5, 5], 0.4, segmentation=_rle_box(100, 100, (0, 0, 4, 5))),  # h: kept
        det(2, [0, 0, 0, 5], 0.95),          # empty box
        det(99, [0, 0, 5, 5], 0.9),          # image not in the ground truth
    ]
    return _write(tmp_path / "dets.json", dets), _write(tmp_path / "gt.json", gt)


MERGE_OPTS = ["--score-thresh", "0.1", "--nms-iou", "0.5", "--gt-dedup-iou", "0.5",
              "--topk", "2", "--no-progress"]


def test_merge_selects_expected_proposals(proposal_inputs):
    mp = _tool("merge_proposals")
    dets_p, gt_p = proposal_inputs
    gt = _read(gt_p)
    dets = mp.read_detections(_read(dets_p), dets_p)
    selected, counts = mp.merge_proposals(dets, gt, 0.1, 0.5, 0.5, 2, progress=False)
    boxes = {i: [d["bbox"] for d in v] for i, v in selected.items()}
    assert boxes == {1: [[20, 20, 10, 10], [40, 0, 10, 10]], 2: [[0, 0, 5, 5]], 3: []}
    assert counts == {"read": 10, "unknown_image": 1, "degenerate": 1, "below_thresh": 1,
                      "nms": 1, "gt_dedup": 2, "topk": 1, "kept": 3, "images": 3,
                      "images_without_proposals": 1}
    # 1.0 turns NMS and ground-truth dedup off
    selected, counts = mp.merge_proposals(dets, gt, 0.0, 1.0, 1.0, 10, progress=False)
    assert [d["score"] for d in selected[1]] == [0.9, 0.8, 0.7, 0.6, 0.5, 0.05]
    assert [d["score"] for d in selected[2]] == [0.9, 0.4]
    assert counts["nms"] == counts["gt_dedup"] == counts["topk"] == 0


def test_merge_output_modes(proposal_inputs, tmp_path):
    mp = _tool("merge_proposals")
    dets_p, gt_p = proposal_inputs
    out, mix = tmp_path / "o/proposals.json", tmp_path / "o/mixed.json"
    assert mp.main(["--dets", str(dets_p), "--gt", str(gt_p), "--out", str(out), "--mix-out",
                    str(mix), *MERGE_OPTS]) == 0
    props = _read(out)
    assert props["images"] == _read(gt_p)["images"]
    assert props["categories"] == [{"id": 1, "name": "object"}]
    assert [(a["id"], a["image_id"], a["bbox"], a["score"]) for a in props["annotations"]] == [
        (1, 1, [20, 20, 10, 10], 0.8), (2, 1, [40, 0, 10, 10], 0.6), (3, 2, [0, 0, 5, 5], 0.4)]
    for a in props["annotations"]:
        assert a["iscrowd"] == 0 and a["category_id"] == 1 and "is_proposal" not in a
    assert [a["area"] for a in props["annotations"]] == [100.0, 100.0, 20.0]  # mask area
    assert props["annotations"][2]["segmentation"]["size"] == [100, 100]
    assert "segmentation" not in props["annotations"][0]

    mixed = _read(mix)
    anns = mixed["annotations"]
    assert [a["id"] for a in anns] == [5, 7, 8, 9, 10]
    assert len({a["id"] for a in anns}) == len(anns)
    assert [a.get("is_proposal") for a in anns] == [None, None, 1, 1, 1]
    assert anns[:2] == _read(gt_p)["annotations"]
    assert [a["bbox"] for a in anns[2:]] == [[20, 20, 10, 10], [40, 0, 10, 10], [0, 0, 5, 5]]
    assert mixed["categories"] == _read(gt_p)["categories"]
    assert {a["category_id"] for a in anns[2:]} == {1}


def test_merge_errors_name_the_problem(proposal_inputs, tmp_path, capsys):
    mp = _tool("merge_proposals")
    dets_p, gt_p = proposal_inputs
    out = ["--out", str(tmp_path / "p.json"), "--no-progress"]
    dets = _read(dets_p)
    del dets[3]["score"]
    bad = _write(tmp_path / "bad_dets.json", dets)
    assert mp.main(["--dets", str(bad), "--gt", str(gt_p), *out]) == 1
    err = capsys.readouterr().err
    assert "bad_dets.json" in err and "[3]" in err and "'score'" in err
    dets = _read(dets_p)
    dets[0]["bbox"] = [1, 2, 3]
    assert mp.main(["--dets", str(_write(bad, dets)), "--gt", str(gt_p), *out]) == 1
    assert "[1, 2, 3]" in capsys.readouterr().err
    assert mp.main(["--dets", str(dets_p), "--gt", str(tmp_path / "nope.json"), *out]) == 1
    assert "nope.json" in capsys.readouterr().err
    assert mp.main(["--dets", str(_write(bad, {"x": 1})), "--gt", str(gt_p), *out]) == 1
    assert "bad_dets.json" in capsys.readouterr().err
    other = _write(tmp_path / "other.json", [{"image_id": 42, "bbox": [0, 0, 1, 1], "score": 1}])
    assert mp.main(["--dets", str(other), "--gt", str(gt_p), *out]) == 1
    assert "image_id 42" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        mp.main(["--dets", str(dets_p), "--gt", str(gt_p), "--nms-iou", "1.5", *out])
    assert e.value.code == 2 and "--nms-iou" in capsys.readouterr().err


def test_merge_cli(proposal_inputs, tmp_path):
    dets_p, gt_p = proposal_inputs
    r = _cli("merge_proposals", "--dets", dets_p, "--gt", gt_p, "--mix-out",
             tmp_path / "mixed.json", *MERGE_OPTS)
    assert r.returncode == 0, r.stderr
    assert "detections read: 10" in r.stdout and "kept 3 proposals" in r.stdout
    assert "1 images without proposals" in r.stdout
    assert sum(a.get("is_proposal", 0) for a in _read(tmp_path / "mixed.json")["annotations"]) == 3


# --------------------------------------------------------------------------- views
class _Ramp(torch.nn.Module):
    """Depth = a left-to-right ramp from 0 to 1 at the input resolution."""

    def forward(self, x):
        w = x.shape[3]
        return torch.linspace(0.0, 1.0, w).view(1, 1, 1, w).expand(1, 1, x.shape[2], w)


class _TinyDepth(torch.nn.Module):
    """Random conv net with stride 2: depth at half resolution, 1xhxw."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)[:, 0]


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x.clone()


def _script(module, path):
    torch.jit.script(module.eval()).save(str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    return {"ramp": _script(_Ramp(), d / "ramp.pt"), "tiny": _script(_TinyDepth(), d / "tiny.pt"),
            "identity": _script(_Identity(), d / "identity.pt")}


@pytest.fixture
def image_dir(tmp_path):
    """coco/train2017 with three small images of different sizes, one of them a PNG."""
    d = tmp_path / "coco" / "train2017"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"000001.jpg": (48, 64), "000002.jpg": (40, 40),
                         "000003.png": (30, 256)}.items():
        img = (rng.random((h, w, 3)) * 40).astype(np.uint8)
        cv2.rectangle(img, (5, 5), (w // 2, h // 2), (200, 180, 160), -1)
        cv2.circle(img, (w * 2 // 3, h * 2 // 3), min(h, w) // 5, (30, 220, 90), -1)
        cv2.imwrite(str(d / name), img)
    return d


def _palette(cmap):
    return {tuple(c) for c in cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None],
                                                cmap)[:, 0]}


def test_edges_equal_opencv_and_layout(image_dir):
    counts = views.generate_views(image_dir, "edges", canny_low=50, canny_high=150, blur=3,
                                  progress=False)
    assert counts == {"edges": {"written": 3, "skipped": 0}}
    for src in sorted(image_dir.iterdir()):
        out = image_dir.parent / "train2017_edges" / f"{src.stem}.png"
        gray = cv2.GaussianBlur(cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2GRAY), (3, 3), 0)
        expected = cv2.cvtColor(cv2.Canny(gray, 50, 150), cv2.COLOR_GRAY2BGR)
        got = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
        assert got.shape == expected.shape and np.array_equal(got, expected)
        assert got.any()
    assert not list(image_dir.parent.glob("**/.*tmp*"))  # no temporary files left


def test_depth_ramp_is_colorized_at_image_size(image_dir, models, tmp_path):
    for invert in (False, True):
        out_root = tmp_path / f"views_{invert}"
        counts = views.generate_views(image_dir, "depth", out_root=out_root,
                                      depth_model=str(models["ramp"]), colormap="magma",
                                      invert_depth=invert, progress=False)
        assert counts == {"depth": {"written": 3, "skipped": 0}}
        got = cv2.imread(str(out_root / "train2017_depth_cmap" / "000003.png"))
        ramp = np.arange(256, dtype=np.uint8)[None].repeat(30, axis=0)
        if invert:
            ramp = ramp[:, ::-1]
        assert np.array_equal(got, cv2.applyColorMap(ramp, cv2.COLORMAP_MAGMA))
        other = cv2.imread(str(out_root / "train2017_depth_cmap" / "000001.png"))
        assert other.shape == (48, 64, 3)


def test_depth_tiny_convnet_and_workers_are_identical(image_dir, models, tmp_path):
    runs = {}
    for workers in (0, 2):
        root = tmp_path / f"w{workers}"
        views.generate_views(image_dir, ["edges", "depth", "style"], out_root=root,
                             depth_model=str(models["tiny"]), style_model=str(models["identity"]),
                             workers=workers, progress=False)
        runs[workers] = {p.relative_to(root): p.read_bytes()
                         for p in sorted(root.rglob("*")) if p.is_file()}
    assert len(runs[0]) == 9 and runs[0] == runs[2]
    palette = _palette(cv2.COLORMAP_INFERNO)
    for src in image_dir.iterdir():
        img = cv2.imread(str(src))
        depth = cv2.imread(str(tmp_path / "w0/train2017_depth_cmap" / f"{src.stem}.png"))
        assert depth.shape == img.shape
        assert {tuple(c) for c in depth.reshape(-1, 3)} <= palette
        style = cv2.imread(str(tmp_path / "w0/style_coco_train2017" / f"{src.stem}.jpg"))
        assert style.shape == img.shape
        # the identity style model returns the image: the view is its JPEG at quality 95
        jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
        assert np.array_equal(style, cv2.imdecode(jpeg, cv2.IMREAD_COLOR))


def _save_tiny_hf_depth(kind, folder):
    """A randomly initialised, tiny DPT or ZoeDepth with its image processor, saved locally."""
    tf = pytest.importorskip("transformers")
    vit = {"hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2,
           "intermediate_size": 32, "image_size": 32, "patch_size": 8}
    neck = {"neck_hidden_sizes": [8, 8, 8, 8], "fusion_hidden_size": 8}
    if kind == "dpt":
        model = tf.DPTForDepthEstimation(tf.DPTConfig(
            **vit, **neck, head_hidden_size=8, backbone_out_indices=[0, 1, 2, 3]))
        processor = tf.DPTImageProcessor(size={"height": 32, "width": 32})
    else:  # ZoeDepth: its processor pads the image, its post-processing removes the padding
        beit = tf.BeitConfig(**vit, out_features=["stage1", "stage2", "stage3", "stage4"],
                             use_relative_position_bias=True, reshape_hidden_states=False)
        model = tf.ZoeDepthForDepthEstimation(tf.ZoeDepthConfig(
            backbone_config=beit, **neck, reassemble_factors=[4, 2, 1, 0.5],
            bottleneck_features=8, num_relative_features=8, bin_embedding_dim=8,
            num_attractors=[4, 4, 4, 4],
            bin_configurations=[{"n_bins": 8, "min_depth": 0.001, "max_depth": 10.0,
                                 "name": "nyu"}]))
        processor = tf.ZoeDepthImageProcessor(size={"height": 32, "width": 32},
                                               ensure_multiple_of=8)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["dpt", "zoedepth"])
def test_depth_from_tiny_hf_model(kind, image_dir, tmp_path):
    folder = _save_tiny_hf_depth(kind, tmp_path / f"tiny-{kind}")
    counts = views.generate_views(image_dir, "depth", depth_model=str(folder), colormap="jet",
                                  progress=False)
    assert counts["depth"]["written"] == 3
    palette = _palette(cv2.COLORMAP_JET)
    for src in image_dir.iterdir():
        out = cv2.imread(str(image_dir.parent / "train2017_depth_cmap" / f"{src.stem}.png"))
        assert out.shape == cv2.imread(str(src)).shape
        assert {tuple(c) for c in out.reshape(-1, 3)} <= palette


def test_resume_skips_existing_and_overwrite_redoes(image_dir, models, caplog):
    kw = {"depth_model": str(models["ramp"]), "progress": False}
    views.generate_views(image_dir, "edges,depth", **kw)
    outs = sorted(image_dir.parent.glob("train2017_*/*.png"))
    assert len(outs) == 6
    past = 1_000_000_000
    for p in outs:
        os.utime(p, (past, past))
    with caplog.at_level("INFO", logger="vclr_d2.data.views"):
        counts = views.generate_views(image_dir, "edges,depth,style", **kw)
    assert counts == {"style": {"written": 0, "skipped": 0, "skipped_no_model": 3},
                      "edges": {"written": 0, "skipped": 3},
                      "depth": {"written": 0, "skipped": 3}}
    assert "no --style-model" in caplog.text and "skipped" in caplog.text
    assert all(p.stat().st_mtime == past for p in outs)
    (image_dir.parent / "train2017_edges" / "000002.png").unlink()
    counts = views.generate_views(image_dir, "edges", **kw)
    assert counts["edges"] == {"written": 1, "skipped": 2}
    counts = views.generate_views(image_dir, "edges,depth", overwrite=True, **kw)
    assert counts == {"edges": {"written": 3, "skipped": 0}, "depth": {"written": 3, "skipped": 0}}
    assert all(p.stat().st_mtime != past for p in outs)


def test_views_errors_name_the_problem(image_dir, tmp_path, capsys):
    with pytest.raises(InputError, match="nowhere"):
        views.generate_views(tmp_path / "nowhere", "edges", progress=False)
    with pytest.raises(InputError, match="--depth-model"):
        views.generate_views(image_dir, "depth", progress=False)
    with pytest.raises(InputError, match="valid: edges, depth, style"):
        views.generate_views(image_dir, "edges,normals", progress=False)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="junk.pt"):
        views.generate_views(image_dir, "depth", depth_model=str(junk), progress=False)
    with pytest.raises(InputError, match="config.json"):
        views.generate_views(image_dir, "depth", depth_model=str(tmp_path), progress=False)
    (image_dir / "000004.jpg").write_bytes(b"broken")
    with pytest.raises(InputError, match="000004.jpg"):
        views.generate_views(image_dir, "edges", progress=False)
    gv = _tool("generate_views")  # the command line: InputError -> message, status 1
    assert gv.main(["--images", str(image_dir), "--views", "depth", "--colormap", "nope",
                    "--depth-model", str(junk)]) == 1
    err = capsys.readouterr().err
    assert "'nope'" in err and "inferno" in err and "magma" in err
    with pytest.raises(SystemExit) as e:
        gv.main(["--images", str(image_dir), "--blur", "4"])
    assert e.value.code == 2


def test_views_cli(image_dir, tmp_path):
    out = tmp_path / "views"
    r = _cli("generate_views", "--images", image_dir, "--views", "edges", "--out-root", out,
             "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "edges: 3 written, 0 existing skipped" in r.stdout
    assert sorted(p.name for p in (out / "train2017_edges").iterdir()) == [
        "000001.png", "000002.png", "000003.png"]
    r = _cli("generate_views", "--images", image_dir, "--views", "edges", "--out-root", out)
    assert r.returncode == 0 and "edges: 0 written, 3 existing skipped" in r.stdout
    r = _cli("generate_views", "--images", tmp_path / "missing", "--views", "edges")
    assert r.returncode == 1 and "missing" in r.stderr



def test_views_main_end_to_end(image_dir, models, tmp_path, capsys):
    """The command line in-process: options -> library call -> one line per view, status 0;
    the files are those of the library call with the same options."""
    gv = _tool("generate_views")
    out = tmp_path / "cli"
    assert gv.main(["--images", str(image_dir), "--views", "depth,edges", "--out-root", str(out),
                    "--depth-model", str(models["ramp"]), "--colormap", "magma", "--blur", "3",
                    "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"edges: 3 written, 0 existing skipped -> {out / 'train2017_edges'}",
                     f"depth: 3 written, 0 existing skipped -> {out / 'train2017_depth_cmap'}"]
    lib = tmp_path / "lib"
    views.generate_views(image_dir, "depth,edges", out_root=lib, depth_model=str(models["ramp"]),
                         colormap="magma", blur=3, progress=False)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert len(files) == 6
    assert files == sorted(p.relative_to(lib) for p in lib.rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (lib / f).read_bytes() for f in files)


def test_edges_view_blur_and_channel_order():
    """blur 0 (or 1) is plain Canny, the synthetic set's edges view; blur k blurs first."""
    rng = np.random.default_rng(1)
    bgr = (rng.random((37, 53, 3)) * 60).astype(np.uint8)
    cv2.rectangle(bgr, (4, 5), (30, 25), (40, 200, 230), -1)
    cv2.circle(bgr, (40, 20), 9, (250, 30, 90), -1)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    plain = cv2.cvtColor(cv2.Canny(gray, 100, 200), cv2.COLOR_GRAY2BGR)
    assert plain.any()
    assert np.array_equal(views.edges_view(bgr, blur=0), plain)
    assert np.array_equal(views.edges_view(bgr, blur=1), plain)
    blurred = cv2.Canny(cv2.GaussianBlur(gray, (5, 5), 0), 100, 200)
    assert np.array_equal(views.edges_view(bgr), cv2.cvtColor(blurred, cv2.COLOR_GRAY2BGR))
    assert not np.array_equal(blurred, plain[..., 0])
    # an RGB image: the RGB grayscale weights; equal to the synthetic set's formula
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    synthetic = cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 100.0, 200.0)
    got = views.edges_view(rgb, 100, 200, blur=0, channels="RGB")
    assert got.shape == (37, 53, 3) and got.dtype == np.uint8
    assert np.array_equal(got, np.repeat(synthetic[..., None], 3, 2))
    assert np.array_equal(got, plain)
    with pytest.raises(ValueError, match="channels"):
        views.edges_view(bgr, channels="BGRA")


def test_views_layout_is_the_tools_documented_layout(tmp_path):
    """output_dirs/output_path follow layout.LAYOUT, which is what the tool's --help states."""
    image_dir = tmp_path / "coco" / "train2017"
    dirs = views.output_dirs(image_dir)
    assert dirs == {"depth": tmp_path / "coco" / "train2017_depth_cmap",
                    "style": tmp_path / "coco" / "style_coco_train2017",
                    "edges": tmp_path / "coco" / "train2017_edges"}
    assert views.output_dirs(image_dir, tmp_path / "v")["style"] == (
        tmp_path / "v" / "style_coco_train2017")
    img = image_dir / "000000000009.jpg"
    assert [views.output_path(dirs, v, img).name for v in views.VIEWS] == [
        "000000000009.png", "000000000009.png", "000000000009.jpg"]
    doc = _tool("generate_views").__doc__
    for name, spec in views.LAYOUT.items():
        folder = spec.folder.replace("{split}", "<split>")
        assert f"* {name}: ``<root>/{folder}/<stem>{spec.ext}``" in doc
    assert views.ToolError is InputError  # the tool's former exception name


# ----------------------------------------------------------------------------- embedding_stats


def test_embedding_similarity_stats_exact_values():
    stats = _tool("embedding_stats").similarity_stats
    # orthonormal embeddings: distinct locations have cosine 0; centred (minus 1/4 of the
    # all-ones vector) their cosine is -1/3; the mean of the 4 unit vectors has norm 1/2
    q = [torch.eye(4)]
    s = stats(q, [torch.tensor([0.1, 0.4, 0.3, 0.2])], pairs=1000, top=4)
    assert s["locations"] == 4
    assert abs(s["random_pair_cos"]) < 1e-12 and abs(s["top_pair_cos"]) < 1e-12
    assert abs(s["mean_direction_norm"] - 0.5) < 1e-12
    assert abs(s["centred_random_pair_cos"] + 1 / 3) < 1e-12
    assert abs(s["centred_top_pair_cos"] + 1 / 3) < 1e-12
    # parallel embeddings of different lengths: every cosine 1, mean direction of norm 1
    s = stats([torch.tensor([[1.0, 2.0], [3.0, 6.0]]), torch.tensor([[0.5, 1.0]])],
              [torch.zeros(2), torch.zeros(1)], pairs=50, top=2)
    assert abs(s["random_pair_cos"] - 1) < 1e-12 and abs(s["mean_direction_norm"] - 1) < 1e-12
    assert abs(s["top_pair_cos"] - 1) < 1e-12  # the 1-location image is left out of top pairs
    # top pairs are taken among the highest objectness: the two equal high-objectness rows
    q = [torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])]
    s = stats(q, [torch.tensor([5.0, 4.0, -1.0, -2.0])], pairs=2000, top=2)
    assert abs(s["top_pair_cos"] - 1) < 1e-12
    # 6 ordered pairs of distinct locations, one of them parallel: random pairs average 1/6
    assert abs(s["random_pair_cos"] - 1 / 6) < 0.03


def test_embedding_similarity_stats_rejects_bad_input():
    stats = _tool("embedding_stats").similarity_stats
    with pytest.raises(ValueError, match="one entry per location"):
        stats([torch.eye(3)], [torch.zeros(2)], pairs=10, top=2)
    with pytest.raises(ValueError, match="at least 2 locations"):
        stats([torch.eye(1)], [torch.zeros(1)], pairs=10, top=2)


def test_benchmark_padding_ratio_counts_the_padded_batch_pixels():
    ratio = _tool("benchmark").padding_ratio
    img = lambda h, w: {"image": torch.zeros(3, h, w, dtype=torch.uint8)}  # noqa: E731
    # a portrait and a landscape image pad each other to 64 x 64: twice their pixels
    assert ratio([[img(64, 32), img(32, 64)]]) == 2.0
    # 100 x 100 pads to 128 x 128 at divisibility 32, not at 4
    assert ratio([[img(100, 100)]]) == 128 * 128 / 100 ** 2
    assert ratio([[img(100, 100)]], size_divisibility=4) == 1.0
    # over batches: (2 * 64 * 64 + 64 * 64) / (2 * 32 * 64 + 64 * 64)
    assert ratio([[img(64, 32), img(32, 64)], [img(64, 64)]]) == 1.5


def test_benchmark_count_leaf_ops_counts_operators_that_call_no_other():
    from types import SimpleNamespace as E

    count = _tool("benchmark").count_leaf_ops
    leaf = E(name="aten::mul", cpu_children=[])
    # aten::add calls aten::mul (not a leaf); a non-aten event with an aten child is skipped
    events = [E(name="aten::add", cpu_children=[leaf]), leaf,
              E(name="aten::fill_", cpu_children=[E(name="other", cpu_children=[])]),
              E(name="Optimizer.step", cpu_children=[leaf]),
              E(name="aten::as_strided", cpu_children=[])]  # a view: no kernel
    assert count(events) == 2
    # a real profile: x * y + z runs two leaf operators, x.sum() one more (its output's fill_;
    # its as_strided is a view)
    from torch.profiler import ProfilerActivity, profile

    x, y, z = torch.ones(4), torch.ones(4), torch.ones(4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        (x * y + z).sum()
    assert count(prof.events()) == 3


def test_metrics_table_means_per_window(tmp_path, capsys):
    tool = _tool("metrics_table")
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"iteration": i, "vclr/num_pseudo": float(i // 10)} for i in range(0, 30, 5)]
    lines.insert(3, {"iteration": 14, "bbox/AR@100": 50.0})  # an evaluation line: skipped
    (run / "metrics.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    # iterations 0,5 -> 0,0; 10,15 -> 1,1; 20,25 -> 2,2; windows of 10 from 0
    assert tool.window_means(tool.read_metrics(run), "vclr/num_pseudo", 10) == [
        (0, 9, 0.0), (10, 19, 1.0), (20, 25, 2.0)]
    means = tool.window_means(tool.read_metrics(run), "vclr/num_pseudo", 20, start=5, end=44)
    assert means[0] == (5, 24, 1.0) and means[1][:2] == (25, 44) and means[1][2] == 2.0
    out = tmp_path / "m.json"
    assert tool.main([str(run), "--key", "vclr/num_pseudo", "--window", "10",
                      "--output", str(out)]) == 0
    assert "| 0-9 | 10-19 | 20-25 |" in capsys.readouterr().out
    assert [w["mean"] for w in json.loads(out.read_text())["vclr/num_pseudo"][str(run)]] == [
        0.0, 1.0, 2.0]
    # errors name the file, the line, the key, the value
    assert tool.main([str(run), "--key", "vclr/num_pseudo", "--start", "30"]) == 1
    assert "--start 30 is after the last iteration 25" in capsys.readouterr().err
    assert tool.main([str(run), "--key", "loss_nope"]) == 1
    assert "'loss_nope': logged by none" in capsys.readouterr().err
    (run / "metrics.json").write_text('{"iteration": 0, "a": 1}\n{"iteration": 1,\n')
    assert tool.main([str(run), "--key", "a"]) == 1
    assert "metrics.json, line 2: not JSON" in capsys.readouterr().err
    assert tool.main([str(tmp_path / "none"), "--key", "a"]) == 1
    assert "none: no such metrics file" in capsys.readouterr().err
    with pytest.raises(InputError, match="--window must be positive, got 0"):
        tool.window_means([{"iteration": 0, "a": 1}], "a", 0)


def test_plot_curves_means_per_evaluation_and_draws_them(tmp_path, capsys):
    tool = _tool("plot_curves")
    assert tool.row_of(tmp_path / "i5600" / "b_seed2") == "i5600/b"
    assert tool.row_of(tmp_path / "x" / "demo" / "metrics.json") == "x/demo"
    assert tool.key_title("bbox/AR@100_unseen") == "novel box AR@100"
    assert tool.key_title("segm/AR@10_seen") == "known mask AR@10"
    assert tool.key_title("vclr/num_pseudo") == "vclr/num_pseudo"

    def run(parent, name, evals):
        folder = tmp_path / parent / name
        folder.mkdir(parents=True)
        lines = [{"iteration": i, "lr": 0.001, "total_loss": 1.0} for i in range(19, 40, 20)]
        lines += [{"iteration": i, "bbox/AR@100_unseen": v} for i, v in evals.items()]
        (folder / "metrics.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
        return str(folder)

    # periodic evaluations after steps 19 (20 done); the last one after training, logged at 40
    b = [run("p", f"b_seed{s}", {19: 10.0 + s, 40: 20.0 + 2 * s}) for s in range(3)]
    a = [run("p", "a_seed0", {19: 5.0})]
    assert tool.values_by_iteration(tool.read_metrics(b[1]), "bbox/AR@100_unseen") == {
        20: 11.0, 40: 22.0}
    table = tool.curves({"p/b": {r: tool.read_metrics(r) for r in b}}, "bbox/AR@100_unseen")
    assert table["p/b"] == [(20, 11.0, 1.0, 3), (40, 22.0, 2.0, 3)]
    png = tmp_path / "curves.png"
    assert tool.main([*b, *a, "--key", "bbox/AR@100_unseen", "--label", "p/b=(b)",
                      "--output", str(png), "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "| (b) | 3 | 11.0 ± 1.0 | 22.0 ± 2.0 |" in out
    assert "| p/a | 1 | 5.0 | - |" in out  # one run: no sd; no value at 40
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imread(str(png)).shape == (380, 500, 3)  # one panel, 5.0 x 3.8 in at 100 dpi
    saved = json.loads((tmp_path / "c.json").read_text())["bbox/AR@100_unseen"]
    assert saved["p/a"] == [{"iterations": 20, "mean": 5.0, "sd": None, "runs": 1}]
    # errors name the key, run, row, label, file
    assert tool.main([*a, "--key", "segm/AR@100"]) == 1
    assert f"'segm/AR@100': {a[0]} logged no value" in capsys.readouterr().err
    late = run("q", "c_seed1", {39: 1.0})
    assert tool.main([run("q", "c_seed0", {19: 1.0}), late, "--key", "bbox/AR@100_unseen"]) == 1
    assert "runs of row q/c" in capsys.readouterr().err
    assert tool.main([*a, "--label", "p/z=(z)"]) == 1
    assert "no row 'p/z'" in capsys.readouterr().err
    assert tool.main([*a, "--label", "p/a"]) == 1
    assert "expected ROW=TEXT" in capsys.readouterr().err
    assert tool.main([*a, b[0], "--label", "p/a=p/b"]) == 1
    assert "'p/b' names another row already" in capsys.readouterr().err
    assert tool.main([*a, "--label", "p/a="]) == 1
    assert "expected ROW=TEXT" in capsys.readouterr().err
    text = run("q", "t_seed0", {19: "n/a"})
    assert tool.main([text, "--key", "bbox/AR@100_unseen"]) == 1
    assert f"{text} logged a value that is not a number" in capsys.readouterr().err
    assert tool.main([*a, "--output", str(tmp_path / "c.txt")]) == 1
    assert "c.txt: not a .png, .pdf or .svg file" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["metrics_table", "plot_curves"])
def test_metrics_tools_reject_a_negative_or_fractional_digits(name, tmp_path, capsys):
    tool = _tool(name)
    run = tmp_path / "r_seed0"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"iteration": 9, "lr": 0.1, "a": 1.25}) + "\n")
    with pytest.raises(SystemExit) as e:  # argparse's usage error, status 2, not a traceback
        tool.main([str(run), "--key", "a", "--digits", "-1"])
    assert e.value.code == 2
    assert "argument --digits: -1 is negative; give 0 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([str(run), "--key", "a", "--digits", "1.5"])
    assert "argument --digits: '1.5' is not a whole number" in capsys.readouterr().err
    assert tool.main([str(run), "--key", "a", "--digits", "0"]) == 0
    # the table's last cell is the value: 1.25 printed with no decimals ("1.2" with --digits 1)
    assert capsys.readouterr().out.rstrip().splitlines()[-1].endswith(" | 1 |")
