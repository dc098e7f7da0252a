"""``OpenWorldEvaluator``: class-agnostic AR@k (box and mask) as a detectron2 evaluator.

Results, in percent like detectron2's ``COCOEvaluator``, one flat dict per task::

    {"bbox": {"AR@1": .., "AR@10": .., ..., "AR_small@100": .., "AR_large@300": ..,
              "AP": .., "AP50": ..},
     "segm": {...}}

(keys as ``vclr_d2.evaluation.recall.summarize`` documents). With known classes given, each
task dict also holds every AR key twice more, suffixed ``_seen`` (ground truth of the known
classes only) and ``_unseen`` (ground truth of the other classes only), e.g. ``AR@100_seen``.
AP is not split: with part of the ground truth removed, detections of the removed objects
would count as false positives.

Only the images that went through ``process`` are evaluated (as in ``COCOEvaluator``). The
main process logs a table of the results and, given an output folder, writes them to
``openworld_results.json`` there (NaN as null). The file also holds, under
``recall_by_iou``, the recall at each IoU threshold (0.50, 0.55, ..., 0.95) at the largest k of
all objects (and, with known classes, of the ``seen`` and ``unseen`` ones); AR@k is their
mean. It tells a model that misses objects (low at 0.50) from one that localises them loosely
(falling towards 0.95). Under ``confident_detections`` it counts, per image, the detections
with a score >= 0.5 (``per_image``), those whose box overlaps every ground-truth object (any
class) by box IoU < 0.5 (``false_per_image``) and, of those, the ones on no object at all
(IoU < 0.2, ``off_object_per_image``): recall does not see confident false detections, and a
self-training loop that teaches the model its own mistakes shows there first.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

from .ground_truth import CocoGroundTruth
from .recall import DEFAULT_MAX_DETS, Detections, OpenWorldRecall, check_max_dets, summarize
from .recall_types import IOU_THRESHOLDS, EvalArrays

__all__ = ["RESULTS_FILE", "OpenWorldEvaluator", "ground_truth_file"]

logger = logging.getLogger(__name__)

RESULTS_FILE = "openworld_results.json"
_TASKS = ("bbox", "segm")


def _recall_by_iou(arrays: EvalArrays) -> list[float | None]:
    """Recall in percent at each IoU threshold, every area, the largest k (None: no ground
    truth)."""
    recall = arrays.recall[:, arrays.area_labels.index("all"), -1]
    return [float(r) * 100.0 if r >= 0 else None for r in recall]


CONFIDENT_SCORE = 0.5
FALSE_IOU, OFF_OBJECT_IOU = 0.5, 0.2


def _confident_detections(gt: CocoGroundTruth, predictions: Sequence[Mapping[str, Any]]
                          ) -> dict[str, float]:
    """Per image: detections with score >= CONFIDENT_SCORE, those of them with box IoU <
    FALSE_IOU with every ground-truth object, and those with IoU < OFF_OBJECT_IOU."""
    pos, found = gt.image_positions(np.array([p["image_id"] for p in predictions]))
    confident = false = off = 0
    for p, i, f in zip(predictions, pos, found):
        dt = p["boxes"][p["scores"] >= CONFIDENT_SCORE]
        confident += len(dt)
        rows = slice(gt.offsets[i], gt.offsets[i + 1]) if f else slice(0, 0)
        best = np.zeros(len(dt))
        if len(dt) and rows.stop > rows.start:
            best = np.asarray(mask_util.iou(dt, gt.boxes[rows],
                                            gt.iscrowd[rows].astype(np.uint8))).max(axis=1)
        false += int((best < FALSE_IOU).sum())
        off += int((best < OFF_OBJECT_IOU).sum())
    n = max(len(predictions), 1)
    return {"score_thresh": CONFIDENT_SCORE, "false_iou": FALSE_IOU,
            "off_object_iou": OFF_OBJECT_IOU, "per_image": confident / n,
            "false_per_image": false / n, "off_object_per_image": off / n}


def ground_truth_file(dataset_name: str) -> str:
    """The COCO-format ground-truth file of a registered dataset (its metadata ``json_file``).

    When the file is missing, the dataset is loaded once (``DatasetCatalog.get``), since lazy
    datasets such as the synthetic one write their files on first use.

    Raises:
        KeyError: the dataset's metadata has no ``json_file``.
        FileNotFoundError: the file is still missing after loading the dataset.
    """
    path = MetadataCatalog.get(dataset_name).get("json_file", None)
    if path is None or not PathManager.exists(path):
        DatasetCatalog.get(dataset_name)
        path = MetadataCatalog.get(dataset_name).get("json_file", None)
    if path is None:
        raise KeyError(f"dataset {dataset_name!r}: its metadata has no 'json_file' (the COCO "
                       "ground truth the open-world evaluator needs)")
    if not PathManager.exists(path):
        raise FileNotFoundError(f"dataset {dataset_name!r}: ground-truth file {path} does not "
                                "exist, even after loading the dataset")
    return path


class OpenWorldEvaluator(DatasetEvaluator):
    """Class-agnostic AR@k, AR per object size and AP, as COCOeval with ``useCats = 0``.

    Ground truth is the dataset's metadata ``json_file``. Predictions are model outputs
    ``{"instances": Instances}`` with ``pred_boxes`` (XYXY, absolute), ``scores`` and optional
    ``pred_masks`` ((N, H, W) at the input's original size; bool, or float cut at 0.5);
    ``pred_classes`` is ignored. Each input needs ``image_id``. ``segm`` is evaluated when it
    is requested, every prediction has masks and every ground-truth object a segmentation.

    Attributes:
        dataset_name, tasks, max_dets (sorted), known_classes: as given to the constructor.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] | None = None,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        max_dets: Iterable[int] = DEFAULT_MAX_DETS,
        known_classes: Sequence[str] = (),
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``json_file``.
            tasks: subset of ("bbox", "segm"); None means both.
            distributed: gather predictions from all processes and evaluate on the main one
                (the others return {}); False evaluates each process's own predictions.
            output_dir: where ``openworld_results.json`` is written; None writes nothing.
            max_dets: the k of AR@k; the largest also caps the detections kept per image.
            known_classes: category names of the known classes, for the seen/unseen split;
                empty disables it.

        Raises:
            ValueError: unknown task, or a known class that is no category of the file.
        """
        tasks = tuple(_TASKS if tasks is None else tasks)
        bad = [t for t in tasks if t not in _TASKS]
        if bad or not tasks:
            raise ValueError(f"OpenWorldEvaluator tasks must be a non-empty subset of {_TASKS}; "
                             f"got {list(tasks)}")
        self.dataset_name = dataset_name
        self.tasks = tasks
        self.max_dets = check_max_dets(max_dets)
        self.known_classes = [str(c) for c in known_classes]
        self._distributed = distributed
        self._output_dir = output_dir
        self._json_file = ground_truth_file(dataset_name)
        self._gt: CocoGroundTruth | None = None
        self._known_ids = self._novel_ids = None
        if not distributed or comm.is_main_process():
            self._load_ground_truth()
        self._predictions: list[dict[str, Any]] = []

    def _load_ground_truth(self) -> None:
        if self._gt is not None:
            return
        gt = CocoGroundTruth.from_json(self._json_file)
        if self.known_classes:
            self._known_ids = gt.category_ids_of(self.known_classes)
            self._novel_ids = np.setdiff1d(np.array(sorted(gt.categories), dtype=np.int64),
                                           self._known_ids)
        self._gt = gt

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: Sequence[Mapping[str, Any]],
                outputs: Sequence[Mapping[str, Any]]) -> None:
        """Keep each image's top max(max_dets) detections (boxes XYWH, masks as RLE)."""
        for inp, out in zip(inputs, outputs):
            if "image_id" not in inp:
                raise KeyError("OpenWorldEvaluator.process: an input has no 'image_id' "
                               f"(keys: {sorted(inp)})")
            if "instances" not in out:
                raise KeyError("OpenWorldEvaluator.process: a model output has no 'instances' "
                               f"(keys: {sorted(out)})")
            self._predictions.append(self._encode(int(inp["image_id"]), out["instances"]))

    def _encode(self, image_id: int, instances: Any) -> dict[str, Any]:
        instances = instances.to("cpu")
        scores = instances.scores.numpy().astype(np.float64)
        # descending score, ties in model order: what the evaluation itself keeps
        keep = np.argsort(-scores, kind="stable")[: self.max_dets[-1]]
        boxes = BoxMode.convert(instances.pred_boxes.tensor, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        pred = {"image_id": image_id, "scores": scores[keep],
                "boxes": boxes.numpy().astype(np.float64)[keep].reshape(-1, 4), "rles": None}
        if "segm" in self.tasks and instances.has("pred_masks"):
            masks = instances.pred_masks[torch.as_tensor(keep, dtype=torch.long)].numpy()
            if masks.dtype != bool:
                masks = masks > 0.5
            # one mask at a time: a Fortran-order copy of all of them can be large
            pred["rles"] = [mask_util.encode(np.array(m[:, :, None], order="F", dtype=np.uint8))[0]
                            for m in masks]
        return pred

    def evaluate(self) -> dict[str, dict[str, float]]:
        """{task: {metric: percent}} on the main process, {} on the others."""
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if not predictions:
            logger.warning("[OpenWorldEvaluator] no predictions were processed; nothing to "
                           f"evaluate on {self.dataset_name}")
            return {}
        self._load_ground_truth()
        gt = self._gt
        dets = Detections(
            image_ids=np.concatenate([np.full(len(p["scores"]), p["image_id"], dtype=np.int64)
                                      for p in predictions]),
            scores=np.concatenate([p["scores"] for p in predictions]),
            boxes=np.concatenate([p["boxes"] for p in predictions]),
            rles=(list(itertools.chain(*(p["rles"] for p in predictions)))
                  if all(p["rles"] is not None for p in predictions) else None),
        )
        img_ids = np.unique([p["image_id"] for p in predictions])
        results = OrderedDict()
        by_iou = {}
        for task in self.tasks:
            if task == "segm" and (dets.rles is None or not gt.has_masks):
                logger.warning(
                    f"[OpenWorldEvaluator] segm skipped on {self.dataset_name}: "
                    + ("the predictions have no pred_masks" if dets.rles is None else
                       f"{self._json_file} has annotations without segmentation"))
                continue
            engine = OpenWorldRecall(gt, dets, task, max_dets=self.max_dets, img_ids=img_ids)
            arrays = engine.evaluate()
            res = summarize(arrays)
            by_iou[task] = {"all": _recall_by_iou(arrays)}
            if self._known_ids is not None:
                for suffix, ids in (("_seen", self._known_ids), ("_unseen", self._novel_ids)):
                    arrays = engine.evaluate(ids)
                    split = summarize(arrays)
                    res.update({k + suffix: v for k, v in split.items() if k.startswith("AR")})
                    by_iou[task][suffix[1:]] = _recall_by_iou(arrays)
            results[task] = res
        self._report(results, by_iou, _confident_detections(gt, predictions),
                     num_images=len(img_ids), num_detections=len(dets))
        return results

    def _report(self, results: Mapping[str, Mapping[str, float]],
                by_iou: Mapping[str, Mapping[str, list]], confident: Mapping[str, float],
                **counts: int) -> None:
        if not results:
            return
        tasks = list(results)
        keys = list(dict.fromkeys(k for r in results.values() for k in r))
        rows = [[k] + [results[t].get(k, float("nan")) for t in tasks] for k in keys]
        table = tabulate(rows, headers=["metric"] + tasks, tablefmt="pipe", floatfmt=".3f",
                         numalign="left")
        logger.info(f"Open-world (class-agnostic) results on {self.dataset_name} "
                    f"({counts['num_images']} images):\n{table}")
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, RESULTS_FILE)
            content = {
                "dataset": self.dataset_name, "ground_truth": self._json_file, **counts,
                "max_dets": list(self.max_dets), "known_classes": self.known_classes,
                "results": {t: {k: (None if math.isnan(v) else v) for k, v in r.items()}
                            for t, r in results.items()},
                "recall_by_iou": {"iou_thresholds": [round(float(t), 2) for t in IOU_THRESHOLDS],
                                  "max_det": self.max_dets[-1], **by_iou},
                "confident_detections": dict(confident),
            }
            with PathManager.open(path, "w") as f:
                json.dump(content, f, indent=2)
            logger.info(f"Open-world results written to {path}")
