#!/usr/bin/env python
"""Generate (or find) the built-in synthetic open-world dataset and print what it holds.

    python tools/generate_synthetic.py                      # default: 1000 train + 200 val, 128 px
    python tools/generate_synthetic.py --num-train 200 --image-size 96 --seed 1 --workers 2
    python tools/generate_synthetic.py --known-families ring cross hexagon crescent \
        --novel-families ellipse rectangle triangle star        # a held-out family split

Prints the cache folder, the generation time (0 when the set was already there), its size on
disk, and counts: images, known ground truth (train), novel ground truth (val), proposals and
proposals on novel objects. See docs/synthetic.md for the generator's parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _disk_usage(folder: str) -> tuple[int, int, int]:
    """(bytes of file contents, bytes allocated on disk, number of files) under ``folder``."""
    apparent = allocated = count = 0
    for dirpath, _, names in os.walk(folder):
        for n in names:
            st = os.stat(os.path.join(dirpath, n))
            apparent += st.st_size
            allocated += getattr(st, "st_blocks", 0) * 512 or st.st_size
            count += 1
    return apparent, allocated, count


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Generate (or find) the synthetic open-world dataset (COCO format).")
    parser.add_argument("--num-train", type=int, default=1000, help="training images")
    parser.add_argument("--num-val", type=int, default=200, help="validation images")
    parser.add_argument("--image-size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--known-families", nargs="+", default=None, metavar="FAMILY",
                        help="families annotated in training (default: the frozen split)")
    parser.add_argument("--novel-families", nargs="+", default=None, metavar="FAMILY",
                        help="families never annotated in training (default: the frozen split)")
    parser.add_argument("--root", default=None,
                        help="cache root (default: $DETECTRON2_DATASETS/synth_openworld)")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes (0 = this process; output is identical)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from vclr_d2.data.datasets import synthetic as syn

    kwargs = dict(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
                  seed=args.seed, root=args.root)
    try:
        kwargs["params"] = syn.family_split_params(args.known_families or (),
                                                   args.novel_families or ())
        files = syn.synthetic_openworld_files(**kwargs)
    except ValueError as e:
        parser.error(str(e))
    existed = files.is_complete()
    t0 = time.perf_counter()
    files = syn.ensure_synthetic_openworld(**kwargs, workers=args.workers,
                                           progress=not args.no_progress)
    seconds = time.perf_counter() - t0

    with open(files.params_json) as f:
        stats = json.load(f)["stats"]
    apparent, allocated, nfiles = _disk_usage(files.dir)
    print(f"folder:            {files.dir}")
    print("generation time:   " + ("0 s (found in the cache)" if existed else f"{seconds:.1f} s"
                                   f" ({args.workers} workers)"))
    print(f"size on disk:      {_mib(allocated)} allocated, {_mib(apparent)} of data, "
          f"{nfiles} files")
    print(f"known classes:     {', '.join(files.known_classes)}")
    print(f"novel classes:     {', '.join(files.novel_classes)}")
    print(f"images:            {stats['train_images']} train, {stats['val_images']} val "
          "(natural + depth, style, edges views each)")
    print(f"known GT (train):  {stats['train_known_annotations']} "
          f"(+ {stats['train_novel_objects']} unannotated novel objects)")
    print(f"novel GT (val):    {stats['val_novel_annotations']} "
          f"(of {stats['val_all_annotations']} val objects)")
    print(f"proposals (train): {stats['proposals']}: {stats['proposals_on_known']} on known "
          f"objects, {stats['proposals_on_novel']} on novel objects, "
          f"{stats['proposals_false_positive']} false positives")
    return 0


if __name__ == "__main__":
    sys.exit(main())
