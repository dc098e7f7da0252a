"""Ground truth of a COCO-format file as flat arrays, in the order COCOeval visits it.

Shape shorthand: I images, G annotations.

``CocoGroundTruth`` reads the file once, validates it, and keeps one row per annotation. Rows
are sorted by image id, then category id, then position in the file: the order in which
pycocotools' ``COCOeval`` with ``useCats = 0`` lists an image's ground truth, which decides
which of two equally good ground-truth objects a detection matches. Masks are converted to
RLE (polygons and uncompressed RLE as ``COCO.annToRLE`` does) on first use and cached.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from detectron2.utils.file_io import PathManager

__all__ = ["CocoGroundTruth"]


class CocoGroundTruth:
    """Class-agnostic ground truth of a COCO-format dataset.

    Attributes:
        source: the file (or ``"<dict>"``) the ground truth came from, used in error messages.
        image_ids: (I,) sorted unique image ids.
        image_sizes: (I, 2) (height, width) of each image; -1 where the file gives none.
        image_index: (G,) position of each annotation's image in ``image_ids``.
        offsets: (I + 1,) annotations of image i are rows ``offsets[i]:offsets[i + 1]``.
        boxes: (G, 4) float64 XYWH boxes.
        areas: (G,) float64 ``area`` fields, used as they are for the area ranges (as COCOeval).
        iscrowd: (G,) bool crowd flags (``iscrowd``, 0 when absent).
        category_ids: (G,) category ids.
        ann_ids: (G,) annotation ids.
        categories: category id -> name, from the file's ``categories``.
    """

    def __init__(self, dataset: Mapping[str, Any], source: str = "<dict>"):
        """
        Args:
            dataset: a parsed COCO-format dict with ``images``, ``annotations`` (may be empty)
                and ``categories``.
            source: where the dict came from, for error messages.
        """
        self.source = source
        for key in ("images", "categories"):
            if not isinstance(dataset.get(key), list):
                raise ValueError(f"{source}: COCO ground truth needs a list under {key!r}")
        anns = dataset.get("annotations", [])
        if not isinstance(anns, list):
            raise ValueError(f"{source}: 'annotations' must be a list, got {type(anns).__name__}")

        self.categories = {}
        for cat in dataset["categories"]:
            if "id" not in cat:
                raise ValueError(f"{source}: a category has no 'id': {cat}")
            self.categories[int(cat["id"])] = str(cat.get("name", cat["id"]))

        images = dataset["images"]
        try:
            ids = np.array([int(img["id"]) for img in images], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: every image needs an integer 'id' ({e!r})") from e
        try:
            sizes = np.array([(int(img.get("height", -1)), int(img.get("width", -1)))
                              for img in images], dtype=np.int64).reshape(-1, 2)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: image 'height'/'width' must be integers ({e!r})") from e
        self.image_ids, first = np.unique(ids, return_index=True)
        if len(self.image_ids) != len(ids):
            dup = ids[np.setdiff1d(np.arange(len(ids)), first)][0]
            raise ValueError(f"{source}: image id {dup} appears more than once")
        self.image_sizes = sizes[first]

        rows = [self._parse_annotation(ann, i) for i, ann in enumerate(anns)]
        boxes = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4)
        image_id = np.array([r[1] for r in rows], dtype=np.int64)
        category = np.array([r[2] for r in rows], dtype=np.int64)
        image_index, found = self.image_positions(image_id)
        if not found.all():
            k = int(np.flatnonzero(~found)[0])
            raise ValueError(f"{source}: annotation {rows[k][5]} refers to image id "
                             f"{image_id[k]}, which is not in 'images'")
        bad_cat = ~np.isin(category, np.array(list(self.categories), dtype=np.int64))
        if bad_cat.any():
            k = int(np.flatnonzero(bad_cat)[0])
            raise ValueError(f"{source}: annotation {rows[k][5]} has category_id {category[k]}, "
                             f"which is not in 'categories'")

        # image, then category, then file order (lexsort is stable)
        order = np.lexsort((category, image_index))
        self.image_index = image_index[order]
        self.boxes = boxes[order]
        self.category_ids = category[order]
        self.areas = np.array([r[3] for r in rows], dtype=np.float64)[order]
        self.iscrowd = np.array([r[4] for r in rows], dtype=bool)[order]
        self.ann_ids = np.array([r[5] for r in rows], dtype=np.int64)[order]
        self._segmentations = [rows[k][6] for k in order]
        self.offsets = np.searchsorted(self.image_index, np.arange(len(self.image_ids) + 1))
        self._rles: list[dict] | None = None

    def _parse_annotation(self, ann: Mapping[str, Any], position: int) -> tuple:
        ann_id = ann.get("id", f"#{position}")
        try:
            bbox = [float(v) for v in ann["bbox"]]
            if len(bbox) != 4:
                raise ValueError(f"bbox has {len(bbox)} numbers")
            return (bbox, int(ann["image_id"]), int(ann["category_id"]), float(ann["area"]),
                    bool(ann.get("iscrowd", 0)), int(ann.get("id", -1)), ann.get("segmentation"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{self.source}: annotation {ann_id} is malformed: needs 'bbox' "
                             f"(4 numbers), 'image_id', 'category_id' and 'area' ({e!r})") from e

    @classmethod
    def from_json(cls, path: str) -> CocoGroundTruth:
        """Read a COCO-format JSON file (any path ``PathManager`` opens)."""
        with PathManager.open(path, "r") as f:
            try:
                dataset = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(dataset, dict):
            raise ValueError(f"{path}: a COCO ground-truth file holds a JSON object")
        return cls(dataset, source=str(path))

    @classmethod
    def from_coco(cls, coco: Any) -> CocoGroundTruth:
        """Wrap a ``pycocotools.coco.COCO`` object (its ``dataset`` dict is read, not changed)."""
        return cls(coco.dataset, source="<pycocotools COCO>")

    def image_positions(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of ``image_ids`` (N,) in ``self.image_ids`` and whether each one is there."""
        image_ids = np.asarray(image_ids, dtype=np.int64)
        pos = np.searchsorted(self.image_ids, image_ids)
        found = np.zeros(len(image_ids), dtype=bool)
        inside = pos < len(self.image_ids)
        found[inside] = self.image_ids[pos[inside]] == image_ids[inside]
        return pos, found

    def __len__(self) -> int:
        return len(self.ann_ids)

    @property
    def has_masks(self) -> bool:
        """True when there is ground truth and every annotation has a segmentation."""
        return len(self) > 0 and all(bool(s) for s in self._segmentations)

    def category_ids_of(self, names: Iterable[str]) -> np.ndarray:
        """Sorted category ids whose name is one of ``names``.

        Raises:
            ValueError: naming every entry of ``names`` that is no category name of the file.
        """
        names = [str(n) for n in names]
        known = set(self.categories.values())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{self.source}: class names {unknown} are not among its "
                             f"categories {sorted(known)}")
        wanted = set(names)
        return np.array(sorted(c for c, n in self.categories.items() if n in wanted),
                        dtype=np.int64)

    def rles(self) -> list[dict]:
        """(G,) compressed RLEs of the segmentations, in row order (converted once, cached)."""
        if self._rles is None:
            rles = []
            for k, segm in enumerate(self._segmentations):
                h, w = self.image_sizes[self.image_index[k]]
                if not segm or not isinstance(segm, list | dict):
                    raise ValueError(f"{self.source}: annotation {self.ann_ids[k]} has no "
                                     "segmentation (polygons or RLE), so masks cannot be "
                                     "evaluated")
                if isinstance(segm, list) or isinstance(segm.get("counts"), list):
                    if h < 0 or w < 0:
                        raise ValueError(
                            f"{self.source}: image {self.image_ids[self.image_index[k]]} needs "
                            f"'height' and 'width' to rasterise annotation {self.ann_ids[k]}")
                    rle = mask_util.frPyObjects(segm, int(h), int(w))
                    rle = mask_util.merge(rle) if isinstance(segm, list) else rle
                else:
                    rle = segm
                rles.append(rle)
            self._rles = rles
        return self._rles
