"""Writing: one image's files and annotations (worker), the process pool, the COCO JSON files
and ``params.json`` of the set, and ``ensure_synthetic_openworld`` (generate into the cache
folder once, atomically). Proposal ``area`` is the proposal mask's pixel count; proposal boxes
are jittered independently of their masks."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import uuid

import cv2
import numpy as np
from pycocotools import mask as mask_util

from .parameters import (
    _SPLITS,
    _VIEWS,
    GENERATOR_VERSION,
    SyntheticOpenWorldFiles,
    SyntheticOpenWorldParams,
    _check_args,
    _config_dict,
    synthetic_openworld_files,
)
from .proposals import simulate_proposals
from .scenes import _image_rngs, generate_scene


def _rle(m: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _coco_ann(m: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    bbox = [float(x) for x in mask_util.toBbox(rle)]
    return {"bbox": bbox, "area": float(mask_util.area(rle)), "iscrowd": 0,
            "segmentation": {"size": [int(x) for x in rle["size"]],
                             "counts": rle["counts"].decode("ascii")}}


def _write_png(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"cannot write {path}")


def _generate_one(task) -> dict:
    out_dir, split, index, size, seed, p = task
    scene_rng, prop_rng = _image_rngs(seed, split, index)
    scene = generate_scene(scene_rng, size, p)
    name = f"{index:06d}.png"
    _write_png(os.path.join(out_dir, split, name), scene["natural"])
    for view in _VIEWS:
        _write_png(os.path.join(out_dir, f"{split}_{view}", name), scene[view])
    image = {"id": index + 1, "file_name": name, "height": size, "width": size}
    objects = []
    for o in scene["objects"]:
        ann = _coco_ann(o["mask"])
        ann.update(category_id=p.category_id(o["family"]), novel=o["novel"])
        objects.append(ann)
    proposals = []
    if split == "train":
        for prop in simulate_proposals(prop_rng, scene["objects"], size, p):
            x0, y0, x1, y1 = prop["box"]
            proposals.append({
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": float(np.count_nonzero(prop["mask"])), "iscrowd": 0, "category_id": 1,
                "score": prop["score"], "segmentation": _rle(prop["mask"]),
                "source": prop["source"]})
    return {"image": image, "objects": objects, "proposals": proposals}


def _init_worker():
    cv2.setNumThreads(1)  # one process per core; no OpenCV thread pool in the workers


@contextlib.contextmanager
def _worker_pool(workers: int):
    """A pool of forked workers (they start at once: no re-import of the package).

    OpenCV's thread pool does not survive fork(): a child touching a pool that had threads in
    the parent can deadlock. The parent's pool is therefore shut down (one thread) while the
    workers are forked, and restored afterwards."""
    if "fork" not in mp.get_all_start_methods():  # pragma: no cover - not on Linux
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            yield pool
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker)
    finally:
        cv2.setNumThreads(threads)
    with pool:
        yield pool


def _dump(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _generate(tmp: str, num_train: int, num_val: int, size: int, seed: int,
              p: SyntheticOpenWorldParams, config: dict, workers: int, progress: bool) -> None:
    for split in _SPLITS:
        os.makedirs(os.path.join(tmp, split))
        for view in _VIEWS:
            os.makedirs(os.path.join(tmp, f"{split}_{view}"))
    os.makedirs(os.path.join(tmp, "annotations"))
    tasks = [(tmp, "train", i, size, seed, p) for i in range(num_train)]
    tasks += [(tmp, "val", i, size, seed, p) for i in range(num_val)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), desc="synthetic open-world set", unit="img")
    results = {"train": [], "val": []}
    try:
        if workers and workers > 0:
            with _worker_pool(workers) as pool:
                for task, res in zip(tasks, pool.imap(_generate_one, tasks, chunksize=8)):
                    results[task[1]].append(res)
                    if bar is not None:
                        bar.update(1)
        else:
            for task in tasks:
                results[task[1]].append(_generate_one(task))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    cats = [{"id": p.category_id(f), "name": f, "supercategory": "novel" if f in
             p.novel_families else "known"} for f in p.families]
    info = {"description": "vclr_d2 synthetic open-world set", "version": GENERATOR_VERSION,
            "seed": seed, "image_size": size}
    stats = {}

    def coco(split, keep, categories, extra=None):
        images, anns = [], []
        for res in results[split]:
            images.append(res["image"])
            for o in res["objects"]:
                if keep(o):
                    ann = {"id": len(anns) + 1, "image_id": res["image"]["id"]}
                    ann.update({k: v for k, v in o.items() if k != "novel"})
                    anns.append(ann)
        return {"info": info, "images": images, "annotations": anns, "categories": categories}

    ann_dir = os.path.join(tmp, "annotations")
    known = [c for c in cats if c["supercategory"] == "known"]
    novel = [c for c in cats if c["supercategory"] == "novel"]
    for fname, split, keep, categories in (
            ("train_known.json", "train", lambda o: not o["novel"], known),
            ("train_all.json", "train", lambda o: True, cats),
            ("val_novel.json", "val", lambda o: o["novel"], novel),
            ("val_all.json", "val", lambda o: True, cats)):
        d = coco(split, keep, categories)
        stats[fname[:-5] + "_annotations"] = len(d["annotations"])
        _dump(os.path.join(ann_dir, fname), d)

    images, props = [], []
    by_source = {"known": 0, "novel": 0, "false_positive": 0}
    for res in results["train"]:
        images.append(res["image"])
        for prop in res["proposals"]:
            by_source[prop["source"]] += 1
            ann = {"id": len(props) + 1, "image_id": res["image"]["id"]}
            ann.update({k: v for k, v in prop.items() if k != "source"})
            props.append(ann)
    _dump(os.path.join(ann_dir, "train_proposals.json"),
          {"info": info, "images": images, "annotations": props,
           "categories": [{"id": 1, "name": "object"}]})
    stats.update(train_images=num_train, val_images=num_val, proposals=len(props),
                 proposals_on_known=by_source["known"], proposals_on_novel=by_source["novel"],
                 proposals_false_positive=by_source["false_positive"],
                 train_novel_objects=sum(o["novel"] for r in results["train"]
                                         for o in r["objects"]))
    meta = dict(config, known_classes=list(p.known_families),
                novel_classes=list(p.novel_families), categories=cats, stats=stats)
    _dump(os.path.join(tmp, "params.json"), meta)  # written last: marks the set complete


def ensure_synthetic_openworld(num_train: int = 1000, num_val: int = 200, image_size: int = 128,
                               seed: int = 0, root: str | None = None,
                               params: SyntheticOpenWorldParams | None = None,
                               workers: int = 0, progress: bool = True,
                               ) -> SyntheticOpenWorldFiles:
    """Generate the set into its cache folder if it is not there yet, and return its paths.

    Generation goes to a temporary sibling folder renamed into place at the end, so an
    interrupted run never leaves a folder that looks complete; if another process finished
    first, its folder is used. ``workers`` > 0 uses that many processes (same output).
    """
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    files = synthetic_openworld_files(num_train, num_val, image_size, seed, root, params)
    if files.is_complete():
        return files
    num_train, num_val, image_size, seed, params = _check_args(num_train, num_val, image_size,
                                                               seed, params)
    config = _config_dict(num_train, num_val, image_size, seed, params)
    parent = os.path.dirname(files.dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(files.dir)}.tmp-{os.getpid()}-"
                               f"{uuid.uuid4().hex[:8]}")
    try:
        _generate(tmp, num_train, num_val, image_size, seed, params, config, int(workers),
                  progress)
        if os.path.isdir(files.dir) and not files.is_complete():
            shutil.rmtree(files.dir, ignore_errors=True)  # a stray incomplete folder
        try:
            os.rename(tmp, files.dir)
        except OSError:
            if not files.is_complete():
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return files
