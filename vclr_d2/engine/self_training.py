"""Self-training rounds (CutLER / CuVLER style) with ``VCLRTrainer``.

Round 1 trains the config as it is (its training set's proposals: discovered or given).
Round r+1:

1. the round-r model's teacher predicts on the natural training images
   (``predict_dataset``: ``pred_boxes``, ``scores``, ``pred_masks`` as RLE, the best
   ``max_predictions`` per image);
2. its predictions, optionally together with the training set's own proposals
   (``merge_base_proposals``), go through ``vclr_d2.data.proposals.merge_proposals``: score
   threshold, class-agnostic NMS, removal of those whose box overlaps a ground-truth box above
   ``gt_dedup_iou``, top-k per image (``select_round_proposals``);
3. they are written as ``round_<r+1>/proposals.json`` and registered as the proposal variant
   ``<train set>_selftrain_r<r+1>`` (``DATASETS.OPENWORLD.PROPOSAL_VARIANTS``, so the round's
   saved config reruns with ``tools/train_net.py``);
4. round r+1 trains from round r's weights (student and teacher) or from scratch, optionally
   with score-weighted proposal targets (``MODEL.VCLR_LOSS.PROPOSAL_SCORE_WEIGHTING``).

Every round keeps under ``<output>/round_<r>/``: ``config.yaml``, ``proposals.json`` and
``selection.json`` (r >= 2; ``proposals_<train set>.json`` and ``selection_<train set>.json``
with several training sets), the checkpoints, ``metrics.json`` (the teacher's open-world AR on
``DATASETS.TEST``, split into known/novel objects where the ground truth has known classes,
see ``vclr_d2.evaluation.known_classes_of``). Rerun, a round whose ``model_final.pth`` exists
is evaluated, not trained again, and existing proposal files are reused.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng

from vclr_d2.data.datasets import register_proposal_variant
from vclr_d2.data.proposals import merge_proposals, proposals_dataset, write_json

from .trainer import VCLRTrainer

__all__ = ["SelfTrainingParams", "predict_dataset",
           "run_self_training", "select_round_proposals", "train_and_evaluate",
           "training_set_as_coco"]

logger = logging.getLogger(__name__)


@dataclass
class SelfTrainingParams:
    """How the proposals of the next round are made and how it trains.

    Attributes:
        rounds: number of rounds (1 = train the config once).
        score_thresh, nms_iou, gt_dedup_iou, topk: the selection (``merge_proposals``).
        max_predictions: teacher predictions kept per image before the selection.
        merge_base_proposals: add the training set's own proposals to the candidates.
        from_scratch: round r+1 starts from ``MODEL.WEIGHTS`` of the config, not round r.
        soft_targets: rounds >= 2 weight each proposal's objectness loss by its score.
    """

    rounds: int = 2
    score_thresh: float = 0.0
    nms_iou: float = 0.5
    gt_dedup_iou: float = 0.5
    topk: int = 10
    max_predictions: int = 100
    merge_base_proposals: bool = False
    from_scratch: bool = False
    soft_targets: bool = False

    def __post_init__(self):
        checks = {"rounds": self.rounds >= 1, "nms_iou": 0 <= self.nms_iou <= 1,
                  "gt_dedup_iou": 0 <= self.gt_dedup_iou <= 1, "topk": self.topk >= 1,
                  "max_predictions": self.max_predictions >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"SelfTrainingParams: invalid {bad[0]}={getattr(self, bad[0])!r}")


def train_and_evaluate(cfg) -> dict:
    """Train ``cfg`` (or reuse its ``model_final.pth``), evaluate the teacher on
    ``DATASETS.TEST``, write ``metrics.json``; returns {dataset: {task: {metric: value}}}."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    seed_all_rng(cfg.SEED)
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    if os.path.isfile(final):
        logger.info(f"{final} exists: evaluating it")
        model = VCLRTrainer.build_model(cfg)
        DetectionCheckpointer(model).load(final)
        results = VCLRTrainer.test(cfg, model)
    else:
        logger.info(f"training {cfg.OUTPUT_DIR} on {list(cfg.DATASETS.TRAIN)} from "
                    f"MODEL.WEIGHTS={cfg.MODEL.WEIGHTS or '(none)'}")
        trainer = VCLRTrainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None) or VCLRTrainer.test(
            cfg, trainer.model)
    if len(cfg.DATASETS.TEST) == 1 and cfg.DATASETS.TEST[0] not in results:
        results = {cfg.DATASETS.TEST[0]: results}  # DefaultTrainer.test unwraps a single set
    results = {name: {task: dict(v) for task, v in r.items()} for name, r in results.items()}
    write_json(results, os.path.join(cfg.OUTPUT_DIR, "metrics.json"))
    return results


class _Collector(DatasetEvaluator):
    """Keeps each image's best ``k`` predictions as COCO results with RLE masks."""

    def __init__(self, k: int):
        self.k, self.results = k, []

    def reset(self) -> None:
        self.results = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            keep = torch.argsort(inst.scores, descending=True, stable=True)[: self.k]
            inst = inst[keep]
            boxes = BoxMode.convert(inst.pred_boxes.tensor, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
            for j in range(len(inst)):
                res = {"image_id": inp["image_id"], "bbox": [float(v) for v in boxes[j]],
                       "score": float(inst.scores[j]), "category_id": 1}
                if inst.has("pred_masks"):
                    m = np.asfortranarray(inst.pred_masks[j].numpy().astype(np.uint8))
                    rle = mask_util.encode(m)
                    res["segmentation"] = {"size": [int(s) for s in rle["size"]],
                                           "counts": rle["counts"].decode("ascii")}
                self.results.append(res)

    def evaluate(self) -> dict:
        return {}


def predict_dataset(cfg, model, dataset_name: str, max_per_image: int = 100) -> list[dict]:
    """COCO results (``image_id``, XYWH ``bbox``, ``score``, RLE ``segmentation``) of ``model``
    on the natural images of a registered dataset, at the test-time size."""
    collector = _Collector(max_per_image)
    inference_on_dataset(model, build_detection_test_loader(cfg, dataset_name), collector)
    return collector.results


def _coco_segmentation(seg):
    if isinstance(seg, dict) and isinstance(seg.get("counts"), bytes):
        return dict(seg, counts=seg["counts"].decode("ascii"))
    return seg


def training_set_as_coco(dataset_name: str) -> tuple[dict, list[dict]]:
    """The ground truth of a registered training set as a COCO dict (``images``, XYWH
    ``annotations``), and its proposals as COCO results."""
    images, gt, props = [], [], []
    for d in DatasetCatalog.get(dataset_name):
        images.append({"id": d["image_id"], "file_name": d["file_name"], "height": d["height"],
                       "width": d["width"]})
        for source, out in ((d.get("annotations", []), gt),
                            (d.get("pseudo_annotations", []), props)):
            for a in source:
                box = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYWH_ABS)
                rec = {"id": len(out) + 1, "image_id": d["image_id"],
                       "bbox": [float(v) for v in box], "score": float(a.get("score", 1.0)),
                       "iscrowd": int(a.get("iscrowd", 0)), "category_id": 1}
                if "segmentation" in a:
                    rec["segmentation"] = _coco_segmentation(a["segmentation"])
                out.append(rec)
    return {"images": images, "annotations": gt, "categories": [{"id": 1, "name": "object"}]}, (
        props)


def select_round_proposals(predictions: list[dict], gt: dict, base_proposals: list[dict],
                           params: SelfTrainingParams) -> tuple[dict, dict]:
    """The next round's proposals file content (``proposals_dataset``) and the counts."""
    dets = list(predictions) + (list(base_proposals) if params.merge_base_proposals else [])
    selected, counts = merge_proposals(dets, gt, params.score_thresh, params.nms_iou,
                                       params.gt_dedup_iou, params.topk, progress=False)
    return proposals_dataset(gt, selected), counts


def _next_round_cfg(cfg, r: int, output_dir: str, variants: list[str], train: list[str],
                    previous: str | None, params: SelfTrainingParams):
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = os.path.join(output_dir, f"round_{r}")
    c.DATASETS.OPENWORLD.PROPOSAL_VARIANTS = list(cfg.DATASETS.OPENWORLD.PROPOSAL_VARIANTS) + (
        variants)
    c.DATASETS.TRAIN = tuple(train)
    if previous is not None and not params.from_scratch:
        c.MODEL.WEIGHTS = previous
    if r > 1 and params.soft_targets:
        c.MODEL.VCLR_LOSS.PROPOSAL_SCORE_WEIGHTING = True
    c.freeze()
    return c


def _round_proposals(prev_cfg, weights: str, bases: list[str], r: int, round_dir: str,
                     params: SelfTrainingParams) -> dict[str, tuple[str, dict]]:
    """{variant name: (proposals file, selection counts)} of round ``r``, made with the
    teacher of ``weights`` (files that exist are reused)."""
    model = None
    out = {}
    for base in bases:
        suffix = f"_{base}" if len(bases) > 1 else ""
        path = os.path.join(round_dir, f"proposals{suffix}.json")
        counts_path = os.path.join(round_dir, f"selection{suffix}.json")
        if not (os.path.isfile(path) and os.path.isfile(counts_path)):
            if model is None:
                model = VCLRTrainer.build_model(prev_cfg)
                DetectionCheckpointer(model).load(weights)
            gt, base_props = training_set_as_coco(base)
            preds = predict_dataset(prev_cfg, model, base, params.max_predictions)
            data, counts = select_round_proposals(preds, gt, base_props, params)
            write_json(data, path)
            write_json(counts, counts_path)
        with open(counts_path) as f:
            out[f"{base}_selftrain_r{r}"] = (path, json.load(f))
    return out


def run_self_training(cfg, params: SelfTrainingParams, output_dir: str) -> list[dict]:
    """Run ``params.rounds`` rounds (see the module doc); returns and writes
    ``<output_dir>/self_training.json``: per round its training sets, proposal files,
    selection counts and metrics."""
    os.makedirs(output_dir, exist_ok=True)
    write_json(asdict(params), os.path.join(output_dir, "params.json"))
    bases = list(cfg.DATASETS.TRAIN)
    summary, variants, train, prev_cfg, weights = [], [], bases, None, None
    for r in range(1, params.rounds + 1):
        entry = {"round": r, "proposals": {}, "selection": {}}
        if r > 1:
            made = _round_proposals(prev_cfg, weights, bases, r,
                                    os.path.join(output_dir, f"round_{r}"), params)
            train = []
            for (name, (path, counts)), base in zip(made.items(), bases):
                register_proposal_variant(name, base, path)
                variants.append(f"{name}={base}:{path}")
                train.append(name)
                entry["proposals"][name], entry["selection"][name] = path, counts
        entry["train"] = list(train)
        prev_cfg = _next_round_cfg(cfg, r, output_dir, variants, train, weights, params)
        entry["metrics"] = train_and_evaluate(prev_cfg)
        weights = os.path.join(prev_cfg.OUTPUT_DIR, "model_final.pth")
        summary.append(entry)
        write_json(summary, os.path.join(output_dir, "self_training.json"))
    return summary
