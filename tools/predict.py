#!/usr/bin/env python
"""Run a trained model on your own images or videos: PNG overlays and one COCO results JSON.

    python tools/predict.py --config-file configs/voc_r50.yaml \\
        --weights output/voc_r50/model_final.pth --input photos/ more/*.jpg clip.mp4 \\
        --output output/predictions

--input takes image files, folders (their images), glob patterns and videos (read with
OpenCV; --frame-step N keeps every N-th frame). For each image or frame, <output>/<name>.png
shows the --top-k best predictions with score >= --score-thresh (masks, boxes and scores,
drawn by detectron2's Visualizer); <output>/predictions.json holds every prediction the model
returns (up to TEST.DETECTIONS_PER_IMAGE per image) as COCO results (image_id, category_id 1,
XYWH bbox, score, RLE segmentation), and <output>/images.json the images they belong to
(id, file_name, frame, height, width, overlay). --coco-json GT takes the image ids from a
COCO file's "images" (matched by file name), so that predictions.json can be scored against
it, e.g. with vclr_d2.evaluation.evaluate_recall. The EMA teacher's weights are used unless
--student is given. Config overrides go after --opts, as KEY VALUE pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _image_ids(path: str) -> dict[str, int]:
    """file name (and its base name) -> id, from a COCO file's ``images``."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"--coco-json {path}: no 'images' list")
    ids: dict[str, int] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "file_name" not in im or "id" not in im:
            raise ValueError(f"--coco-json {path}: images[{i}] has no 'file_name' and 'id'")
        ids[im["file_name"]] = int(im["id"])
        ids.setdefault(os.path.basename(im["file_name"]), int(im["id"]))
    return ids


def _image_id(ids: dict[str, int], path: str, coco_json: str) -> int:
    for key in (path, os.path.basename(path)):
        if key in ids:
            return ids[key]
    raise ValueError(f"{path} is not among the images of --coco-json {coco_json}")


def _unique_name(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default=None, help="checkpoint (default: MODEL.WEIGHTS)")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files, folders, glob patterns or videos")
    parser.add_argument("--output", required=True, help="folder for the PNGs and the JSONs")
    parser.add_argument("--top-k", type=int, default=10, help="predictions drawn per image")
    parser.add_argument("--score-thresh", type=float, default=0.0,
                        help="lowest score drawn")
    parser.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    parser.add_argument("--frame-step", type=int, default=1, help="every N-th video frame")
    parser.add_argument("--min-draw-size", type=int, default=480,
                        help="smaller images are drawn enlarged to this shorter side")
    parser.add_argument("--no-draw", action="store_true", help="write the JSONs only")
    parser.add_argument("--student", action="store_true",
                        help="the student's weights instead of the EMA teacher's")
    parser.add_argument("--coco-json", default=None,
                        help="COCO file whose image ids the results take")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="KEY VALUE config overrides, last")
    args = parser.parse_args(argv)
    for flag in ("batch_size", "frame_step"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")

    import cv2
    from detectron2.utils.logger import setup_logger
    from tqdm import tqdm

    from vclr_d2.engine import load_cfg
    from vclr_d2.engine.predictor import (
        BatchPredictor,
        draw,
        iter_frames,
        list_sources,
        select,
        to_coco_results,
    )

    setup_logger(name="vclr_d2")
    try:
        sources = list_sources(args.input)
        if args.coco_json and any(s.is_video for s in sources):
            raise ValueError("--coco-json gives ids to image files; the inputs hold videos")
        ids = _image_ids(args.coco_json) if args.coco_json else None
        overrides = (["MODEL.WEIGHTS", args.weights] if args.weights else []) + (
            ["MODEL.VCLR.TEST_WITH_TEACHER", "False"] if args.student else [])
        cfg = load_cfg(args.config_file, list(args.opts) + overrides)
        predictor = BatchPredictor(cfg)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.makedirs(args.output, exist_ok=True)

    def frames():
        for src in sources:
            for index, image in iter_frames(src, args.frame_step):
                yield src, index, image

    images, results, used, batch = [], [], set(), []
    total = sum(s.num_frames(args.frame_step) for s in sources)

    def flush() -> int:
        """Predict, draw and record the batch; returns its size."""
        for (src, index, image), inst in zip(batch, predictor([b[2] for b in batch])):
            base = os.path.splitext(os.path.basename(src.path))[0]
            name = _unique_name(base if index is None else f"{base}_{index:06d}", used)
            image_id = len(images) + 1 if ids is None else _image_id(ids, src.path, args.coco_json)
            entry = {"id": image_id, "file_name": src.path, "frame": index,
                     "height": image.shape[0], "width": image.shape[1], "overlay": None}
            if not args.no_draw:
                entry["overlay"] = os.path.join(args.output, name + ".png")
                drawing = draw(image, select(inst, args.top_k, args.score_thresh),
                               min_size=args.min_draw_size)
                cv2.imwrite(entry["overlay"], drawing)
            images.append(entry)
            results.extend(to_coco_results(inst, image_id))
        n = len(batch)
        batch.clear()
        return n

    try:
        with tqdm(total=total, unit="img", desc="predict") as bar:
            for item in frames():
                batch.append(item)
                if len(batch) == args.batch_size:
                    bar.update(flush())
            if batch:
                bar.update(flush())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with open(os.path.join(args.output, "predictions.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(args.output, "images.json"), "w") as f:
        json.dump({"images": images, "categories": [{"id": 1, "name": "object"}],
                   "weights": cfg.MODEL.WEIGHTS,
                   "branch": "teacher" if cfg.MODEL.VCLR.TEST_WITH_TEACHER else "student"},
                  f, indent=1)
    print(f"{len(images)} images, {len(results)} predictions -> {args.output}/predictions.json"
          + ("" if args.no_draw else f", overlays in {args.output}/"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
