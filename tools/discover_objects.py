#!/usr/bin/env python
"""Discover objects without labels (normalized cuts, MaskCut / VoteCut style) and write them as
a COCO proposals file for v-CLR training.

    # DINO ViT-S/8 from a local checkpoint, on the images of a COCO file, on the GPU
    python tools/discover_objects.py --gt datasets/my_train.json --image-root datasets/my_images \\
        --source timm:vit_small_patch8_224.dino=checkpoints/dino_deitsmall8_pretrain.pth \\
        --out datasets/my_train_discovered.json --device cuda --batch-size 16
    # two backbones vote (the score becomes their agreement x the cut score)
    python tools/discover_objects.py --gt ... --image-root ... --out ... \\
        --source timm:vit_small_patch8_224.dino=checkpoints/dino_deitsmall8_pretrain.pth \\
        --source timm:vit_base_patch8_224.dino=checkpoints/dino_vitbase8_pretrain.pth
    # no model: colour histograms of the depth views (the built-in synthetic set)
    python tools/discover_objects.py --gt $S/annotations/train_known.json --image-root $S/train \\
        --source pixels@$S/train_depth --input-size 128 --pixel-patch 4 --max-objects 6 \\
        --out $S/annotations/train_discovered.json

Sources (``--source``, repeatable; ``@DIR`` reads the image of the same file stem from DIR, e.g.
a depth view): ``timm:MODEL=CHECKPOINT`` (any timm model; checkpoint read from a local file,
nothing is downloaded; ViTs give their last block's attention keys, CNNs their feature map) or
``pixels`` (soft colour histograms of patches, no model). Per image and source: up to
``--max-objects`` normalized cuts on the patch graph, each object removed before the next cut,
masks upsampled and refined with a guided filter; several sources vote.

Images: ``--gt`` (a COCO JSON: its ``images`` and their ids, e.g. the known-class training
annotations, so that the proposals match its image ids) with ``--image-root``, or ``--images``
(a folder: every image file, ids 1..N in name order).

Output ``--out``: ``{"images", "annotations": [{"id", "image_id", "category_id": 1, "bbox",
"area", "iscrowd": 0, "score", "segmentation": RLE}], "categories": [{"id": 1, "name":
"object"}]}``, read as it is by ``tools/merge_proposals.py --dets`` and as a separate proposals
file by ``vclr_d2.data.datasets``. Finished images go to ``<out>.partial.jsonl`` as they are
done; a rerun skips them (``--overwrite`` starts over) and the final file is written atomically.
"""

from __future__ import annotations

import argparse
import sys

from vclr_d2.data.proposals import check_gt
from vclr_d2.discovery import (
    DiscoveryParams,
    ObjectDiscoverer,
    build_feature_source,
    discover_dataset,
    images_from_folder,
)
from vclr_d2.utils import load_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="discover_objects.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    images = p.add_mutually_exclusive_group(required=True)
    images.add_argument("--gt", help="COCO JSON whose 'images' are processed (ids kept)")
    images.add_argument("--images", help="a folder of images (ids 1..N by file name)")
    p.add_argument("--image-root", help="folder of the --gt images' file_name (required with "
                                        "--gt)")
    p.add_argument("--out", required=True, help="output COCO proposals JSON")
    p.add_argument("--source", action="append", required=True, metavar="SPEC",
                   help="feature source: pixels[@DIR] or timm:MODEL=CHECKPOINT[@DIR]; "
                        "repeat to vote over several")
    p.add_argument("--view-ext", help="extension of the @DIR files (default: the image's)")
    p.add_argument("--input-size", type=int, default=480,
                   help="images are resized to this square side (default: 480)")
    p.add_argument("--pixel-patch", type=int, default=8, help="patch side of 'pixels' (8)")
    p.add_argument("--pixel-bins", type=int, default=8,
                   help="colour bins per Lab channel of 'pixels' (8)")
    p.add_argument("--feature", choices=("keys", "tokens"), default="keys",
                   help="ViT features: last block's attention keys or output tokens (keys)")
    p.add_argument("--device", default=None,
                   help="device of timm models (default: cuda when available, else cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (8)")
    p.add_argument("--tau", type=float, default=None,
                   help="affinity threshold (default: 0.2 for timm sources, 0.9 for pixels)")
    p.add_argument("--max-objects", type=int, default=3, help="cuts per image and source (3)")
    p.add_argument("--min-patches", type=int, default=1,
                   help="smaller components are dropped (1)")
    p.add_argument("--refine-radius", type=int, default=-1,
                   help="guided-filter radius in pixels; -1: one patch; 0: no refinement")
    p.add_argument("--vote-iou", type=float, default=0.5,
                   help="masks of different sources above this IoU vote together (0.5)")
    p.add_argument("--min-area", type=int, default=4, help="smallest mask in pixels (4)")
    p.add_argument("--max-per-image", type=int, default=100, help="masks kept per image (100)")
    p.add_argument("--overwrite", action="store_true",
                   help="ignore a partial output of an interrupted run and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.gt and not args.image_root:
        parser.error("--gt needs --image-root (the folder of its images)")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        params = DiscoveryParams(tau=args.tau, max_objects=args.max_objects,
                                 min_patches=args.min_patches, refine_radius=args.refine_radius,
                                 vote_iou=args.vote_iou, min_area=args.min_area,
                                 max_per_image=args.max_per_image)
        if args.gt:
            gt = load_json(args.gt, "--gt")
            check_gt(gt, args.gt)
            images, root = gt["images"], args.image_root
        else:
            images, root = images_from_folder(args.images), args.images
        sources = [build_feature_source(
            spec, input_size=args.input_size, pixel_patch=args.pixel_patch,
            pixel_bins=args.pixel_bins, feature=args.feature, device=device,
            view_ext=args.view_ext) for spec in args.source]
        discoverer = ObjectDiscoverer(sources, params)
        counts = discover_dataset(discoverer, images, root, args.out, args.batch_size,
                                  resume=not args.overwrite, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:  # InputError is a ValueError
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"{counts['images']} images ({counts['skipped']} already done): {counts['proposals']} "
          f"proposals; {counts.get('cuts', 0)} cuts, {counts.get('refine_fallbacks', 0)} kept "
          f"unrefined, {counts.get('too_small', 0)} too small")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
