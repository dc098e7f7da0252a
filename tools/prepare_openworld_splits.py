#!/usr/bin/env python
"""Split a COCO instances JSON into open-world known-class training and novel-class test sets.

    python tools/prepare_openworld_splits.py \\
        --ann datasets/coco/annotations/instances_train2017.json \\
        --out-known datasets/openworld_voc_train2017_gt.json
    python tools/prepare_openworld_splits.py \\
        --ann datasets/coco/annotations/instances_val2017.json \\
        --out-novel datasets/openworld_instances_nonvoc_val2017_insseg.json

Both outputs keep every image of the input (an image without any annotation of its part is a
valid image of the set) and the input's annotation ids.

* known (``--out-known``): only the annotations of the known classes, with their original
  categories; crowd annotations stay crowd (``iscrowd`` 1).
* novel (``--out-novel``): the annotations of all other classes. By default they become one
  class-agnostic category ``{"id": 1, "name": "object"}`` (what open-world recall is computed
  on); ``--keep-labels`` keeps their original categories, for per-class or seen/unseen
  breakdowns. Crowd annotations stay crowd, so COCOeval neither counts nor penalises them.

Known classes: ``--known voc`` (default, the 20 PASCAL VOC classes), ``--known coco`` (the 80
COCO classes, for COCO -> LVIS style training sets) or ``--known-classes a,b,c`` (names of
categories of the input JSON). Names are matched case-insensitively against the input's
``categories``; a name that is not there is an error.
"""

from __future__ import annotations

import argparse
import sys

from vclr_d2.data.splits import (  # noqa: F401  (the tests reach the library through the tool)
    AGNOSTIC_CATEGORY,
    COCO_CLASSES,
    KNOWN_SETS,
    VOC_CLASSES,
    check_coco,
    resolve_known_ids,
    split_coco,
)
from vclr_d2.utils import HelpFormatter, load_json, run_tool, write_json
from vclr_d2.utils import InputError as ToolError  # noqa: F401  (the name the tool raised)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare_openworld_splits.py",
        description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ann", required=True, help="input COCO instances JSON")
    p.add_argument("--out-known", help="output: known-class ground truth (training)")
    p.add_argument("--out-novel", help="output: novel-class ground truth (evaluation)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--known", choices=sorted(KNOWN_SETS),
                       help="named set of known classes (COCO names); default: voc")
    group.add_argument("--known-classes",
                       help="comma-separated category names of the input that are known "
                            "(instead of --known)")
    p.add_argument("--keep-labels", action="store_true",
                   help="novel output keeps the original categories instead of one 'object'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out_known and not args.out_novel:
        parser.error("give at least one of --out-known and --out-novel")

    def body() -> int:
        data = load_json(args.ann, "annotation")
        check_coco(data, args.ann)
        names = args.known_classes.split(",") if args.known_classes is not None else None
        known_ids = resolve_known_ids(data["categories"], args.known or "voc", names,
                                      source=args.ann)
        known_json, novel_json, counts = split_coco(data, known_ids, args.keep_labels,
                                                    progress=not args.no_progress)
        for path, out in ((args.out_known, known_json), (args.out_novel, novel_json)):
            if path:
                write_json(out, path)
        print(f"{counts['images']} images; known classes: {len(known_ids)} categories, "
              f"{counts['known']} annotations ({counts['known_crowd']} crowd); novel: "
              f"{counts['novel']} annotations ({counts['novel_crowd']} crowd)")
        for what, path in (("known", args.out_known), ("novel", args.out_novel)):
            if path:
                print(f"wrote {what}: {path}")
        return 0

    return run_tool(parser.prog, body)


if __name__ == "__main__":
    sys.exit(main())
