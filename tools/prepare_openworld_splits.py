#!/usr/bin/env python
"""Split a COCO instances JSON into open-world known-class training and novel-class test sets.

    python tools/prepare_openworld_splits.py \\
        --ann datasets/coco/annotations/instances_train2017.json \\
        --out-known datasets/openworld_voc_train2017_gt.json
    python tools/prepare_openworld_splits.py \\
        --ann datasets/coco/annotations/instances_val2017.json \\
        --out-novel datasets/openworld_instances_nonvoc_val2017_insseg.json

Both outputs keep every image of the input (an image without any annotation of its part is a
valid image of the set) and the input's annotation ids.

* known (``--out-known``): only the annotations of the known classes, with their original
  categories; crowd annotations stay crowd (``iscrowd`` 1).
* novel (``--out-novel``): the annotations of all other classes. By default they become one
  class-agnostic category ``{"id": 1, "name": "object"}`` (what open-world recall is computed
  on); ``--keep-labels`` keeps their original categories, for per-class or seen/unseen
  breakdowns. Crowd annotations stay crowd, so COCOeval neither counts nor penalises them.

Known classes: ``--known voc`` (default, the 20 PASCAL VOC classes), ``--known coco`` (the 80
COCO classes, for COCO -> LVIS style training sets) or ``--known-classes a,b,c`` (names of
categories of the input JSON). Names are matched case-insensitively against the input's
``categories``; a name that is not there is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

# The 20 PASCAL VOC classes in COCO naming, with their COCO category ids.
VOC_CLASSES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    9: "boat", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow",
    44: "bottle", 62: "chair", 63: "couch", 64: "potted plant", 67: "dining table", 72: "tv",
}

# The 80 COCO instance classes with their category ids.
COCO_CLASSES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse",
    20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe",
    27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee",
    35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl",
    52: "banana", 53: "apple", 54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot",
    58: "hot dog", 59: "pizza", 60: "donut", 61: "cake", 62: "chair", 63: "couch",
    64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet", 72: "tv", 73: "laptop",
    74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven",
    80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}

KNOWN_SETS = {"voc": VOC_CLASSES, "coco": COCO_CLASSES}
AGNOSTIC_CATEGORY = {"id": 1, "name": "object"}


class ToolError(Exception):
    """A problem with the input or the options; its message names the file, key and value."""


def load_json(path: str | os.PathLike, what: str):
    """Read a JSON file; a missing or malformed file raises ``ToolError`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise ToolError(f"{what} file not found: {p}")
    try:
        with p.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ToolError(f"{what} file {p} is not valid JSON: {e.msg} at line {e.lineno}, "
                        f"column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise ToolError(f"{what} file {p} is not UTF-8 text JSON: {e}") from e


def write_json(obj, path: str | os.PathLike) -> None:
    """Write compact JSON atomically (a temporary file renamed), creating parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, p)


def check_coco(data, path) -> None:
    """Check the keys this tool relies on; errors name the file, the entry and the key."""
    if not isinstance(data, dict):
        raise ToolError(f"{path}: expected a COCO JSON object at top level, got "
                        f"{type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ToolError(f"{path}: missing top-level key {key!r}")
        if not isinstance(data[key], list):
            raise ToolError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    for i, cat in enumerate(data["categories"]):
        for key in ("id", "name"):
            if not isinstance(cat, dict) or key not in cat:
                raise ToolError(f"{path}: categories[{i}] has no key {key!r}")
    image_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise ToolError(f"{path}: images[{i}] has no key 'id'")
        image_ids.add(img["id"])
    cat_ids = {c["id"] for c in data["categories"]}
    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        for key in ("id", "image_id", "category_id"):
            if not isinstance(ann, dict) or key not in ann:
                raise ToolError(f"{path}: annotations[{i}] has no key {key!r}")
        if ann["id"] in ann_ids:
            raise ToolError(f"{path}: annotations[{i}] repeats annotation id {ann['id']!r}")
        ann_ids.add(ann["id"])
        if ann["category_id"] not in cat_ids:
            raise ToolError(f"{path}: annotation id {ann['id']!r} has category_id "
                            f"{ann['category_id']!r}, which is not in 'categories'")
        if ann["image_id"] not in image_ids:
            raise ToolError(f"{path}: annotation id {ann['id']!r} has image_id "
                            f"{ann['image_id']!r}, which is not in 'images'")


def resolve_known_ids(categories: list[dict], known: str = "voc",
                      known_classes: list[str] | None = None, source: str = "input") -> set:
    """Category ids (of ``categories``) of the known classes: a named set or a list of names."""
    by_name: dict[str, list] = {}
    for cat in categories:
        by_name.setdefault(str(cat["name"]).strip().lower(), []).append(cat["id"])
    if known_classes is not None:
        names = [n.strip() for n in known_classes if n.strip()]
        if not names:
            raise ToolError("--known-classes: no class names given")
    else:
        if known not in KNOWN_SETS:
            raise ToolError(f"--known: unknown set {known!r}; choose one of "
                            f"{', '.join(sorted(KNOWN_SETS))}")
        names = list(KNOWN_SETS[known].values())
    missing = [n for n in names if n.lower() not in by_name]
    if missing:
        valid = ", ".join(sorted(str(c["name"]) for c in categories))
        raise ToolError(f"class names not found in the categories of {source}: "
                        f"{', '.join(missing)} (categories there: {valid})")
    return {cid for n in names for cid in by_name[n.lower()]}


def split_coco(data: dict, known_ids: set, keep_labels: bool = False,
               progress: bool = True) -> tuple[dict, dict, dict]:
    """Return ``(known_json, novel_json, counts)`` from a checked COCO instances dict."""
    extra = {k: data[k] for k in ("info", "licenses") if k in data}
    known_anns, novel_anns = [], []
    counts = {"images": len(data["images"]), "known": 0, "known_crowd": 0, "novel": 0,
              "novel_crowd": 0}
    for ann in tqdm(data["annotations"], desc="splitting", unit="ann", disable=not progress):
        crowd = int(bool(ann.get("iscrowd", 0)))
        if ann["category_id"] in known_ids:
            known_anns.append(dict(ann))
            counts["known"] += 1
            counts["known_crowd"] += crowd
        else:
            new = dict(ann, iscrowd=crowd)
            if not keep_labels:
                new["category_id"] = AGNOSTIC_CATEGORY["id"]
            novel_anns.append(new)
            counts["novel"] += 1
            counts["novel_crowd"] += crowd
    known_cats = [dict(c) for c in data["categories"] if c["id"] in known_ids]
    if keep_labels:
        novel_cats = [dict(c) for c in data["categories"] if c["id"] not in known_ids]
    else:
        novel_cats = [dict(AGNOSTIC_CATEGORY)]
    known_json = {**extra, "images": data["images"], "annotations": known_anns,
                  "categories": known_cats}
    novel_json = {**extra, "images": data["images"], "annotations": novel_anns,
                  "categories": novel_cats}
    return known_json, novel_json, counts


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """The module docstring verbatim, and the defaults of the options that have one."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_openworld_splits.py",
        description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--ann", required=True, help="input COCO instances JSON")
    p.add_argument("--out-known", help="output: known-class ground truth (training)")
    p.add_argument("--out-novel", help="output: novel-class ground truth (evaluation)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--known", choices=sorted(KNOWN_SETS),
                       help="named set of known classes (COCO names); default: voc")
    group.add_argument("--known-classes",
                       help="comma-separated category names of the input that are known "
                            "(instead of --known)")
    p.add_argument("--keep-labels", action="store_true",
                   help="novel output keeps the original categories instead of one 'object'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out_known and not args.out_novel:
        parser.error("give at least one of --out-known and --out-novel")
    try:
        data = load_json(args.ann, "annotation")
        check_coco(data, args.ann)
        names = args.known_classes.split(",") if args.known_classes is not None else None
        known_ids = resolve_known_ids(data["categories"], args.known or "voc", names,
                                      source=args.ann)
        known_json, novel_json, counts = split_coco(data, known_ids, args.keep_labels,
                                                    progress=not args.no_progress)
        if args.out_known:
            write_json(known_json, args.out_known)
        if args.out_novel:
            write_json(novel_json, args.out_novel)
    except ToolError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"{counts['images']} images; known classes: {len(known_ids)} categories, "
          f"{counts['known']} annotations ({counts['known_crowd']} crowd); novel: "
          f"{counts['novel']} annotations ({counts['novel_crowd']} crowd)")
    for what, path in (("known", args.out_known), ("novel", args.out_novel)):
        if path:
            print(f"wrote {what}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
