"""Open-world (class-agnostic) average-recall evaluation.

- ``OpenWorldEvaluator``: detectron2 evaluator of AR@k / AR per size / AP, box and mask, with
  an optional seen/unseen split (``evaluator.py``);
- ``OpenWorldRecall`` / ``evaluate_recall``: the vectorised engine, equal to pycocotools'
  ``COCOeval`` with ``useCats = 0`` (``recall.py``);
- ``build_evaluator``: the evaluator for a dataset, by its metadata ``evaluator_type``;
- ``ImageGroupsEvaluator`` / ``index_blocks``: one inference pass, results per group (block) of
  images (``groups.py``).
"""

from detectron2.data import MetadataCatalog

from .evaluator import OpenWorldEvaluator
from .ground_truth import CocoGroundTruth
from .groups import ImageGroupsEvaluator, index_blocks
from .recall import Detections, EvalArrays, OpenWorldRecall, evaluate_recall, summarize

__all__ = [
    "CocoGroundTruth",
    "Detections",
    "EvalArrays",
    "ImageGroupsEvaluator",
    "OpenWorldEvaluator",
    "OpenWorldRecall",
    "build_evaluator",
    "evaluate_recall",
    "index_blocks",
    "known_classes_of",
    "summarize",
]


def known_classes_of(cfg, dataset_name: str) -> list[str]:
    """Known classes for the seen/unseen split of ``dataset_name``:
    ``cfg.TEST.OPENWORLD.KNOWN_CLASSES``, else the dataset's metadata ``known_classes`` (the
    synthetic and the built-in open-world sets have them), keeping those that are categories of
    its ground-truth file (a novel-only file has none: no split); the dropped ones are logged."""
    import json
    import logging

    from .evaluator import ground_truth_file

    wanted = [str(c) for c in cfg.TEST.OPENWORLD.KNOWN_CLASSES] or [
        str(c) for c in MetadataCatalog.get(dataset_name).get("known_classes", [])]
    if not wanted:
        return []
    with open(ground_truth_file(dataset_name)) as f:
        names = {c.get("name") for c in json.load(f).get("categories", [])}
    kept = [c for c in wanted if c in names]
    if len(kept) < len(wanted):
        logging.getLogger(__name__).info(
            f"{dataset_name}: known classes {[c for c in wanted if c not in names]} are not "
            f"categories of its ground truth; split on {kept or 'none'}")
    return kept


def build_evaluator(cfg, dataset_name: str, output_folder: str | None = None):
    """The evaluator of ``dataset_name``, chosen by its metadata ``evaluator_type``.

    - ``"openworld"``: ``OpenWorldEvaluator`` (``bbox``, plus ``segm`` when
      ``cfg.MODEL.MASK_ON``; k values ``cfg.TEST.OPENWORLD.MAX_DETS``; known classes
      ``known_classes_of(cfg, dataset_name)``);
    - ``"coco"``: detectron2's ``COCOEvaluator`` (pure-Python COCOeval, no compiled ops).

    Raises:
        NotImplementedError: any other (or no) ``evaluator_type``.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    if evaluator_type == "openworld":
        return OpenWorldEvaluator(
            dataset_name, tasks=tasks, distributed=True, output_dir=output_folder,
            max_dets=cfg.TEST.OPENWORLD.MAX_DETS,
            known_classes=known_classes_of(cfg, dataset_name))
    if evaluator_type == "coco":
        from detectron2.evaluation import COCOEvaluator

        return COCOEvaluator(dataset_name, tasks=tasks, distributed=True,
                             output_dir=output_folder, use_fast_impl=False)
    raise NotImplementedError(
        f"no evaluator for dataset {dataset_name!r} with evaluator_type {evaluator_type!r}; "
        "vclr_d2 supports 'openworld' and 'coco'")
