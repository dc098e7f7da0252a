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
import logging
import sys

from vclr_d2.data.views import COLORMAPS, GRAY, VIEWS, generate_views, output_dirs
from vclr_d2.utils import HelpFormatter, run_tool


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate_views.py",
        description=__doc__, formatter_class=HelpFormatter)
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

    def body() -> int:
        counts = generate_views(
            args.images, args.views, args.out_root, args.depth_model, args.style_model,
            args.colormap, args.invert_depth, args.canny_low, args.canny_high, args.blur,
            args.workers, args.device, args.overwrite, args.jpeg_quality, args.input_size,
            args.size_multiple, args.style_norm, progress=not args.no_progress)
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

    return run_tool(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
