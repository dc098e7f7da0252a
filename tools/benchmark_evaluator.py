#!/usr/bin/env python
"""Time vclr_d2's open-world evaluator against pycocotools' COCOeval, and check they agree.

Synthesises a class-agnostic evaluation set (default 5,000 images, 300 detections per image,
Poisson(7) ground-truth objects per image of which 5% crowd), then evaluates it twice:

- ours: ``OpenWorldRecall(gt_dict, detections).evaluate()``, timed from the COCO-format ground
  truth dict and the detection arrays (ground-truth parsing, IoU, matching, accumulation);
- pycocotools: ``COCOeval`` with ``useCats = 0`` and the same maxDets, timed over
  ``evaluate()`` + ``accumulate()`` (``COCO`` indexing and ``loadRes`` are timed apart).

It does so for boxes (images of --size, default 640x480) and for masks (--mask-size, default
160x120, a quarter of 640x480 in each side), compares the recall and precision arrays, and
prints the times and the ratio. Exit status 1 when the arrays differ by more than 1e-9.

    python tools/benchmark_evaluator.py                       # the full benchmark
    python tools/benchmark_evaluator.py --images 200 --dets 100 --mask-images 100
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vclr_d2.evaluation.recall import (  # noqa: E402
    DEFAULT_MAX_DETS,
    Detections,
    OpenWorldRecall,
    summarize,
)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def synthesise(rng, num_images, num_dets, width, height, gt_mean, crowd_frac, masks):
    """A COCO ground-truth dict and class-agnostic detections (boxes, or masks as RLEs).

    Objects are axis-aligned rectangles; as masks a third of their top-left corner is cut
    off, so a mask is not its box. Half of the detections are jittered copies of a ground-truth
    object of their image, half random; scores have 3 decimals (ties happen).
    """
    num_gt = rng.poisson(gt_mean, num_images)
    gt_image = np.repeat(np.arange(1, num_images + 1), num_gt)
    size = np.array([width, height], dtype=np.float64)
    wh = np.exp(rng.uniform(np.log(2), np.log(0.8 * size), (len(gt_image), 2)))
    xy = rng.uniform(0, 1, (len(gt_image), 2)) * (size - wh)
    gt_boxes = np.c_[xy, wh]
    crowd = rng.random(len(gt_image)) < crowd_frac

    det_image = np.repeat(np.arange(1, num_images + 1), num_dets)
    first = np.r_[0, np.cumsum(num_gt)][det_image - 1]
    own = num_gt[det_image - 1]
    near = (rng.random(len(det_image)) < 0.5) & (own > 0)
    pick = first + (rng.random(len(det_image)) * own).astype(int)
    src = gt_boxes[np.where(near, pick, 0)] if len(gt_boxes) else np.ones((len(det_image), 4))
    jitter = src + rng.normal(0, 0.1, (len(det_image), 4)) * np.c_[src[:, 2:], src[:, 2:]]
    rand_wh = np.exp(rng.uniform(np.log(2), np.log(0.5 * size), (len(det_image), 2)))
    rand = np.c_[rng.uniform(0, 1, (len(det_image), 2)) * (size - rand_wh), rand_wh]
    det_boxes = np.where(near[:, None], jitter, rand)
    det_boxes[:, 2:] = det_boxes[:, 2:].clip(1, None)
    scores = np.round(rng.random(len(det_image)), 3)

    images = [{"id": i, "width": width, "height": height} for i in range(1, num_images + 1)]
    anns = []
    if not masks:
        for k, (img, box, c) in enumerate(zip(gt_image.tolist(), gt_boxes.round(2).tolist(),
                                              crowd.tolist())):
            anns.append({"id": k + 1, "image_id": img, "category_id": 1, "bbox": box,
                         "area": box[2] * box[3] * 0.8, "iscrowd": int(c)})
        dets = Detections(det_image, scores, det_boxes.round(2))
    else:
        gt_rles = _encode_rectangles(gt_image, gt_boxes, num_images, width, height)
        for k, (img, box, c, rle) in enumerate(zip(gt_image.tolist(), gt_boxes.tolist(),
                                                   crowd.tolist(), gt_rles)):
            anns.append({"id": k + 1, "image_id": img, "category_id": 1, "bbox": box,
                         "area": float(mask_util.area(rle)), "iscrowd": int(c),
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
        det_rles = _encode_rectangles(det_image, det_boxes, num_images, width, height)
        dets = Detections(det_image, scores, rles=det_rles)
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    return gt, dets


def _encode_rectangles(image, boxes, num_images, width, height):
    """RLEs of rectangles with their top-left third cut off, image by image."""
    x0, y0 = np.floor(boxes[:, 0]).astype(int), np.floor(boxes[:, 1]).astype(int)
    x1 = np.ceil(boxes[:, 0] + boxes[:, 2]).astype(int)
    y1 = np.ceil(boxes[:, 1] + boxes[:, 3]).astype(int)
    cx, cy = x0 + (x1 - x0) // 3, y0 + (y1 - y0) // 3
    xs, ys = np.arange(width), np.arange(height)
    bounds = np.searchsorted(image, np.arange(1, num_images + 2))
    rles = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        s = slice(lo, hi)
        in_x = (xs >= x0[s, None]) & (xs < x1[s, None])  # (n, W)
        in_y = (ys >= y0[s, None]) & (ys < y1[s, None])  # (n, H)
        cut_x, cut_y = xs < cx[s, None], ys < cy[s, None]
        m = (in_x[:, :, None] & in_y[:, None, :]) & ~(cut_x[:, :, None] & cut_y[:, None, :])
        rles.extend(mask_util.encode(m.astype(np.uint8).T))  # (H, W, n), Fortran order
    return rles


def run_ours(gt, dets, iou_type, max_dets):
    start = time.perf_counter()
    arrays = OpenWorldRecall(gt, dets, iou_type, max_dets=max_dets).evaluate()
    return arrays, time.perf_counter() - start


def run_pycocotools(gt, dets, iou_type, max_dets):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for k in range(len(dets)):
        r = {"image_id": int(dets.image_ids[k]), "category_id": 1, "score": float(dets.scores[k])}
        if iou_type == "bbox":
            r["bbox"] = dets.boxes[k].tolist()
        else:
            r["segmentation"] = dets.rles[k]
        results.append(r)
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        load = time.perf_counter() - start
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.useCats = 0
        ev.params.maxDets = list(max_dets)
        start = time.perf_counter()
        ev.evaluate()
        ev.accumulate()
        elapsed = time.perf_counter() - start
    return ev, elapsed, load


def benchmark(kind, args, rng):
    masks = kind == "masks"
    num_images = args.mask_images if masks else args.images
    num_dets = args.mask_dets if masks else args.dets
    width, height = args.mask_size if masks else args.size
    iou_type = "segm" if masks else "bbox"
    t0 = time.perf_counter()
    gt, dets = synthesise(rng, num_images, num_dets, width, height, args.gt_mean, args.crowd,
                          masks)
    print(f"\n[{kind}] {num_images} images of {width}x{height}, {num_dets} detections each, "
          f"{len(gt['annotations'])} ground-truth objects "
          f"({sum(a['iscrowd'] for a in gt['annotations'])} crowd); "
          f"synthesised in {time.perf_counter() - t0:.1f} s", flush=True)
    ours, t_ours = run_ours(gt, dets, iou_type, args.max_dets)
    print(f"  ours:        {t_ours:8.2f} s", flush=True)
    row = {"kind": kind, "images": num_images, "dets": num_dets, "size": f"{width}x{height}",
           "ours": t_ours, "summary": summarize(ours)}
    if args.skip_pycocotools:
        return row
    ev, t_coco, t_load = run_pycocotools(gt, dets, iou_type, args.max_dets)
    diff = max(np.abs(ours.recall - ev.eval["recall"][:, 0]).max(),
               np.abs(ours.precision - ev.eval["precision"][:, :, 0]).max())
    print(f"  pycocotools: {t_coco:8.2f} s evaluate+accumulate "
          f"(+{t_load:.2f} s COCO index and loadRes, not counted)")
    print(f"  ratio:       {t_coco / t_ours:8.1f}x   max |difference| of recall/precision "
          f"arrays: {diff:.3g}", flush=True)
    row.update(pycocotools=t_coco, load=t_load, ratio=t_coco / t_ours, diff=diff)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="images (boxes)")
    parser.add_argument("--dets", type=int, default=300, help="detections per image (boxes)")
    parser.add_argument("--mask-images", type=int, default=None,
                        help="images for masks (default: --images)")
    parser.add_argument("--mask-dets", type=int, default=None,
                        help="detections per image for masks (default: --dets)")
    parser.add_argument("--size", type=_parse_size, default=(640, 480),
                        help="box images, WIDTHxHEIGHT")
    parser.add_argument("--mask-size", type=_parse_size, default=(160, 120),
                        help="mask images, WIDTHxHEIGHT")
    parser.add_argument("--gt-mean", type=float, default=7.0,
                        help="mean ground-truth objects per image (Poisson)")
    parser.add_argument("--crowd", type=float, default=0.05, help="fraction of crowd objects")
    parser.add_argument("--max-dets", type=int, nargs="+", default=list(DEFAULT_MAX_DETS),
                        help="the k of AR@k")
    parser.add_argument("--only", choices=("boxes", "masks"), default=None,
                        help="run one kind only")
    parser.add_argument("--skip-pycocotools", action="store_true", help="time ours only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.mask_images = args.images if args.mask_images is None else args.mask_images
    args.mask_dets = args.dets if args.mask_dets is None else args.mask_dets
    args.max_dets = sorted(args.max_dets)

    rng = np.random.default_rng(args.seed)
    rows = [benchmark(kind, args, rng) for kind in ("boxes", "masks")
            if args.only in (None, kind)]
    print("\n| kind | images | dets/image | size | ours (s) | pycocotools (s) | ratio | "
          "max diff |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        coco = f"{r['pycocotools']:.1f}" if "pycocotools" in r else "-"
        ratio = f"{r['ratio']:.1f}x" if "ratio" in r else "-"
        diff = f"{r['diff']:.3g}" if "diff" in r else "-"
        print(f"| {r['kind']} | {r['images']} | {r['dets']} | {r['size']} | {r['ours']:.1f} | "
              f"{coco} | {ratio} | {diff} |")
    for r in rows:
        print(f"{r['kind']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["summary"].items()))
    return 1 if any(r.get("diff", 0) > 1e-9 for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
