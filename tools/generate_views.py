#!/usr/bin/env python
"""Write the v-CLR student views (colorized depth, stylized, edges) of a folder of images.

    python tools/generate_views.py --images datasets/coco/train2017 --views edges
    python tools/generate_views.py --images datasets/coco/train2017 --views depth \\
        --depth-model checkpoints/depth-anything-small-hf --device cuda --workers 8
    python tools/generate_views.py --images datasets/coco/train2017 --views style \\
        --style-model checkpoints/style.torchscript --device cuda

For the image folder ``<root>/<split>`` (e.g. ``datasets/coco/train2017``) the views are
written in the layout of the official project, one file per image with the image's stem and
resolution:

* depth: ``<root>/<split>_depth_cmap/<stem>.png`` (depth normalised per image, colorized)
* style: ``<root>/style_coco_<split>/<stem>.jpg``
* edges: ``<root>/<split>_edges/<stem>.png`` (Canny on a blurred grayscale image, 3 channels)

``--out-root`` replaces ``<root>``. Existing outputs are skipped (resume) unless
``--overwrite``; files are written under a temporary name and renamed, so an interrupted run
leaves no partial file behind.

Models are read from local paths only (nothing is downloaded):

* ``--depth-model DIR``: a Hugging Face depth-estimation folder (DPT, Depth Anything, ...;
  ``AutoModelForDepthEstimation`` + ``AutoImageProcessor``, needs ``pip install
  vclr_d2[views]``). ``--depth-model FILE``: a TorchScript module taking a 1x3xHxW float RGB
  image in [0, 1] normalised by the ImageNet mean/std and returning 1x1xhxw, 1xhxw or hxw depth.
* ``--style-model FILE``: a TorchScript module image -> image (1x3xHxW -> 1x3xhxw, RGB), with
  input and output normalised by the ImageNet mean/std (``--style-norm imagenet``) or in
  [0, 1] (``--style-norm none``). Without ``--style-model`` the style view is skipped.

``--workers N``: edges run in N processes; depth/style read images in a DataLoader with N
workers and write results in N threads while the model runs in the main process.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import warnings
from collections import deque
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger("generate_views")

VIEWS = ("edges", "depth", "style")
MODEL_VIEWS = ("depth", "style")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# name -> OpenCV colormap id; "gray" writes the normalised depth as a gray image
COLORMAPS = {n[len("COLORMAP_"):].lower(): getattr(cv2, n)
             for n in dir(cv2) if n.startswith("COLORMAP_")}
GRAY = "gray"


class ToolError(Exception):
    """A problem with the input or the options; its message names the file, key and value."""


# --------------------------------------------------------------------------- files and layout
def output_dirs(image_dir: str | os.PathLike, out_root: str | os.PathLike | None = None
                ) -> dict[str, Path]:
    """Folder of each view for ``<root>/<split>`` (``out_root`` replaces ``<root>``)."""
    image_dir = Path(os.path.abspath(image_dir))
    split = image_dir.name
    root = Path(out_root) if out_root is not None else image_dir.parent
    return {"depth": root / f"{split}_depth_cmap", "style": root / f"style_coco_{split}",
            "edges": root / f"{split}_edges"}


VIEW_SUFFIX = {"depth": ".png", "style": ".jpg", "edges": ".png"}


def output_path(dirs: dict[str, Path], view: str, image: Path) -> Path:
    return dirs[view] / (image.stem + VIEW_SUFFIX[view])


def list_images(image_dir: str | os.PathLike) -> list[Path]:
    """The images of a folder (not recursive), sorted; errors name the folder or the clash."""
    d = Path(image_dir)
    if not d.is_dir():
        raise ToolError(f"image folder not found: {d}")
    images = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not images:
        raise ToolError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {d}")
    seen: dict[str, Path] = {}
    for p in images:
        if p.stem in seen:
            raise ToolError(f"two images with the same stem would write the same view file: "
                            f"{seen[p.stem]} and {p}")
        seen[p.stem] = p
    return images


def parse_views(text: str) -> list[str]:
    views = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise ToolError(f"--views: unknown view(s) {', '.join(bad) or repr(text)}; valid: "
                        f"{', '.join(VIEWS)}")
    return list(dict.fromkeys(views))


def colormap_id(name: str) -> int | None:
    """OpenCV colormap id of a name like ``inferno`` (None for ``gray``); bad names list all."""
    key = name.strip().lower()
    if key == GRAY:
        return None
    if key not in COLORMAPS:
        raise ToolError(f"--colormap: unknown colormap {name!r}; valid: "
                        f"{', '.join(sorted([*COLORMAPS, GRAY]))}")
    return COLORMAPS[key]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """BGR uint8 HxWx3 (gray and RGBA images are converted)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ToolError(f"cannot read image {path}")
    return img


def write_image(path: Path, img: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(tmp), img, params):
        raise ToolError(f"cannot write {path}")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- view functions
def compute_edges(bgr: np.ndarray, low: float = 100, high: float = 200, blur: int = 5
                  ) -> np.ndarray:
    """Canny edges of the grayscale image after a ``blur``x``blur`` Gaussian, 3 channels."""
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    if blur > 1:
        gray = cv2.GaussianBlur(gray, (blur, blur), 0)
    edges = cv2.Canny(gray, low, high)
    return cv2.cvtColor(edges, cv2.COLOR_GRAY2BGR)


def colorize_depth(depth: np.ndarray, colormap: int | None, invert: bool = False) -> np.ndarray:
    """Min-max normalise an HxW depth map per image (flipped with ``invert``), colorize (BGR).

    Non-finite values count as the minimum; a constant map gives 0 everywhere.
    """
    d = np.asarray(depth, dtype=np.float64)
    finite = np.isfinite(d)
    if not finite.any():
        d = np.zeros(d.shape)
    else:
        lo, hi = d[finite].min(), d[finite].max()
        d = np.where(finite, d, lo)
        d = (d - lo) / (hi - lo) if hi > lo else np.zeros(d.shape)
    if invert:
        d = 1.0 - d
    u8 = np.clip(np.round(d * 255.0), 0, 255).astype(np.uint8)
    if colormap is None:
        return cv2.cvtColor(u8, cv2.COLOR_GRAY2BGR)
    return cv2.applyColorMap(u8, colormap)


def model_input_size(h: int, w: int, input_size: int = 0, multiple: int = 1) -> tuple[int, int]:
    """(h, w) fed to a TorchScript model: shorter side ``input_size`` (0: as is), rounded to
    a multiple of ``multiple``."""
    if input_size > 0:
        s = input_size / min(h, w)
        h, w = h * s, w * s
    m = max(1, multiple)
    return max(m, int(round(h / m)) * m), max(m, int(round(w / m)) * m)


def _to_tensor(rgb: np.ndarray, size: tuple[int, int], normalize: bool, device):
    import torch

    h, w = rgb.shape[:2]
    if (h, w) != size:
        interp = cv2.INTER_AREA if size[0] * size[1] < h * w else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=interp)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float()
    x = x / 255.0
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def _resize_map(t, h: int, w: int):
    """Bilinear resize of a 1xCxhxw tensor to HxW."""
    import torch.nn.functional as F

    if tuple(t.shape[-2:]) != (h, w):
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return t


class TorchScriptDepth:
    """Depth from a TorchScript module; ``__call__(rgb uint8 HxWx3) -> float HxW``."""

    def __init__(self, path: str, device: str = "cpu", input_size: int = 0, multiple: int = 1):
        self.module = _load_torchscript(path, device, "depth")
        self.path, self.device = path, device
        self.input_size, self.multiple = input_size, multiple

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        h, w = rgb.shape[:2]
        x = _to_tensor(rgb, model_input_size(h, w, self.input_size, self.multiple), True,
                       self.device)
        with torch.inference_mode():
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not torch.is_tensor(out) or out.dim() not in (2, 3, 4) or (
                out.dim() == 4 and tuple(out.shape[:2]) != (1, 1)) or (
                out.dim() == 3 and out.shape[0] != 1):
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ToolError(f"depth model {self.path} returned {shape}; expected a "
                            f"1x1xhxw, 1xhxw or hxw tensor")
        out = out.float().reshape(1, 1, *out.shape[-2:])
        return _resize_map(out, h, w)[0, 0].cpu().double().numpy()


class HFDepth:
    """Depth from a local Hugging Face depth-estimation folder (model + image processor)."""

    def __init__(self, path: str, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation
        except ImportError as e:
            raise ToolError(f"--depth-model {path} is a Hugging Face folder, which needs "
                            f"transformers (pip install 'vclr_d2[views]'): {e}") from e
        if not (Path(path) / "config.json").is_file():
            raise ToolError(f"--depth-model {path}: a folder must be a Hugging Face model "
                            f"folder with config.json (or pass a TorchScript file)")
        try:
            self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForDepthEstimation.from_pretrained(
                path, local_files_only=True).to(device).eval()
        except (OSError, ValueError, KeyError) as e:
            raise ToolError(f"cannot load the Hugging Face depth model in {path}: {e}") from e
        self.path, self.device = path, device

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        h, w = rgb.shape[:2]
        inputs = self.processor(images=rgb, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            outputs = self.model(**inputs)
            post = getattr(self.processor, "post_process_depth_estimation", None)
            if post is not None:
                # the processor's own post-processing: removes padding (ZoeDepth) and resizes
                kwargs = {"target_sizes": [(h, w)]}
                if "source_sizes" in inspect.signature(post).parameters:
                    kwargs["source_sizes"] = [(h, w)]
                out = post(outputs, **kwargs)[0]["predicted_depth"]
            else:
                out = outputs.predicted_depth
        out = out.float().reshape(1, 1, *out.shape[-2:])
        return _resize_map(out, h, w)[0, 0].cpu().double().numpy()


class TorchScriptStyle:
    """Stylization by a TorchScript module; ``__call__(rgb uint8 HxWx3) -> BGR uint8 HxWx3``."""

    def __init__(self, path: str, device: str = "cpu", norm: str = "imagenet",
                 input_size: int = 0, multiple: int = 1):
        self.module = _load_torchscript(path, device, "style")
        self.path, self.device, self.norm = path, device, norm
        self.input_size, self.multiple = input_size, multiple

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        h, w = rgb.shape[:2]
        normalize = self.norm == "imagenet"
        x = _to_tensor(rgb, model_input_size(h, w, self.input_size, self.multiple), normalize,
                       self.device)
        with torch.inference_mode():
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not torch.is_tensor(out) or out.dim() != 4 or tuple(out.shape[:2]) != (1, 3):
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ToolError(f"style model {self.path} returned {shape}; expected 1x3xhxw")
        out = out.float()
        if normalize:
            mean = torch.tensor(IMAGENET_MEAN, device=out.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=out.device).view(1, 3, 1, 1)
            out = out * std + mean
        out = _resize_map(out.clamp(0, 1), h, w).clamp(0, 1)
        img = (out[0].permute(1, 2, 0) * 255.0).round().byte().cpu().numpy()
        return cv2.cvtColor(img, cv2.COLOR_RGB2BGR)


def _load_torchscript(path: str, device: str, what: str):
    import torch

    p = Path(path)
    if not p.is_file():
        raise ToolError(f"{what} model file not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            module = torch.jit.load(str(p), map_location=device)
    except (RuntimeError, ValueError) as e:
        raise ToolError(f"cannot load {what} model {p} as TorchScript: "
                        f"{str(e).splitlines()[0] if str(e) else e}") from e
    return module.eval()


def load_depth_model(path: str, device: str = "cpu", input_size: int = 0, multiple: int = 1):
    """A Hugging Face folder or a TorchScript file, chosen by what ``path`` is."""
    p = Path(path)
    if p.is_dir():
        return HFDepth(path, device)
    if not p.exists():
        raise ToolError(f"depth model not found: {p}")
    return TorchScriptDepth(path, device, input_size, multiple)


# --------------------------------------------------------------------------- workers
def _edges_job(job) -> str:
    src, dst, low, high, blur = job
    write_image(Path(dst), compute_edges(read_image(src), low, high, blur))
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


# --------------------------------------------------------------------------- driver
def generate_views(image_dir: str | os.PathLike, views=("edges",), out_root=None,
                   depth_model: str | None = None, style_model: str | None = None,
                   colormap: str = "inferno", invert_depth: bool = False,
                   canny_low: float = 100, canny_high: float = 200, blur: int = 5,
                   workers: int = 0, device: str = "cpu", overwrite: bool = False,
                   jpeg_quality: int = 95, input_size: int = 0, size_multiple: int = 1,
                   style_norm: str = "imagenet", progress: bool = True) -> dict:
    """Write the selected views of every image; returns ``{view: {"written", "skipped"}}``.

    A view whose model is missing: depth raises ``ToolError``, style is skipped with a log
    message (and reported with ``"skipped_no_model"``).
    """
    views = parse_views(views if isinstance(views, str) else ",".join(views))
    cmap = colormap_id(colormap)
    if "depth" in views and not depth_model:
        raise ToolError("--views has depth but no --depth-model was given (a local Hugging "
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
        raise ToolError(f"--device {device}: CUDA is not available here")
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
                raise ToolError(f"cannot read image {path}")
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """The module docstring verbatim, and the defaults of the options that have one."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate_views.py",
        description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--images", required=True, help="image folder <root>/<split>")
    p.add_argument("--out-root", help="write the view folders here instead of <root>")
    p.add_argument("--views", default="edges,depth,style",
                   help=f"comma-separated views among {', '.join(VIEWS)}")
    p.add_argument("--depth-model",
                   help="local Hugging Face depth-estimation folder or TorchScript file")
    p.add_argument("--style-model", help="local TorchScript style model (image -> image)")
    p.add_argument("--style-norm", choices=("imagenet", "none"), default="imagenet",
                   help="style model input/output: ImageNet-normalised or in [0, 1]")
    p.add_argument("--colormap", default="inferno",
                   help=f"depth colormap: {', '.join(sorted([*COLORMAPS, GRAY]))}")
    p.add_argument("--invert-depth", action="store_true",
                   help="flip the normalised depth (near <-> far) before colorizing")
    p.add_argument("--input-size", type=int, default=0,
                   help="TorchScript models: resize the shorter side to this (0: native)")
    p.add_argument("--size-multiple", type=int, default=1,
                   help="TorchScript models: round the input sides to a multiple of this")
    p.add_argument("--canny-low", type=float, default=100.0, help="Canny lower threshold")
    p.add_argument("--canny-high", type=float, default=200.0, help="Canny upper threshold")
    p.add_argument("--blur", type=int, default=5,
                   help="Gaussian blur kernel before Canny (odd; 0 or 1: none)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of style views")
    p.add_argument("--workers", type=int, default=0,
                   help="edge processes / DataLoader workers and writer threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N) for the models")
    p.add_argument("--overwrite", action="store_true", help="redo existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    if args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if args.blur < 0 or (args.blur > 1 and args.blur % 2 == 0):
        parser.error(f"--blur must be 0, 1 or an odd kernel size, got {args.blur}")
    if args.canny_low < 0 or args.canny_high < 0:
        parser.error(f"--canny-low/--canny-high must be >= 0, got {args.canny_low}, "
                     f"{args.canny_high}")
    if not 0 <= args.jpeg_quality <= 100:
        parser.error(f"--jpeg-quality must be in [0, 100], got {args.jpeg_quality}")
    if args.input_size < 0 or args.size_multiple < 1:
        parser.error(f"--input-size must be >= 0 and --size-multiple >= 1, got "
                     f"{args.input_size}, {args.size_multiple}")
    if not (args.device == "cpu" or args.device == "cuda" or args.device.startswith("cuda:")):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        counts = generate_views(
            args.images, args.views, args.out_root, args.depth_model, args.style_model,
            args.colormap, args.invert_depth, args.canny_low, args.canny_high, args.blur,
            args.workers, args.device, args.overwrite, args.jpeg_quality, args.input_size,
            args.size_multiple, args.style_norm, progress=not args.no_progress)
    except ToolError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    dirs = output_dirs(args.images, args.out_root)
    for view in VIEWS:
        if view not in counts:
            continue
        c = counts[view]
        extra = (f", {c['skipped_no_model']} not made (no model)"
                 if c.get("skipped_no_model") else "")
        print(f"{view}: {c['written']} written, {c['skipped']} existing skipped{extra} "
              f"-> {dirs[view]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
