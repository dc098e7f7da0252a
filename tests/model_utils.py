"""Helpers for model tests: tiny scenes with known objects, as VCLR inputs."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes, Instances

SCENE_BOXES = [(10, 12, 50, 40), (70, 20, 118, 70), (20, 70, 60, 118), (80, 85, 110, 115)]


def instances(boxes, masks: np.ndarray | None, size: tuple[int, int]) -> Instances:
    """Class-agnostic target Instances with ``gt_boxes`` (K, 4) and optional masks (K, H, W)."""
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.zeros(len(inst.gt_boxes), dtype=torch.int64)
    if masks is not None:
        inst.gt_masks = BitMasks(torch.as_tensor(masks, dtype=torch.bool).reshape(-1, *size))
    return inst


def scene(seed: int = 0, size: int = 128, boxes=SCENE_BOXES):
    """A noisy background with ellipses and rectangles filling ``boxes``.

    Returns:
        image: (3, size, size) uint8 tensor; masks: (K, size, size) bool array.
    """
    rng = np.random.RandomState(seed)
    img = (rng.rand(size, size, 3) * 60 + 40).astype(np.uint8)
    masks = []
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        m = np.zeros((size, size), np.uint8)
        if k % 2:
            cv2.rectangle(m, (x0, y0), (x1 - 1, y1 - 1), 1, -1)
        else:
            center, axes = ((x0 + x1) // 2, (y0 + y1) // 2), ((x1 - x0) // 2, (y1 - y0) // 2)
            cv2.ellipse(m, center, axes, 0, 0, 360, 1, -1)
        img[m > 0] = rng.randint(100, 255, 3)
        masks.append(m > 0)
    return torch.as_tensor(img.transpose(2, 0, 1).copy()), np.stack(masks)


def training_input(image: torch.Tensor, masks: np.ndarray, boxes=SCENE_BOXES,
                   proposals=None, natural: torch.Tensor | None = None) -> dict:
    size = tuple(image.shape[-2:])
    x = {"image": image, "image_natural": image if natural is None else natural,
         "instances": instances(boxes, masks, size), "view": "natural"}
    if proposals is not None:
        x["proposals"] = instances(proposals, None, size)
    return x
