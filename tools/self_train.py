#!/usr/bin/env python
"""Self-training: train v-CLR, then train again on its own teacher's predictions, round by round.

    # 2 rounds on the built-in synthetic set, 3 seeds, table of round 2 against round 1
    python tools/self_train.py --config-file configs/synthetic/vclr.yaml --rounds 2 \\
        --seeds 0 1 2 --output output/self_train
    # your data: round 1 on your training set (ground truth + discovered proposals)
    python tools/self_train.py --config-file configs/voc.yaml --rounds 2 --soft-targets \\
        --output output/voc_self_train MODEL.CONVNEXT.WEIGHTS convnext_tiny.safetensors

Round 1 trains the config as it is. Round r+1: the round-r teacher predicts on the training
images; its predictions (plus the training set's own proposals with
``--merge-base-proposals``) are selected like ``tools/merge_proposals.py`` does (score
threshold, NMS, no overlap with ground truth, top-k per image), written as
``round_<r+1>/proposals.json``, registered as ``<train set>_selftrain_r<r+1>``
(``DATASETS.OPENWORLD.PROPOSAL_VARIANTS``) and trained on, from round r's weights (or from
scratch with ``--from-scratch``), with score-weighted proposal targets with ``--soft-targets``.

Everything goes to ``--output`` (default: the config's ``OUTPUT_DIR``): per seed
``seed<s>/round_<r>/`` (config.yaml that ``tools/train_net.py`` reruns, proposals.json,
selection.json, checkpoints, metrics.json) and ``seed<s>/self_training.json``; then
``self_training.md`` / ``.json``: each round's box and mask AR@10/AR@100 on ``DATASETS.TEST``
(known and novel objects apart where the ground truth has known classes), mean ± standard
deviation over the seeds, and every round minus round 1. An interrupted run resumes: finished
rounds are evaluated, not retrained. Extra ``KEY VALUE`` pairs at the end override the
config (e.g. ``SOLVER.MAX_ITER 100``; after an option other than ``--seeds``, which takes
several values).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from vclr_d2.engine import (
    SelfTrainingParams,
    get_vclr_cfg,
    load_cfg,
    run_self_training,
)
from vclr_d2.engine.report import write_summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="self_train.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the round-1 training config")
    p.add_argument("--rounds", type=int, default=2, help="number of rounds (2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="SEED of each run (0)")
    p.add_argument("--output", default=None,
                   help="output folder (default: the config's OUTPUT_DIR)")
    p.add_argument("--score-thresh", type=float, default=0.0,
                   help="drop teacher predictions below this score (0)")
    p.add_argument("--nms-iou", type=float, default=0.5, help="class-agnostic NMS IoU (0.5)")
    p.add_argument("--gt-dedup-iou", type=float, default=0.5,
                   help="drop predictions whose box IoU with ground truth exceeds this (0.5)")
    p.add_argument("--topk", type=int, default=10, help="proposals per image (10)")
    p.add_argument("--max-predictions", type=int, default=100,
                   help="teacher predictions per image before the selection (100)")
    p.add_argument("--merge-base-proposals", action="store_true",
                   help="also select from the training set's own (round-1) proposals")
    p.add_argument("--from-scratch", action="store_true",
                   help="each round starts from the config's weights, not the last round's")
    p.add_argument("--soft-targets", action="store_true",
                   help="rounds >= 2 weight proposal objectness losses by proposal score")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.output is None:
        args.output = get_vclr_cfg(args.config_file, args.opts).OUTPUT_DIR
    from detectron2.utils.logger import setup_logger

    os.makedirs(args.output, exist_ok=True)
    for name in ("detectron2", "vclr_d2"):
        setup_logger(os.path.join(args.output, "log.txt"), name=name)
    try:
        params = SelfTrainingParams(
            rounds=args.rounds, score_thresh=args.score_thresh, nms_iou=args.nms_iou,
            gt_dedup_iou=args.gt_dedup_iou, topk=args.topk,
            max_predictions=args.max_predictions,
            merge_base_proposals=args.merge_base_proposals, from_scratch=args.from_scratch,
            soft_targets=args.soft_targets)
    except ValueError as e:
        print(f"self_train.py: error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    per_seed = {}
    for seed in args.seeds:
        cfg = load_cfg(args.config_file, args.opts, SEED=seed)
        out = os.path.join(args.output, f"seed{seed}")
        print(f"[self_train] seed {seed}: {args.rounds} rounds -> {out}", flush=True)
        per_seed[seed] = run_self_training(cfg, params, out)
    columns = {f"round {r}": [per_seed[s][r - 1]["metrics"] for s in args.seeds]
               for r in range(1, args.rounds + 1)}
    md = write_summary(
        args.output, "self_training", f"Self-training, {args.config_file}", columns, "round 1",
        args.seeds, {"config": args.config_file, "opts": args.opts, "seeds": args.seeds,
                     "rounds": per_seed})
    print("\n" + md)
    print(f"\n{args.output}/self_training.md; {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
