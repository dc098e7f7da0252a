"""Self-training and proposal comparisons: soft proposal targets, proposal variants of a
dataset, the summary table, and tools/self_train.py, tools/compare_proposals.py and
tools/eval_proposals.py end to end on a tiny synthetic set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from torchvision.ops import box_iou, sigmoid_focal_loss

from tests.model_utils import scene, training_input
from tests.train_utils import TINY as BASE_TINY
from vclr_d2.data.datasets import register_all, register_proposal_variant
from vclr_d2.data.datasets.synthetic import ensure_synthetic_openworld
from vclr_d2.discovery import DiscoveryParams, ObjectDiscoverer, PixelFeatures, discover_dataset
from vclr_d2.engine import get_vclr_cfg, summary_table
from vclr_d2.evaluation import evaluate_recall
from vclr_d2.modeling.criterion import VCLRCriterion
from vclr_d2.modeling.soft_targets import proposal_weight_map
from vclr_d2.utils import load_tool

ROOT = Path(__file__).resolve().parents[1]
# tests.train_utils.TINY (8 training images of 64 px, a small head, no evaluation), 2 iterations
TINY = [*BASE_TINY, "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)"]


_tool = load_tool


def _run(tool: str, *args) -> str:
    """Run tools/<tool>.py in a fresh process, as a user does; its output."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), *map(str, args)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _read(path):
    return json.loads(Path(path).read_text())


@pytest.mark.parametrize("name", ["self_train", "compare_proposals", "eval_proposals"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        _tool(name).main(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


# --------------------------------------------------------------------------- soft targets
def test_soft_targets_weight_the_objectness_of_proposal_positives(model_cfg):
    model = build_model(model_cfg).train()
    image, masks = scene()
    x = training_input(image, masks, proposals=[(0, 0, 9, 9), (100, 2, 126, 10)])
    x["proposals"].scores = torch.tensor([0.25, 0.5])
    images = model.preprocess([x], "image", augment=False)
    (t,) = targets = model.prepare_targets([x], tuple(images.tensor.shape[-2:]))
    assert t.weights.tolist() == [1.0] * 4 + [0.25, 0.5]
    with torch.no_grad():
        out = model.head(model.backbone(images.tensor))
    matches = model._match(out, targets, images.image_sizes)
    pred_idx, tgt_idx = matches[0]
    weights = proposal_weight_map(out.objectness, targets, matches)
    assert weights[0, pred_idx].tolist() == t.weights[tgt_idx].tolist()
    assert (weights == 1).sum() == weights.numel() - int((~t.is_gt[tgt_idx]).sum())

    def score_losses(on: bool, mode: str) -> dict[str, float]:
        model_cfg.MODEL.VCLR_LOSS.PROPOSAL_SCORE_WEIGHTING = on
        model_cfg.MODEL.VCLR_LOSS.SCORE_LOSS = mode
        losses = VCLRCriterion(model_cfg).detection_losses(
            out, targets, matches, images.image_sizes, model.head.mask_logits)
        return {k: v.item() for k, v in losses.items() if k.endswith("score")}

    prop = ~t.is_gt[tgt_idx]
    focal = sigmoid_focal_loss(out.objectness[0, pred_idx[prop]], torch.ones(int(prop.sum())),
                               alpha=0.25, gamma=2.0, reduction="none")
    lost = (focal * (1 - t.weights[tgt_idx[prop]])).sum().item()
    assert prop.sum() == 2
    # split: L_obj's focal term over its 2 positives loses the down-weighted part
    off, on = score_losses(False, "split"), score_losses(True, "split")
    assert on["loss_obj_score"] == pytest.approx(off["loss_obj_score"] - 4.0 * lost / 2, rel=1e-5)
    assert on["loss_gt_score"] == off["loss_gt_score"]  # L_gt's weights are all 1
    # joint: one focal loss normalised by all positives
    off, on = score_losses(False, "joint"), score_losses(True, "joint")
    assert on["loss_score"] == pytest.approx(off["loss_score"] - 4.0 * lost / len(pred_idx),
                                             rel=1e-5)


def test_score_weights_take_pseudo_label_positives_out_of_the_objectness_loss(model_cfg):
    """Targets.score_weights (the pseudo-labels' SCORE_WEIGHT) scale the objectness loss of
    their matched locations whatever PROPOSAL_SCORE_WEIGHTING says; boxes and masks stay."""
    import dataclasses

    model = build_model(model_cfg).train()
    image, masks = scene()
    x = training_input(image, masks, proposals=[(0, 0, 9, 9), (100, 2, 126, 10)])
    images = model.preprocess([x], "image", augment=False)
    (t,) = model.prepare_targets([x], tuple(images.tensor.shape[-2:]))
    with torch.no_grad():
        out = model.head(model.backbone(images.tensor))
    matches = model._match(out, [t], images.image_sizes)
    pred_idx, tgt_idx = matches[0]
    # the last two targets play the pseudo-labels: weight 0
    ignored = dataclasses.replace(t, score_weights=torch.tensor([1.0] * 4 + [0.0, 0.0]))
    model_cfg.MODEL.VCLR_LOSS.SCORE_LOSS = "joint"
    crit = VCLRCriterion(model_cfg)

    def losses(targets):
        return {k: v.item() for k, v in crit.detection_losses(
            out, [targets], matches, images.image_sizes, model.head.mask_logits).items()}

    plain, cut = losses(t), losses(ignored)
    prop = ~t.is_gt[tgt_idx]
    assert prop.sum() == 2
    focal = sigmoid_focal_loss(out.objectness[0, pred_idx[prop]], torch.ones(2), alpha=0.25,
                               gamma=2.0, reduction="none").sum().item()
    # joint: positives of the proposal term weigh 4 (MODEL.VCLR_LOSS defaults), over all positives
    assert cut["loss_score"] == pytest.approx(plain["loss_score"] - 4.0 * focal / len(pred_idx),
                                              rel=1e-5)
    assert {k: v for k, v in cut.items() if k != "loss_score"} == {
        k: v for k, v in plain.items() if k != "loss_score"}


# --------------------------------------------------------------------------- variants, table
def test_proposal_variant_replaces_proposals_and_keeps_ground_truth(tmp_path):
    cfg = get_vclr_cfg(str(ROOT / "configs/synthetic/vclr.yaml"),
                       TINY + ["DATASETS.SYNTHETIC.ROOT", str(tmp_path)])
    register_all(cfg)
    base = DatasetCatalog.get("synth_openworld_train")
    props = {"images": [], "annotations": [
        {"id": 1, "image_id": base[0]["image_id"], "bbox": [1, 2, 3, 4], "score": 0.5,
         "category_id": 1}], "categories": [{"id": 1, "name": "object"}]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(props))
    cfg.DATASETS.OPENWORLD.PROPOSAL_VARIANTS = [f"_test_variant=synth_openworld_train:{path}"]
    register_all(cfg)
    dicts = DatasetCatalog.get("_test_variant")
    assert [d["annotations"] for d in dicts] == [d["annotations"] for d in base]
    assert [len(d["pseudo_annotations"]) for d in dicts] == [1] + [0] * 7
    assert dicts[0]["pseudo_annotations"][0]["bbox"] == [1.0, 2.0, 3.0, 4.0]
    meta = MetadataCatalog.get("_test_variant")
    assert meta.json_file == MetadataCatalog.get("synth_openworld_train").json_file
    assert meta.proposals_file == str(path) and meta.base_dataset == "synth_openworld_train"
    cfg.DATASETS.OPENWORLD.PROPOSAL_VARIANTS = ["no_colon=synth_openworld_train"]
    with pytest.raises(ValueError, match="no_colon"):
        register_all(cfg)
    # your own dataset by config: a COCO file, its images and a separate proposals file
    cfg.DATASETS.OPENWORLD.PROPOSAL_VARIANTS = []
    cfg.DATASETS.OPENWORLD.CUSTOM = [["_test_own", meta.json_file,
                                      MetadataCatalog.get("synth_openworld_train").image_root,
                                      str(path)]]
    register_all(cfg)
    own = DatasetCatalog.get("_test_own")
    assert [len(d["pseudo_annotations"]) for d in own] == [1] + [0] * 7
    assert MetadataCatalog.get("_test_own").evaluator_type == "openworld"
    cfg.DATASETS.OPENWORLD.CUSTOM = [["_test_own", meta.json_file]]
    with pytest.raises(ValueError, match="CUSTOM entry"):
        register_all(cfg)
    with pytest.raises(KeyError, match="'nope' is not registered"):
        register_proposal_variant("x", "nope", str(path))


def test_summary_table_means_spreads_and_paired_differences():
    def res(novel, seen):
        return {"val": {"bbox": {"AR@10": novel + seen, "AR@10_seen": seen,
                                 "AR@10_unseen": novel, "AR@1": 0.0}}}

    table = summary_table({"round 1": [res(10, 20), res(12, 20)],
                           "round 2": [res(13, 21), res(17, 21)]}, reference="round 1")
    lines = table.splitlines()
    assert lines[0] == "| dataset | objects | metric | round 1 | round 2 | round 2 - round 1 |"
    assert lines[2:] == [
        "| val | all | box AR@10 | 31.0 ± 1.4 | 36.0 ± 2.8 | 5.0 ± 1.4 |",
        "| val | known | box AR@10 | 20.0 ± 0.0 | 21.0 ± 0.0 | 1.0 ± 0.0 |",
        "| val | novel | box AR@10 | 11.0 ± 1.4 | 15.0 ± 2.8 | 4.0 ± 1.4 |",
    ]


# --------------------------------------------------------------------------- tools end to end
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("selftrain_data"))


def test_own_images_discovery_merge_and_two_self_training_rounds(tiny_root, tmp_path):
    """The README's path for your own data: images + known-class COCO file + a local timm
    checkpoint -> discover_objects -> merge_proposals -> self_train (2 rounds), each a fresh
    process; the tiny synthetic set's images and known-family ground truth stand in."""
    import timm

    files = ensure_synthetic_openworld(num_train=8, num_val=4, image_size=64, seed=0,
                                       root=tiny_root, progress=False)
    ckpt = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict(), ckpt)
    disc, mixed = tmp_path / "discovered.json", tmp_path / "train_mixed.json"
    _run("discover_objects", "--gt", files.train_json, "--image-root", files.train_images,
         "--source", f"timm:vit_tiny_patch16_224={ckpt}", "--input-size", "64",
         "--out", disc, "--no-progress")
    _run("merge_proposals", "--dets", disc, "--gt", files.train_json, "--topk", "2",
         "--mix-out", mixed, "--no-progress")
    num_base = sum(a.get("is_proposal", 0) for a in _read(mixed)["annotations"])
    assert num_base > 0

    out = tmp_path / "st"
    args = ["--config-file", str(ROOT / "configs/synthetic/vclr.yaml"), "--rounds", "2",
            "--output", str(out), "--topk", "3", "--soft-targets", "--merge-base-proposals",
            *TINY, "DATASETS.SYNTHETIC.ROOT", tiny_root,
            "DATASETS.OPENWORLD.CUSTOM", f"[['my_train', '{mixed}', '{files.train_images}']]",
            "DATASETS.TRAIN", "('my_train',)",
            # a set with known classes in its ground truth and a novel-only one
            "DATASETS.TEST", "('synth_openworld_val_novel', 'synth_openworld_val_all')"]
    log = _run("self_train", *args)
    assert "| round 1 | round 2 | round 2 - round 1 |" in log
    r1, r2 = out / "seed0" / "round_1", out / "seed0" / "round_2"
    for f in ("config.yaml", "model_final.pth", "metrics.json"):
        assert (r1 / f).is_file() and (r2 / f).is_file()
    assert not (r1 / "proposals.json").exists()

    # round 2's proposals: the round-1 teacher's predictions and the discovered proposals,
    # selected
    props, counts = _read(r2 / "proposals.json"), _read(r2 / "selection.json")
    cfg2 = get_vclr_cfg(str(r2 / "config.yaml"))
    register_all(cfg2)
    gt = _read(files.train_json)
    assert [i["id"] for i in props["images"]] == [i["id"] for i in gt["images"]]
    assert counts["images"] == 8 and counts["kept"] == len(props["annotations"]) > 0
    # DETECTIONS_PER_IMAGE predictions of every image, and the round-1 proposals
    assert counts["read"] == 8 * 20 + num_base
    per_image = {}
    for a in props["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
        assert a["category_id"] == 1 and "segmentation" in a
    assert max(len(v) for v in per_image.values()) <= 3
    for image_id, anns in per_image.items():
        assert [a["score"] for a in anns] == sorted((a["score"] for a in anns), reverse=True)
        gt_boxes = [g["bbox"] for g in gt["annotations"] if g["image_id"] == image_id]
        if gt_boxes:
            xyxy = [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in
                    [a["bbox"] for a in anns] + gt_boxes]
            iou = box_iou(torch.tensor(xyxy[:len(anns)]), torch.tensor(xyxy[len(anns):]))
            assert iou.max() <= 0.5

    # round 2 trained on them, from round 1's weights, with soft targets
    assert cfg2.DATASETS.TRAIN == ("my_train_selftrain_r2",)
    assert cfg2.DATASETS.OPENWORLD.PROPOSAL_VARIANTS == [
        f"my_train_selftrain_r2=my_train:{r2 / 'proposals.json'}"]
    assert cfg2.MODEL.WEIGHTS == str(r1 / "model_final.pth")
    assert cfg2.MODEL.VCLR_LOSS.PROPOSAL_SCORE_WEIGHTING
    assert not get_vclr_cfg(str(r1 / "config.yaml")).MODEL.VCLR_LOSS.PROPOSAL_SCORE_WEIGHTING
    loaded = DatasetCatalog.get("my_train_selftrain_r2")
    assert sum(len(d["pseudo_annotations"]) for d in loaded) == counts["kept"]
    assert [d["annotations"] for d in loaded] == [d["annotations"] for d in
                                                 DatasetCatalog.get("my_train")]

    # metrics: known/novel split on val_all (its ground truth has the known families)
    for rd in (r1, r2):
        m = _read(rd / "metrics.json")
        assert set(m) == {"synth_openworld_val_novel", "synth_openworld_val_all"}
        assert {"AR@10_seen", "AR@100_unseen"} <= set(m["synth_openworld_val_all"]["segm"])
        assert "AR@10_seen" not in m["synth_openworld_val_novel"]["bbox"]
    summary = _read(out / "seed0" / "self_training.json")
    assert [e["round"] for e in summary] == [1, 2]
    assert summary[1]["metrics"] == _read(r2 / "metrics.json")
    md = (out / "self_training.md").read_text()
    assert "| round 1 | round 2 | round 2 - round 1 |" in md
    assert "| synth_openworld_val_all | novel | box AR@100 |" in md
    assert "| synth_openworld_val_all | known | mask AR@10 |" in md

    # a rerun resumes: nothing is trained or predicted again
    stamps = {p: p.stat().st_mtime_ns for p in (r1 / "model_final.pth", r2 / "model_final.pth",
                                                 r2 / "proposals.json")}
    log = _run("self_train", *args)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert _read(out / "seed0" / "self_training.json")[1]["metrics"] == summary[1]["metrics"]


def test_compare_proposals_and_eval_proposals_end_to_end(tiny_root, tmp_path, capsys):
    cfg = get_vclr_cfg(str(ROOT / "configs/synthetic/vclr.yaml"),
                       TINY + ["DATASETS.SYNTHETIC.ROOT", tiny_root])
    register_all(cfg)
    DatasetCatalog.get("synth_openworld_train")  # generates the tiny set
    meta = MetadataCatalog.get("synth_openworld_train")
    set_dir = os.path.dirname(meta.image_root)
    gt = _read(meta.json_file)
    disc = str(tmp_path / "discovered.json")
    src = PixelFeatures(4, 64, view_dir=os.path.join(set_dir, "train_depth"))
    discover_dataset(ObjectDiscoverer([src], DiscoveryParams(max_objects=3)), gt["images"],
                     meta.image_root, disc, progress=False)

    out = tmp_path / "cmp"
    _run("compare_proposals", "--config-file", ROOT / "configs/synthetic/vclr.yaml",
         "--output", out, "--proposals", "simulated=", "--proposals", f"discovered={disc}",
         *TINY, "DATASETS.SYNTHETIC.ROOT", tiny_root)
    sim = get_vclr_cfg(str(out / "simulated_seed0" / "config.yaml"))
    dis = get_vclr_cfg(str(out / "discovered_seed0" / "config.yaml"))
    assert sim.DATASETS.TRAIN == ("synth_openworld_train",)
    assert dis.DATASETS.TRAIN == ("synth_openworld_train_discovered",)
    assert dis.DATASETS.OPENWORLD.PROPOSAL_VARIANTS == [
        f"synth_openworld_train_discovered=synth_openworld_train:{disc}"]
    results = _read(out / "compare_proposals.json")["results"]
    assert results["discovered"][0] == _read(out / "discovered_seed0" / "metrics.json")
    assert "| simulated | discovered | discovered - simulated |" in (
        out / "compare_proposals.md").read_text()

    # eval_proposals: the discovered file against every training object, known/novel apart
    all_json = os.path.join(set_dir, "annotations", "train_all.json")
    prefix = str(tmp_path / "recall")
    simulated = os.path.join(set_dir, "annotations", "train_proposals.json")
    assert _tool("eval_proposals").main([
        "--gt", all_json, "--proposals", f"discovered={disc}", f"simulated={simulated}",
        "--known-classes", "ellipse", "rectangle", "triangle", "star", "--out", prefix]) == 0
    rec = _read(prefix + ".json")["results"]
    expected = evaluate_recall(all_json, _read(disc)["annotations"], "bbox",
                               max_dets=(1, 10, 100))
    assert rec["discovered"]["bbox"]["all"]["AR@10"] == pytest.approx(expected["AR@10"])
    assert rec["discovered"]["per_image"] == pytest.approx(len(_read(disc)["annotations"]) / 8)
    assert set(rec["simulated"]["segm"]) == {"all", "known", "novel"}
    assert "| discovered | novel |" in Path(prefix + ".md").read_text()
    with pytest.raises(SystemExit):
        _tool("eval_proposals").main(["--gt", all_json, "--proposals", "x"])
    assert "NAME=FILE" in capsys.readouterr().err
    assert _tool("eval_proposals").main(["--gt", str(tmp_path / "no.json"), "--proposals",
                                         f"d={disc}"]) == 1
    assert "no.json" in capsys.readouterr().err
