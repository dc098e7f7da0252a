"""Predictions on any images: input discovery, batched inference, drawings, COCO results.

``tools/predict.py`` is the command line over these pieces:

- ``list_sources``: image files, folders, glob patterns and videos -> ``Source`` items;
- ``iter_frames``: each source's images (video frames through OpenCV), in BGR;
- ``BatchPredictor``: a detectron2 model from a config and a checkpoint, run on batches of BGR
  images at the config's test size (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), with the EMA
  teacher's weights unless ``MODEL.VCLR.TEST_WITH_TEACHER`` is False;
- ``draw``: detectron2's ``Visualizer`` overlay of the top predictions (masks, boxes, scores);
- ``to_coco_results``: COCO result dicts, the format ``vclr_d2.evaluation.evaluate_recall`` and
  pycocotools' ``loadRes`` read.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "BatchPredictor",
    "Source",
    "draw",
    "iter_frames",
    "list_sources",
    "select",
    "to_coco_results",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
# The one category of class-agnostic results.
OBJECT_CATEGORY_ID = 1


@dataclass(frozen=True)
class Source:
    """An image file or a video file to predict on."""

    path: str
    is_video: bool = False

    def num_frames(self, step: int = 1) -> int:
        """Images this source yields (a video's frame count as OpenCV reports it, / step)."""
        if not self.is_video:
            return 1
        cap = cv2.VideoCapture(self.path)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        return -(-max(n, 0) // step)


def _kind(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    return "image" if ext in IMAGE_EXTENSIONS else "video" if ext in VIDEO_EXTENSIONS else None


def list_sources(inputs: Sequence[str]) -> list[Source]:
    """Each input as sources, in order: an image or video file as itself, a folder as its
    images (sorted, not recursive), anything with ``*?[`` as a glob pattern of image and video
    files (sorted).

    Raises:
        FileNotFoundError: a path that does not exist, a pattern or folder with no image.
        ValueError: a file whose extension is neither an image's nor a video's.
    """
    out: list[Source] = []
    for spec in inputs:
        if os.path.isdir(spec):
            files = sorted(os.path.join(spec, f) for f in os.listdir(spec)
                           if _kind(f) == "image")
            if not files:
                raise FileNotFoundError(
                    f"folder {spec} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            out += [Source(f) for f in files]
        elif os.path.isfile(spec):
            kind = _kind(spec)
            if kind is None:
                raise ValueError(f"{spec}: not an image ({', '.join(IMAGE_EXTENSIONS)}) or a video "
                                 f"({', '.join(VIDEO_EXTENSIONS)})")
            out.append(Source(spec, kind == "video"))
        elif glob.has_magic(spec):
            files = sorted(f for f in glob.glob(spec, recursive=True)
                           if os.path.isfile(f) and _kind(f))
            if not files:
                raise FileNotFoundError(f"pattern {spec!r} matches no image or video file")
            out += [Source(f, _kind(f) == "video") for f in files]
        else:
            raise FileNotFoundError(f"no such file or folder: {spec}")
    return out


def iter_frames(source: Source, step: int = 1) -> Iterator[tuple[int | None, np.ndarray]]:
    """(frame index or None for an image, HxWx3 uint8 BGR image) of a source; every
    ``step``-th frame of a video.

    Raises:
        ValueError: an image that cannot be decoded or a video OpenCV cannot open (named).
    """
    if not source.is_video:
        try:
            yield None, utils.read_image(source.path, format="BGR")
        except Exception as e:
            raise ValueError(f"cannot read image {source.path}: {e}") from e
        return
    cap = cv2.VideoCapture(source.path)
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open video {source.path}")
    try:
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % step == 0:
                yield index, frame
            index += 1
    finally:
        cap.release()


class BatchPredictor:
    """A model built from ``cfg`` with ``cfg.MODEL.WEIGHTS``, run on batches of BGR images.

    Like detectron2's ``DefaultPredictor`` (test-size resize, ``INPUT.FORMAT`` conversion,
    outputs at the input's size), for several images per forward pass.
    """

    def __init__(self, cfg):
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("no weights: set MODEL.WEIGHTS (or --weights) to a checkpoint")
        if not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise FileNotFoundError(f"checkpoint not found: {cfg.MODEL.WEIGHTS}")
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={self.input_format!r}: predictions take RGB or BGR")

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> list[Instances]:
        """
        Args:
            images: HxWx3 uint8 BGR images (OpenCV's order).

        Returns:
            one ``Instances`` per image, on the CPU, at the image's size.
        """
        inputs = []
        for bgr in images:
            img = bgr[:, :, ::-1] if self.input_format == "RGB" else bgr
            h, w = img.shape[:2]
            resized = self.resize.get_transform(img).apply_image(img)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
            inputs.append({"image": tensor, "height": h, "width": w})
        return [out["instances"].to("cpu") for out in self.model(inputs)]


def select(instances: Instances, top_k: int, score_thresh: float) -> Instances:
    """The ``top_k`` highest-scoring instances with score >= ``score_thresh``, best first."""
    keep = instances[instances.scores >= score_thresh]
    order = keep.scores.argsort(descending=True, stable=True)[: max(top_k, 0)]
    return keep[order]


def draw(image_bgr: np.ndarray, instances: Instances, *, min_size: int = 480) -> np.ndarray:
    """Masks, boxes and scores of ``instances`` over the image, with detectron2's ``Visualizer``.

    Small images are drawn enlarged so that their shorter side is at least ``min_size``
    pixels and the score labels stay legible.

    Returns:
        the drawing, HxWx3 uint8 BGR (``cv2.imwrite`` order).
    """
    h, w = image_bgr.shape[:2]
    scale = max(1.0, min_size / max(min(h, w), 1))
    vis = Visualizer(image_bgr[:, :, ::-1], None, scale=scale, instance_mode=ColorMode.IMAGE)
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
    labels = [f"{s:.2f}" for s in instances.scores.tolist()]
    out = vis.overlay_instances(boxes=instances.pred_boxes.tensor.numpy(), masks=masks,
                                labels=labels)
    return out.get_image()[:, :, ::-1]


def to_coco_results(instances: Instances, image_id: int) -> list[dict]:
    """COCO result dicts (``image_id``, ``category_id`` 1, XYWH ``bbox``, ``score``, RLE
    ``segmentation`` when there are masks), by detectron2's ``instances_to_coco_json``."""
    results = instances_to_coco_json(instances, image_id)
    for r in results:
        r["category_id"] = OBJECT_CATEGORY_ID
    return results
