"""Open-world datasets: COCO-format JSONs with ground truth and proposals, class-agnostic.

Dataset dicts are detectron2's, with two lists per image:

- ``annotations``: ground truth (known classes in training), ``category_id`` 0 (one class);
- ``pseudo_annotations``: proposals of an unsupervised discoverer (``bbox``, ``bbox_mode``,
  ``score``, optional ``segmentation``), used by L_obj and L_sim.

How ground truth is told apart from proposals, both ways are supported:

1. a RULE applied to the annotations of one mixed JSON (the official training files
   ``vCLR_*_top*.json`` hold both):
   - ``"field:<key>"``: proposals are annotations whose ``<key>`` is present and truthy
     (default ``field:is_proposal``, what ``tools/merge_proposals.py --mix-out`` writes);
   - ``"has:<key>"``: proposals are annotations that have ``<key>`` at all (e.g. ``has:score``);
   - ``"category:<id>[,<id>...]"``: proposals are annotations of these category ids;
   - ``"none"``: every annotation is ground truth.
   With a file that carries no marker, every annotation counts as ground truth, which is what
   the official code does (it merges both into one target set).
2. a SEPARATE proposals file (COCO format with ``images``/``annotations``, or a COCO results
   list), matched to the images by ``image_id``; ``tools/merge_proposals.py --out`` writes one.

A registered dataset can also be re-registered under a new name with its proposals REPLACED by
those of a proposals file (``register_proposal_variant``; config key
``DATASETS.OPENWORLD.PROPOSAL_VARIANTS``): the same images and ground truth, other proposals
(discovered objects, a self-training round's teacher predictions).

Metadata: ``thing_classes = ["object"]``, ``evaluator_type = "openworld"``, ``json_file``,
``image_root`` (and ``proposals_file``). Registration never reads files; loading a dataset
whose files are absent raises ``FileNotFoundError`` naming the dataset and the file.

Bad annotations: a missing or non-numeric ``bbox`` or an invalid RLE segmentation (malformed
``counts``/``size``, uncompressed counts that do not cover the image, a ``size`` other than the
image's) raises ``ValueError`` naming the file and the annotation id. Annotations that cannot be
trained on but leave the file usable are dropped, counted and logged (one WARNING per file, by
reason, with the first ids): an ``image_id`` that is not in ``images``, a bbox with a NaN or an
infinity, a bbox of negative width or height.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from vclr_d2.utils.io import datasets_root

__all__ = [
    "OFFICIAL_OPENWORLD_DATASETS",
    "datasets_root",
    "load_openworld_json",
    "load_proposals_file",
    "parse_proposal_rule",
    "register_openworld_dataset",
    "register_official_openworld_datasets",
]

logger = logging.getLogger(__name__)

# name -> (image folder, json file), relative to $DETECTRON2_DATASETS, as the official project
# lays them out (JSONs at the root, COCO images under coco/). Training sets mix ground truth and
# proposals; evaluation sets hold the novel-class ground truth only.
OFFICIAL_OPENWORLD_DATASETS: dict[str, tuple[str, str]] = {
    # VOC -> Non-VOC: COCO train2017 with ground truth of the 20 VOC classes + top-10 proposals.
    "openworld_voc_classes_train2017": ("coco/train2017", "vCLR_voc_train2017_top10.json"),
    "openworld_nonvoc_classes_val2017": (
        "coco/val2017", "openworld_instances_nonvoc_val2017_insseg.json"),
    # COCO -> LVIS: all 80 COCO classes + top-5 proposals; LVIS classes not in COCO.
    "openworld_coco_classes_train2017": ("coco/train2017", "vCLR_coco_train2017_top5.json"),
    "openworld_LVIS_noncoco_val2017": ("lvis_val", "openworld_lvis_noncoco_val_correct.json"),
    # Cross-dataset evaluation.
    "openworld_uvo_nonvoc_val2017": ("uvo_videos_dense_frames", "uvo_nonvoc_val_rle.json"),
    "openworld_objects365_noncoco_val2017": (
        "object365_val", "openworld_objects365_noncoco_val.json"),
}


def parse_proposal_rule(rule: str) -> Callable[[dict], bool]:
    """A predicate ``is_proposal(annotation)`` from a rule string (see the module doc)."""
    kind, _, arg = rule.partition(":")
    if kind == "none" and not arg:
        return lambda a: False
    if kind == "field" and arg:
        return lambda a: bool(a.get(arg, False))
    if kind == "has" and arg:
        return lambda a: arg in a
    if kind == "category" and arg:
        try:
            ids = {int(x) for x in arg.split(",")}
        except ValueError:
            raise ValueError(f"proposal rule '{rule}': category ids must be integers") from None
        return lambda a: a.get("category_id") in ids
    raise ValueError(f"unknown proposal rule '{rule}'; use 'field:<key>', 'has:<key>', "
                     "'category:<id>[,<id>...]' or 'none'")


def _read_json(path: str, what: str, dataset_name: str | None):
    if not os.path.isfile(path):
        name = f"dataset '{dataset_name}': " if dataset_name else ""
        raise FileNotFoundError(f"{name}{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def _check_coco_dataset(data, path: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO dict with 'images' and 'annotations', got "
                         f"{type(data).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing or malformed key '{key}' (a list is required)")


def _rle_problem(segm: dict, size: tuple[int, int] | None) -> str | None:
    """Why ``segm`` is no usable RLE of an image of ``size`` (h, w), or None."""
    shape = segm.get("size")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 2
            and all(isinstance(v, int) and v > 0 for v in shape)):
        return f"its RLE 'size' must be [height, width], got {shape!r}"
    counts = segm.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            return "its uncompressed RLE 'counts' must be non-negative integers"
        if sum(counts) != shape[0] * shape[1]:
            return (f"its uncompressed RLE 'counts' sum to {sum(counts)}, not "
                    f"{shape[0]} x {shape[1]} = {shape[0] * shape[1]} pixels")
    elif not isinstance(counts, (str, bytes)) or not counts:
        return f"its RLE 'counts' must be a non-empty string or a list, got {counts!r}"[:200]
    if size is not None and tuple(shape) != tuple(size):
        return f"its RLE 'size' {list(shape)} is not the image's (height, width) {list(size)}"
    return None


def _bbox_problem(bbox: list[float]) -> str | None:
    """Why a COCO XYWH box cannot be trained on, or None."""
    if not all(math.isfinite(v) for v in bbox):
        return "non-finite bbox"
    if bbox[2] < 0 or bbox[3] < 0:
        return "negative bbox width or height"
    return None


def _annotation_record(ann: dict, path: str, size: tuple[int, int] | None = None) -> dict:
    """A detectron2 annotation dict (XYWH_ABS box) from a COCO annotation of an image of
    ``size`` (h, w) when known; ``ValueError`` naming the file and the annotation when it is
    malformed."""
    bbox = ann.get("bbox")
    where = f"{path}: annotation id {ann.get('id')} of image {ann.get('image_id')}"
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
        raise ValueError(f"{where} has no valid 'bbox' (got {bbox!r})")
    try:
        box = [float(x) for x in bbox]
    except (TypeError, ValueError):
        raise ValueError(f"{where} has a non-numeric 'bbox' {bbox!r}") from None
    rec = {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS,
           "category_id": 0, "iscrowd": int(ann.get("iscrowd", 0))}
    for key in ("id", "score", "area"):
        if key in ann:
            rec[key] = ann[key]
    if "original_category_id" not in rec and "category_id" in ann:
        rec["original_category_id"] = ann["category_id"]
    segm = ann.get("segmentation")
    if isinstance(segm, list):
        polys = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
        if polys:
            rec["segmentation"] = polys
    elif isinstance(segm, dict):
        problem = _rle_problem(segm, size)
        if problem:
            raise ValueError(f"{where} has an invalid RLE segmentation: {problem}")
        if isinstance(segm.get("counts"), list):  # uncompressed RLE -> compressed
            import pycocotools.mask as mask_util

            segm = mask_util.frPyObjects(segm, *segm["size"])
        rec["segmentation"] = segm
    return rec


class _Dropped:
    """Annotations left out of a dataset, counted by reason, with their first ids."""

    def __init__(self):
        self.ids: dict[str, list] = defaultdict(list)

    def add(self, reason: str, ann: dict) -> None:
        self.ids[reason].append(ann.get("id"))

    def log(self, path: str) -> None:
        if not self.ids:
            return
        parts = [f"{len(ids)} with {reason} (ids {ids[:5]}{' ...' if len(ids) > 5 else ''})"
                 for reason, ids in self.ids.items()]
        logger.warning(f"{path}: dropped {sum(len(v) for v in self.ids.values())} annotations: "
                       + "; ".join(parts))


def load_proposals_file(path: str, dataset_name: str | None = None) -> dict[int, list[dict]]:
    """Proposals per image id, from a COCO dataset JSON or a COCO results list."""
    data = _read_json(path, "proposals file", dataset_name)
    anns = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(anns, list):
        raise ValueError(f"{path}: expected a COCO results list or a dict with 'annotations'")
    out: dict[int, list[dict]] = defaultdict(list)
    dropped = _Dropped()
    for a in anns:
        if "image_id" not in a:
            raise ValueError(f"{path}: a proposal has no 'image_id': {str(a)[:200]}")
        rec = _annotation_record(a, path)
        problem = _bbox_problem(rec["bbox"])
        if problem:
            dropped.add(problem, a)
            continue
        out[a["image_id"]].append(rec)
    dropped.log(path)
    return out


def load_openworld_json(
    json_file: str,
    image_root: str,
    dataset_name: str | None = None,
    proposals_file: str | None = None,
    proposal_rule: str = "field:is_proposal",
) -> list[dict]:
    """Dataset dicts of a COCO-format JSON, split into ground truth and proposals.

    Args:
        json_file: COCO instances JSON (ground truth, possibly mixed with proposals).
        image_root: folder that ``file_name`` of the images is relative to.
        dataset_name: used in error messages.
        proposals_file: optional separate proposals file (see ``load_proposals_file``).
        proposal_rule: how proposals inside ``json_file`` are recognised (module doc).
    """
    is_proposal = parse_proposal_rule(proposal_rule)
    data = _read_json(json_file, "annotation file", dataset_name)
    _check_coco_dataset(data, json_file)
    per_image: dict[int, list[dict]] = defaultdict(list)
    for a in data["annotations"]:
        if "image_id" not in a:
            raise ValueError(f"{json_file}: annotation id {a.get('id')} has no 'image_id'")
        per_image[a["image_id"]].append(a)
    dropped = _Dropped()
    image_ids = {img.get("id") for img in data["images"]}
    for image_id in set(per_image) - image_ids:
        for a in per_image.pop(image_id):
            dropped.add("an image_id not in 'images'", a)
    extra = load_proposals_file(proposals_file, dataset_name) if proposals_file else {}

    dicts, num_gt, num_prop = [], 0, 0
    for img in data["images"]:
        try:
            rec = {"file_name": os.path.join(image_root, img["file_name"]),
                   "height": int(img["height"]), "width": int(img["width"]),
                   "image_id": img["id"]}
        except KeyError as e:
            raise ValueError(f"{json_file}: image entry {str(img)[:200]} lacks key {e}") from None
        gt, props = [], []
        for a in per_image.get(img["id"], ()):
            if a.get("ignore", 0):
                continue
            r = _annotation_record(a, json_file, (rec["height"], rec["width"]))
            problem = _bbox_problem(r["bbox"])
            if problem:
                dropped.add(problem, a)
                continue
            (props if is_proposal(a) else gt).append(r)
        props.extend(extra.get(img["id"], ()))
        rec["annotations"], rec["pseudo_annotations"] = gt, props
        num_gt, num_prop = num_gt + len(gt), num_prop + len(props)
        dicts.append(rec)
    dropped.log(json_file)
    unknown = set(extra) - image_ids
    if unknown:
        logger.warning(f"{proposals_file}: {len(unknown)} image ids not in {json_file} ignored")
    logger.info(f"Loaded {len(dicts)} images, {num_gt} ground-truth and {num_prop} proposal "
                f"annotations from {json_file}" + (f" + {proposals_file}" if extra else ""))
    return dicts


def register_openworld_dataset(
    name: str,
    json_file: str,
    image_root: str,
    proposals_file: str | None = None,
    proposal_rule: str = "field:is_proposal",
    **metadata,
) -> None:
    """Register (or re-register) a class-agnostic open-world dataset; reads no file."""
    parse_proposal_rule(proposal_rule)  # fail early on a bad rule
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_openworld_json(
        json_file, image_root, name, proposals_file, proposal_rule))
    meta = {"thing_classes": ["object"], "evaluator_type": "openworld", "json_file": json_file,
            "image_root": image_root}
    if proposals_file:
        meta["proposals_file"] = proposals_file
    meta.update(metadata)
    with contextlib.redirect_stdout(io.StringIO()):
        MetadataCatalog.get(name).set(**meta)


def register_official_openworld_datasets(
    root: str | None = None,
    proposal_rule: str = "field:is_proposal",
    proposal_files: dict[str, str] | None = None,
) -> None:
    """Register every official open-world name under ``root`` (``$DETECTRON2_DATASETS``)."""
    root = datasets_root() if root is None else root
    proposal_files = proposal_files or {}
    unknown = set(proposal_files) - set(OFFICIAL_OPENWORLD_DATASETS)
    if unknown:
        raise ValueError(f"proposal files given for unknown datasets {sorted(unknown)}; known: "
                         f"{sorted(OFFICIAL_OPENWORLD_DATASETS)}")
    for name, (images, json_file) in OFFICIAL_OPENWORLD_DATASETS.items():
        register_openworld_dataset(
            name, os.path.join(root, json_file), os.path.join(root, images),
            proposals_file=proposal_files.get(name), proposal_rule=proposal_rule)


def register_proposal_variant(name: str, base: str, proposals_file: str) -> None:
    """Register ``name``: the images and ground truth of the registered dataset ``base``, with
    the proposals of ``proposals_file`` (matched by ``image_id``) instead of base's.

    The metadata is base's (``json_file`` stays base's ground truth) plus ``proposals_file``
    and ``base_dataset``. Reads no file until the dataset is loaded.

    Raises:
        KeyError: ``base`` is not registered.
    """
    if base not in DatasetCatalog.list():
        raise KeyError(f"proposal variant '{name}': base dataset '{base}' is not registered")
    if name == base:
        raise ValueError(f"proposal variant '{name}' must have another name than its base")

    def load() -> list[dict]:
        proposals = load_proposals_file(proposals_file, name)
        dicts = [dict(d, pseudo_annotations=proposals.get(d["image_id"], []))
                 for d in DatasetCatalog.get(base)]
        unknown = set(proposals) - {d["image_id"] for d in dicts}
        if unknown:
            logger.warning(f"{proposals_file}: {len(unknown)} image ids not in '{base}' ignored")
        logger.info(f"'{name}': the {len(dicts)} images of '{base}' with "
                    f"{sum(len(d['pseudo_annotations']) for d in dicts)} proposals of "
                    f"{proposals_file}")
        return dicts

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    meta = {k: v for k, v in MetadataCatalog.get(base).as_dict().items() if k != "name"}
    meta.update(proposals_file=proposals_file, base_dataset=base)
    with contextlib.redirect_stdout(io.StringIO()):
        MetadataCatalog.get(name).set(**meta)
