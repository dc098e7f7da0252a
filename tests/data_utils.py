"""A tiny open-world dataset on disk for data and trainer tests.

Images are H x W = 48 x 64 PNGs with coloured rectangles on an asymmetric gradient. The view
"rev" of each image is the image with its channels reversed (a known function of the natural
image), stored in the official layout ``<root>/<split>_rev/<stem>.png``.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

H, W = 48, 64
# Per image: ground-truth rectangles (x0, y0, x1, y1) and proposals (box, score).
GT_BOXES = [(4, 6, 24, 30), (36, 10, 60, 40)]
PROPOSALS = [((26, 2, 34, 20), 0.9), ((2, 34, 20, 46), 0.35)]  # disjoint from GT
COLORS = [(250, 40, 40), (40, 250, 90), (60, 60, 250), (240, 240, 30)]


def natural_image(index: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB: gradient background + the four rectangles in their colours."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 3 % 256, yy * 5 % 256, (xx + 2 * yy + 17 * index) % 256], -1)
    img = img.astype(np.uint8)
    for (x0, y0, x1, y1), c in zip(GT_BOXES + [p[0] for p in PROPOSALS], COLORS):
        img[y0:y1, x0:x1] = c
    return img


def _poly(box) -> list[list[float]]:
    x0, y0, x1, y1 = box
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_dataset(root: str, n: int = 4, split: str = "images", mixed: bool = True,
                  views: tuple[str, ...] = ("rev",)) -> dict:
    """Write images, views and JSONs under ``root``; returns the paths and expected ids.

    ``mixed``: proposals are in the training JSON with ``is_proposal: 1``; otherwise they are in
    a separate proposals file and the training JSON holds ground truth only.
    """
    img_dir = os.path.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    images, gt_anns, prop_anns = [], [], []
    for i in range(n):
        img = natural_image(i)
        name = f"{i:06d}.png"
        cv2.imwrite(os.path.join(img_dir, name), img[:, :, ::-1])
        for v in views:
            vdir = os.path.join(root, f"{split}_{v}")
            os.makedirs(vdir, exist_ok=True)
            view = img[:, :, ::-1] if v == "rev" else 255 - img
            cv2.imwrite(os.path.join(vdir, name), np.ascontiguousarray(view[:, :, ::-1]))
        images.append({"id": 100 + i, "file_name": name, "height": H, "width": W})
        for k, b in enumerate(GT_BOXES):
            gt_anns.append({"id": 1000 + 10 * i + k, "image_id": 100 + i, "category_id": 3,
                            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                            "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0,
                            "segmentation": _poly(b)})
        for k, (b, s) in enumerate(PROPOSALS):
            prop_anns.append({"id": 5000 + 10 * i + k, "image_id": 100 + i, "category_id": 1,
                              "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s,
                              "area": float((b[2] - b[0]) * (b[3] - b[1])), "iscrowd": 0,
                              "segmentation": _poly(b)})
    cats = [{"id": 1, "name": "object"}, {"id": 3, "name": "car"}]
    paths = {"image_root": img_dir, "gt_ids": [a["id"] for a in gt_anns],
             "proposal_ids": [a["id"] for a in prop_anns]}
    if mixed:
        anns = gt_anns + [dict(a, is_proposal=1) for a in prop_anns]
        paths["json_file"] = os.path.join(root, "train_mixed.json")
        paths["proposals_file"] = None
    else:
        anns = gt_anns
        paths["json_file"] = os.path.join(root, "train_gt.json")
        paths["proposals_file"] = os.path.join(root, "proposals.json")
        with open(paths["proposals_file"], "w") as f:
            json.dump({"images": images, "annotations": prop_anns, "categories": cats[:1]}, f)
    with open(paths["json_file"], "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return paths
