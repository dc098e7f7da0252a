#!/usr/bin/env python
"""Train the same v-CLR config on different proposal sets and compare them (several seeds).

    # the synthetic set's simulated proposals against the discoverer's (docs/discovery.md)
    python tools/compare_proposals.py --config-file configs/synthetic/vclr.yaml \\
        --seeds 0 1 2 --output output/compare_proposals \\
        --proposals simulated= --proposals discovered=output/discovery/train_depth.json

Each ``--proposals NAME=FILE`` (repeated) is one arm: the config's training set (one dataset)
with its proposals replaced by those of FILE (``DATASETS.OPENWORLD.PROPOSAL_VARIANTS``); an
empty FILE keeps the training set's own proposals. Every arm trains with every seed
(``<output>/<name>_seed<s>/``, ``--output`` defaulting to the config's ``OUTPUT_DIR``:
config.yaml, checkpoints, metrics.json) and is evaluated with its teacher on ``DATASETS.TEST``,
known and novel objects apart where the ground truth has known classes. ``compare_proposals.md``
/ ``.json``: box and mask AR@10/AR@100, mean ± standard deviation over the seeds, and each arm
minus the first. Finished runs are evaluated, not retrained. Extra ``KEY VALUE`` pairs at the
end override the config (after an option other than ``--seeds``, which takes several values).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from vclr_d2.engine import get_vclr_cfg, load_cfg, train_and_evaluate
from vclr_d2.engine.report import write_summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="compare_proposals.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="training config (one training set)")
    p.add_argument("--proposals", action="append", required=True, metavar="NAME=FILE",
                   help="an arm (repeat the option); an empty FILE keeps the training set's "
                        "own proposals")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="SEED of each run (0)")
    p.add_argument("--output", default=None,
                   help="output folder (default: the config's OUTPUT_DIR)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    arms = []
    for entry in args.proposals:
        name, sep, path = entry.partition("=")
        if not sep or not name:
            p.error(f"--proposals entry {entry!r} must be NAME=FILE (FILE may be empty)")
        if path and not os.path.isfile(path):
            p.error(f"--proposals {name}: file not found: {path}")
        arms.append((name, os.path.abspath(path) if path else ""))
    if args.output is None:
        args.output = get_vclr_cfg(args.config_file, args.opts).OUTPUT_DIR

    from detectron2.utils.logger import setup_logger

    os.makedirs(args.output, exist_ok=True)
    for logger_name in ("detectron2", "vclr_d2"):
        setup_logger(os.path.join(args.output, "log.txt"), name=logger_name)
    start = time.perf_counter()
    columns: dict[str, list[dict]] = {name: [] for name, _ in arms}
    for seed in args.seeds:
        for name, path in arms:
            given = get_vclr_cfg(args.config_file, args.opts)
            if len(given.DATASETS.TRAIN) != 1:
                p.error(f"the config trains on {len(given.DATASETS.TRAIN)} datasets; "
                        "compare_proposals needs exactly one")
            opts = list(args.opts)
            if path:  # the training set with this arm's proposals, as a proposal variant
                base = given.DATASETS.TRAIN[0]
                variant = f"{base}_{name}"
                variants = [*given.DATASETS.OPENWORLD.PROPOSAL_VARIANTS,
                            f"{variant}={base}:{path}"]
                opts += ["DATASETS.OPENWORLD.PROPOSAL_VARIANTS", repr(variants),
                         "DATASETS.TRAIN", repr((variant,))]
            cfg = load_cfg(args.config_file, opts, SEED=seed,
                           OUTPUT_DIR=os.path.join(args.output, f"{name}_seed{seed}"))
            print(f"[compare_proposals] {name}, seed {seed} -> {cfg.OUTPUT_DIR}", flush=True)
            columns[name].append(train_and_evaluate(cfg))
    md = write_summary(
        args.output, "compare_proposals", f"{args.config_file} trained on different proposals",
        columns, arms[0][0], args.seeds,
        {"config": args.config_file, "opts": args.opts, "seeds": args.seeds, "arms": dict(arms),
         "results": columns})
    print("\n" + md)
    print(f"\n{args.output}/compare_proposals.md; {(time.perf_counter() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
