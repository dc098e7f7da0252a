"""``ObjectDiscoverer``: class-agnostic object masks of images, written as a COCO proposals file.

Per image and feature source (``features.py``): patch features -> up to ``max_objects``
normalized cuts (``ncut.multi_cut``) -> each patch mask upsampled to the image and refined on
the source's image (``refine.refine_mask``). With several sources, their masks are voted
(``vote.vote``); the score of a mask is its cut score, times the sources' agreement when there
are several. Masks smaller than ``min_area`` pixels are dropped; the best ``max_per_image`` are
kept.

``discover_dataset`` runs it over the images of a COCO file (or a folder) in batches and writes
a proposals file that ``tools/merge_proposals.py`` and ``vclr_d2.data.datasets`` read as it is:
``{"images", "annotations": [{"id", "image_id", "category_id": 1, "bbox", "area",
"iscrowd": 0, "score", "segmentation": RLE}], "categories": [{"id": 1, "name": "object"}]}``.
It is resumable: finished images are appended to ``<out>.partial.jsonl`` as they are done, a
restart skips them, and the final file is written atomically at the end.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_util
from tqdm import tqdm

from vclr_d2.data.proposals import AGNOSTIC_CATEGORY, write_json

from .features import FeatureSource
from .ncut import multi_cut
from .refine import refine_mask
from .vote import Candidate, vote

__all__ = ["DiscoveryParams", "ObjectDiscoverer", "discover_dataset", "images_from_folder",
           "read_rgb"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class DiscoveryParams:
    """Parameters of the discoverer.

    Attributes:
        tau: cosine threshold of a graph edge; None: each source's ``default_tau``.
        eps: weight of the other edges.
        max_objects: normalized cuts per image and source.
        min_patches: components of fewer patches are removed without becoming a mask.
        max_corners: the side above the eigenvector's mean is background when it covers more
            grid corners than this.
        refine_radius: guided-filter radius in image pixels; -1: one patch; 0: no refinement.
        refine_eps: guided-filter regularisation.
        vote_iou: IoU above which masks of different sources vote together.
        vote_pixel: a voted mask keeps the pixels of more than this fraction of its members.
        min_area: masks with fewer pixels are dropped.
        max_per_image: masks kept per image, best score first.
    """

    tau: float | None = None
    eps: float = 1e-5
    max_objects: int = 3
    min_patches: int = 1
    max_corners: int = 2
    refine_radius: int = -1
    refine_eps: float = 1e-3
    vote_iou: float = 0.5
    vote_pixel: float = 0.5
    min_area: int = 4
    max_per_image: int = 100

    def __post_init__(self):
        checks = {"tau": self.tau is None or -1 <= self.tau < 1, "eps": 0 < self.eps <= 1,
                  "max_objects": self.max_objects >= 1, "min_patches": self.min_patches >= 1,
                  "max_corners": 0 <= self.max_corners <= 4,
                  "refine_radius": self.refine_radius >= -1, "refine_eps": self.refine_eps > 0,
                  "vote_iou": 0 <= self.vote_iou < 1, "vote_pixel": 0 <= self.vote_pixel < 1,
                  "min_area": self.min_area >= 1, "max_per_image": self.max_per_image >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"DiscoveryParams: invalid {bad[0]}={getattr(self, bad[0])!r}")


def read_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a missing or unreadable file raises an error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ValueError(f"cannot read image {path} (not an image OpenCV can decode)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _encode(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


class ObjectDiscoverer:
    """Object masks of images from one or several feature sources.

    ``counts`` accumulates: ``images``, ``cuts`` (patch masks found), ``refine_fallbacks``
    (the guided filter's mask was rejected and the upsampled mask kept), ``too_small`` (masks
    dropped by ``min_area``), ``masks`` (kept).
    """

    def __init__(self, sources: Sequence[FeatureSource], params: DiscoveryParams | None = None):
        if not sources:
            raise ValueError("ObjectDiscoverer needs at least one feature source")
        self.sources = list(sources)
        self.params = params or DiscoveryParams()
        self.counts: Counter = Counter()

    def _candidates(self, image: np.ndarray, features: np.ndarray, source: int,
                    size: tuple[int, int]) -> list[Candidate]:
        p = self.params
        if image.shape[:2] != size:
            raise ValueError(f"source {self.sources[source].describe()} read an image of size "
                             f"{image.shape[:2]}, the natural image has {size}")
        tau = self.sources[source].default_tau if p.tau is None else p.tau
        cuts = multi_cut(features, tau, p.eps, p.max_objects, p.min_patches, p.max_corners)
        radius = p.refine_radius
        if radius < 0:
            radius = max(1, round(size[0] / features.shape[0]))
        out = []
        for cut in cuts:
            mask, refined = refine_mask(cut.mask, image, radius, p.refine_eps)
            self.counts["refine_fallbacks"] += bool(radius) and not refined
            out.append(Candidate(mask, cut.score, source))
        self.counts["cuts"] += len(cuts)
        return out

    def discover_images(self, paths: Sequence[str],
                        sizes: Sequence[tuple[int, int]] | None = None) -> list[list[dict]]:
        """Proposals of each image: ``[{"bbox": XYWH, "area", "score", "segmentation"}]``.

        Args:
            paths: natural images; each source reads its own file for it (``image_path``).
            sizes: (H, W) of each natural image; read from the files when None.
        """
        if sizes is None:
            sizes = [read_rgb(p).shape[:2] for p in paths]
        per_image: list[list[Candidate]] = [[] for _ in paths]
        for s, source in enumerate(self.sources):
            images = [read_rgb(source.image_path(p)) for p in paths]
            for i, (image, feats) in enumerate(zip(images, source(images))):
                per_image[i] += self._candidates(image, feats, s, tuple(sizes[i]))
        results = []
        p = self.params
        for candidates in per_image:
            if len(self.sources) > 1:
                candidates = vote(candidates, len(self.sources), p.vote_iou, p.vote_pixel)
            kept = [c for c in candidates if c.mask.sum() >= p.min_area]
            self.counts["too_small"] += len(candidates) - len(kept)
            kept.sort(key=lambda c: -c.score)
            proposals = []
            for c in kept[: p.max_per_image]:
                rle = _encode(c.mask)
                box = mask_util.toBbox(dict(rle, counts=rle["counts"].encode("ascii")))
                proposals.append({"bbox": [float(v) for v in box], "area": int(c.mask.sum()),
                                  "score": round(float(c.score), 6), "segmentation": rle})
            self.counts["masks"] += len(proposals)
            results.append(proposals)
        self.counts["images"] += len(paths)
        return results


def images_from_folder(folder: str) -> list[dict]:
    """COCO ``images`` of the image files of ``folder`` (sorted by name, ids 1..N)."""
    from PIL import Image

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    images = []
    for i, name in enumerate(names, 1):
        with Image.open(os.path.join(folder, name)) as im:
            width, height = im.size
        images.append({"id": i, "file_name": name, "height": height, "width": width})
    return images


def _read_partial(path: str, wanted: set) -> dict:
    """Finished images of an interrupted run; a truncated last line is ignored."""
    done = {}
    if not os.path.isfile(path):
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                logger.warning(f"{path}: ignoring an incomplete line (interrupted write)")
                continue
            if rec["image_id"] in wanted:
                done[rec["image_id"]] = rec["proposals"]
    return done


def discover_dataset(discoverer: ObjectDiscoverer, images: list[dict], image_root: str,
                     out_path: str, batch_size: int = 8, resume: bool = True,
                     progress: bool = True) -> dict:
    """Discover objects in ``images`` (COCO image records) and write the proposals file.

    Args:
        images: ``{"id", "file_name", "height"?, "width"?}``, file names relative to
            ``image_root``.
        out_path: the COCO proposals file; ``<out_path>.partial.jsonl`` holds finished images
            while it runs.
        resume: reuse the finished images of the partial file (else start over).

    Returns:
        counts: ``images``, ``skipped`` (already in the partial file), ``proposals``, and the
        discoverer's counts for this run.
    """
    partial = out_path + ".partial.jsonl"
    ids = [img["id"] for img in images]
    if len(set(ids)) != len(ids):
        raise ValueError(f"image ids are not unique in the image list for {out_path}")
    done = _read_partial(partial, set(ids)) if resume else {}
    todo = [img for img in images if img["id"] not in done]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    discoverer.counts.clear()
    bar = tqdm(total=len(images), initial=len(images) - len(todo), desc="discovering objects",
               unit="img", disable=not progress)
    with open(partial, "a" if resume else "w", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start: start + batch_size]
            paths = [os.path.join(image_root, img["file_name"]) for img in batch]
            sizes = None
            if all("height" in img and "width" in img for img in batch):
                sizes = [(int(img["height"]), int(img["width"])) for img in batch]
            for img, props in zip(batch, discoverer.discover_images(paths, sizes)):
                done[img["id"]] = props
                f.write(json.dumps({"image_id": img["id"], "proposals": props}) + "\n")
            f.flush()
            bar.update(len(batch))
    bar.close()
    anns = []
    for img in images:
        for prop in done[img["id"]]:
            anns.append({"id": len(anns) + 1, "image_id": img["id"],
                         "category_id": AGNOSTIC_CATEGORY["id"], "iscrowd": 0, **prop})
    info = {"description": "vclr_d2 object discovery (normalized cuts)",
            "sources": [s.describe() for s in discoverer.sources],
            "params": asdict(discoverer.params)}
    write_json({"info": info, "images": images, "annotations": anns,
                "categories": [dict(AGNOSTIC_CATEGORY)]}, out_path)
    os.remove(partial)
    return {"images": len(images), "skipped": len(images) - len(todo), "proposals": len(anns),
            **discoverer.counts}
