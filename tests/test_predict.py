"""tools/predict.py and vclr_d2.engine.predictor: predictions on any images, drawn and as COCO
results, from the model a short training run produces."""

from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.structures import Boxes, Instances

from tests.test_trainer import TINY
from vclr_d2.engine.predictor import Source, draw, list_sources, select, to_coco_results
from vclr_d2.evaluation import evaluate_recall
from vclr_d2.utils import load_tool

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs/synthetic/vclr.yaml")


def _tool():
    return load_tool("predict")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-iteration training run of configs/synthetic/vclr.yaml on 64-px images, evaluated
    (teacher weights) at its end: (checkpoint, final metrics, synthetic dataset folder)."""
    tmp = tmp_path_factory.mktemp("predict")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp / "datasets"))
    out_dir = tmp / "out"
    run = subprocess.run([sys.executable, str(ROOT / "tools/train_net.py"), "--config-file",
                          CONFIG, *TINY, "OUTPUT_DIR", str(out_dir)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    metrics = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]
    final = {k: v for m in metrics for k, v in m.items() if k.startswith("synth_openworld")}
    (folder,) = glob.glob(str(tmp / "datasets/synth_openworld/*/"))
    return str(out_dir / "model_final.pth"), final, Path(folder)


def _predict(trained, *args):
    return _tool().main(["--config-file", CONFIG, "--weights", trained[0], *args,
                         "--opts", *TINY])


@pytest.mark.slow
def test_predictions_json_scores_as_the_evaluator_and_overlays_are_written(trained, tmp_path):
    weights, final, folder = trained
    gt = str(folder / "annotations/val_novel.json")
    out = tmp_path / "pred"
    # 4 validation images in batches of 3 + 1
    assert _predict(trained, "--input", str(folder / "val"), "--output", str(out),
                    "--coco-json", gt, "--batch-size", "3") == 0
    images = json.loads((out / "images.json").read_text())
    gt_images = {im["file_name"]: im["id"] for im in json.loads(Path(gt).read_text())["images"]}
    assert {os.path.basename(im["file_name"]): im["id"] for im in images["images"]} == gt_images
    assert images["branch"] == "teacher" and images["weights"] == weights
    for im in images["images"]:
        png = cv2.imread(im["overlay"])
        assert png.shape == (480, 480, 3)  # 64-px images drawn at --min-draw-size 480
        assert (im["height"], im["width"]) == (64, 64)
    results = json.loads((out / "predictions.json").read_text())
    assert results and {r["category_id"] for r in results} == {1}
    per_image = {i: sum(r["image_id"] == i for r in results) for i in gt_images.values()}
    assert all(0 < n <= 20 for n in per_image.values())  # TEST.DETECTIONS_PER_IMAGE 20
    # the training run's evaluation of the teacher, reproduced from the JSON alone
    for task in ("bbox", "segm"):
        ours = evaluate_recall(gt, results, task, max_dets=[1, 10, 20, 30, 50, 100])
        for key in ("AR@1", "AR@10", "AR@100"):
            theirs = final[f"synth_openworld_val_novel/{task}/{key}"]
            assert (math.isnan(ours[key]) and math.isnan(theirs)) or \
                abs(ours[key] - theirs) < 1e-6, (task, key)

    student = tmp_path / "student"
    assert _predict(trained, "--input", str(folder / "val/000000.png"), "--output",
                    str(student), "--student", "--no-draw") == 0
    assert json.loads((student / "images.json").read_text())["branch"] == "student"
    assert not list(student.glob("*.png"))
    first = [r["score"] for r in results if r["image_id"] == gt_images["000000.png"]]
    student_scores = [r["score"] for r in json.loads((student / "predictions.json").read_text())]
    assert len(student_scores) == len(first) and student_scores != first


@pytest.mark.slow
def test_video_frames_and_globs(trained, tmp_path):
    _, _, folder = trained
    frame = cv2.imread(str(folder / "val/000001.png"))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 64))
    for i in range(5):
        writer.write(np.roll(frame, 4 * i, axis=1))
    writer.release()
    out = tmp_path / "pred"
    assert _predict(trained, "--input", str(video), str(folder / "val/00000[23].png"),
                    "--output", str(out), "--frame-step", "2", "--top-k", "3") == 0
    images = json.loads((out / "images.json").read_text())["images"]
    assert [(Path(im["file_name"]).name, im["frame"], im["id"]) for im in images] == [
        ("clip.avi", 0, 1), ("clip.avi", 2, 2), ("clip.avi", 4, 3),
        ("000002.png", None, 4), ("000003.png", None, 5)]
    assert sorted(p.name for p in out.glob("*.png")) == [
        "000002.png", "000003.png", "clip_000000.png", "clip_000002.png", "clip_000004.png"]
    results = json.loads((out / "predictions.json").read_text())
    assert sorted({r["image_id"] for r in results}) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_bad_inputs_are_named(trained, tmp_path, capsys):
    _, _, folder = trained
    out = str(tmp_path / "pred")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": [{"id": 5, "file_name": "other.png"}]}))
    malformed = tmp_path / "malformed.json"
    malformed.write_text(json.dumps([{"id": 5}]))
    val0 = str(folder / "val/000000.png")
    cases = [
        (["--input", str(tmp_path / "nope.jpg")], "no such file or folder: " + str(tmp_path)),
        (["--input", str(tmp_path / "*.jpg")], "matches no image or video file"),
        (["--input", str(tmp_path)], f"folder {tmp_path} holds no image"),
        (["--input", str(ROOT / "README.md")], "README.md: not an image"),
        (["--input", val0, "--coco-json", str(other)],
         f"{val0} is not among the images of --coco-json {other}"),
        (["--input", val0, "--coco-json", str(malformed)], f"{malformed}: no 'images' list"),
    ]
    for args, message in cases:
        assert _predict(trained, *args, "--output", out) == 1, args
        assert message in capsys.readouterr().err, args
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert _predict(trained, "--input", str(broken), "--output", out) == 1
    assert f"cannot read image {broken}" in capsys.readouterr().err
    assert _tool().main(["--config-file", CONFIG, "--input", str(broken), "--output", out,
                         "--opts", *TINY]) == 1
    assert "set MODEL.WEIGHTS (or --weights)" in capsys.readouterr().err


def _instances(scores, size=(64, 64)):
    inst = Instances(size)
    n = len(scores)
    inst.scores = torch.tensor(scores)
    inst.pred_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 30.0]] * n))
    masks = torch.zeros(n, *size, dtype=torch.bool)
    masks[:, 10:28, 10:38] = True
    inst.pred_masks = masks
    inst.pred_classes = torch.zeros(n, dtype=torch.int64)
    return inst


def test_select_keeps_the_top_k_above_the_threshold():
    kept = select(_instances([0.1, 0.9, 0.5, 0.7]), top_k=2, score_thresh=0.6)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7])
    assert len(select(_instances([0.1, 0.9]), top_k=5, score_thresh=0.95)) == 0


def test_coco_results_are_class_agnostic_xywh_and_rle():
    (r,) = to_coco_results(_instances([0.75]), image_id=7)
    assert (r["image_id"], r["category_id"], r["score"]) == (7, 1, pytest.approx(0.75))
    assert r["bbox"] == pytest.approx([8.0, 8.0, 32.0, 22.0])
    mask = mask_util.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()})
    assert mask.sum() == 18 * 28 and mask[10:28, 10:38].all()


def test_draw_colours_the_mask_and_leaves_the_rest():
    image = np.full((64, 64, 3), 128, np.uint8)
    out = draw(image, _instances([0.8]), min_size=256)
    assert out.shape == (256, 256, 3)
    inside = out[4 * 14:4 * 24, 4 * 14:4 * 34].astype(int)  # inside the mask, away from edges
    assert np.abs(inside - 128).mean() > 10
    corner = out[4 * 50:, 4 * 50:].astype(int)  # far from the box and its label
    assert np.abs(corner - 128).max() <= 2


def test_sources_from_folders_globs_and_videos(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt", "c.mp4"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    sources = list_sources([str(tmp_path), str(tmp_path / "*.mp4"), str(tmp_path / "b.png")])
    assert sources == [Source(str(tmp_path / "a.jpg")), Source(str(tmp_path / "b.png")),
                       Source(str(tmp_path / "c.mp4"), True), Source(str(tmp_path / "b.png"))]
    with pytest.raises(ValueError, match=r"notes\.txt: not an image"):
        list_sources([str(tmp_path / "notes.txt")])
