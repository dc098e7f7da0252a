"""Open-world splits of a COCO instances file: known-class training ground truth and
class-agnostic novel-class test ground truth (``tools/prepare_openworld_splits.py`` is the
command line; its ``--help`` says what each output holds).

``check_coco`` validates the keys a split relies on, ``resolve_known_ids`` turns a named set
(``voc``, ``coco``) or a list of class names into category ids, ``split_coco`` makes the two
outputs. Errors are ``vclr_d2.utils.InputError`` naming the file, entry and key.
"""

from __future__ import annotations

from tqdm import tqdm

from vclr_d2.utils.io import InputError

__all__ = ["AGNOSTIC_CATEGORY", "COCO_CLASSES", "KNOWN_SETS", "VOC_CLASSES", "check_coco",
           "resolve_known_ids", "split_coco"]

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


def check_coco(data, path) -> None:
    """Check the keys this tool relies on; errors name the file, the entry and the key."""
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a COCO JSON object at top level, got "
                         f"{type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise InputError(f"{path}: missing top-level key {key!r}")
        if not isinstance(data[key], list):
            raise InputError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    for i, cat in enumerate(data["categories"]):
        for key in ("id", "name"):
            if not isinstance(cat, dict) or key not in cat:
                raise InputError(f"{path}: categories[{i}] has no key {key!r}")
    image_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img:
            raise InputError(f"{path}: images[{i}] has no key 'id'")
        image_ids.add(img["id"])
    cat_ids = {c["id"] for c in data["categories"]}
    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        for key in ("id", "image_id", "category_id"):
            if not isinstance(ann, dict) or key not in ann:
                raise InputError(f"{path}: annotations[{i}] has no key {key!r}")
        if ann["id"] in ann_ids:
            raise InputError(f"{path}: annotations[{i}] repeats annotation id {ann['id']!r}")
        ann_ids.add(ann["id"])
        if ann["category_id"] not in cat_ids:
            raise InputError(f"{path}: annotation id {ann['id']!r} has category_id "
                            f"{ann['category_id']!r}, which is not in 'categories'")
        if ann["image_id"] not in image_ids:
            raise InputError(f"{path}: annotation id {ann['id']!r} has image_id "
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
            raise InputError("--known-classes: no class names given")
    else:
        if known not in KNOWN_SETS:
            raise InputError(f"--known: unknown set {known!r}; choose one of "
                            f"{', '.join(sorted(KNOWN_SETS))}")
        names = list(KNOWN_SETS[known].values())
    missing = [n for n in names if n.lower() not in by_name]
    if missing:
        valid = ", ".join(sorted(str(c["name"]) for c in categories))
        raise InputError(f"class names not found in the categories of {source}: "
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
