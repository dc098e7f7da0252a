"""``generate_views``: write the selected views of every image of a folder (the library side
of ``tools/generate_views.py``).

Edges run in ``workers`` processes; the model views (depth, style) read images in a DataLoader
with ``workers`` workers and write results in ``workers`` threads while the models run in the
calling process. Existing outputs are skipped unless ``overwrite``; files are written under a
temporary name and renamed.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vclr_d2.utils.io import InputError

from .layout import list_images, output_dirs, output_path, parse_views
from .models import TorchScriptStyle, load_depth_model
from .render import colorize_depth, colormap_id, edges_view, read_image, write_image

__all__ = ["MODEL_VIEWS", "generate_views"]

log = logging.getLogger(__name__)

MODEL_VIEWS = ("depth", "style")


def _edges_job(job) -> str:
    src, dst, low, high, blur = job
    write_image(Path(dst), edges_view(read_image(src), low, high, blur))
    return dst


class _ImageReader:
    """Dataset over image paths for the DataLoader: ``(index, rgb uint8 HxWx3)``."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        bgr = cv2.imread(str(self.paths[i]), cv2.IMREAD_COLOR)
        return i, None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _single(batch):
    return batch[0]


def _write_depth(path: Path, depth: np.ndarray, colormap, invert: bool) -> None:
    write_image(path, colorize_depth(depth, colormap, invert))


def generate_views(image_dir: str | os.PathLike, views=("edges",), out_root=None,
                   depth_model: str | None = None, style_model: str | None = None,
                   colormap: str = "inferno", invert_depth: bool = False,
                   canny_low: float = 100, canny_high: float = 200, blur: int = 5,
                   workers: int = 0, device: str = "cpu", overwrite: bool = False,
                   jpeg_quality: int = 95, input_size: int = 0, size_multiple: int = 1,
                   style_norm: str = "imagenet", progress: bool = True) -> dict:
    """Write the selected views of every image; returns ``{view: {"written", "skipped"}}``.

    ``image_dir`` is ``<root>/<split>``; the views go to the layout of ``layout.LAYOUT``
    under ``<root>`` (or ``out_root``). A view whose model is missing: depth raises
    ``InputError``, style is skipped with a log message (and reported with
    ``"skipped_no_model"``). Bad inputs (folder, views, colormap, model, unreadable image)
    raise ``InputError`` naming them.
    """
    views = parse_views(views if isinstance(views, str) else ",".join(views))
    cmap = colormap_id(colormap)
    if "depth" in views and not depth_model:
        raise InputError("--views has depth but no --depth-model was given (a local Hugging "
                         "Face folder or TorchScript file); pass one or drop depth from --views")
    images = list_images(image_dir)
    dirs = output_dirs(image_dir, out_root)
    counts: dict[str, dict] = {}
    if "style" in views and not style_model:
        log.warning("style: no --style-model given, skipping the style view")
        counts["style"] = {"written": 0, "skipped": 0, "skipped_no_model": len(images)}
        views = [v for v in views if v != "style"]
    pending: dict[str, list[Path]] = {}
    for view in views:
        todo = [p for p in images
                if overwrite or not output_path(dirs, view, p).exists()]
        pending[view] = todo
        counts[view] = {"written": 0, "skipped": len(images) - len(todo)}
        if counts[view]["skipped"]:
            log.info("%s: %d of %d outputs exist, skipped (--overwrite redoes them)", view,
                     counts[view]["skipped"], len(images))
    model_views = [v for v in MODEL_VIEWS if pending.get(v)]
    # models first: a bad model path or device fails before any work is done
    models = _load_models(model_views, depth_model, style_model, device, input_size,
                          size_multiple, style_norm)
    if pending.get("edges"):
        jobs = [(str(p), str(output_path(dirs, "edges", p)), canny_low, canny_high, blur)
                for p in pending["edges"]]
        bar = tqdm(total=len(jobs), desc="edges", unit="img", disable=not progress)
        if workers > 0:
            import multiprocessing as mp

            with mp.get_context().Pool(workers) as pool:
                for _ in pool.imap_unordered(_edges_job, jobs, chunksize=4):
                    bar.update()
        else:
            for job in jobs:
                _edges_job(job)
                bar.update()
        bar.close()
        counts["edges"]["written"] = len(jobs)
    if model_views:
        _run_models(images, pending, models, dirs, counts, cmap, invert_depth, workers,
                    jpeg_quality, progress)
    return counts


def _load_models(model_views, depth_model, style_model, device, input_size, size_multiple,
                 style_norm) -> dict:
    if not model_views:
        return {}
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here")
    models = {}
    if "depth" in model_views:
        models["depth"] = load_depth_model(depth_model, device, input_size, size_multiple)
    if "style" in model_views:
        models["style"] = TorchScriptStyle(style_model, device, style_norm, input_size,
                                           size_multiple)
    return models


def _run_models(images, pending, models, dirs, counts, cmap, invert_depth, workers,
                jpeg_quality, progress) -> None:
    """Model views: a DataLoader reads images, the main process runs the models, threads
    colorize and write."""
    from torch.utils.data import DataLoader

    model_views = list(models)
    todo = {v: set(pending[v]) for v in model_views}
    paths = [p for p in images if any(p in todo[v] for v in model_views)]
    loader = DataLoader(_ImageReader(paths), batch_size=1, shuffle=False,
                        num_workers=workers, collate_fn=_single)
    writer = None
    if workers > 0:
        from concurrent.futures import ThreadPoolExecutor

        writer = ThreadPoolExecutor(max_workers=workers)
    in_flight: deque = deque()

    def submit(fn, *args):
        if writer is None:
            fn(*args)
            return
        in_flight.append(writer.submit(fn, *args))
        while len(in_flight) > 4 * workers:
            in_flight.popleft().result()

    try:
        for i, rgb in tqdm(loader, total=len(paths), desc="+".join(model_views), unit="img",
                           disable=not progress):
            path = paths[i]
            if rgb is None:
                raise InputError(f"cannot read image {path}")
            if path in todo.get("depth", ()):
                submit(_write_depth, output_path(dirs, "depth", path), models["depth"](rgb),
                       cmap, invert_depth)
                counts["depth"]["written"] += 1
            if path in todo.get("style", ()):
                submit(write_image, output_path(dirs, "style", path), models["style"](rgb),
                       jpeg_quality)
                counts["style"]["written"] += 1
        while in_flight:
            in_flight.popleft().result()
    finally:
        if writer is not None:
            writer.shutdown(wait=True)
