#!/usr/bin/env python
"""How much of a measured difference is the validation sample? Evaluate trained runs on a larger
validation split of their synthetic set, in blocks of their own validation set's size.

    python tools/eval_blocks.py output/s34/heldout/swap/f_seed0 output/s34/heldout/swap/f_seed1 \\
        --baseline output/s34/heldout/swap/b_seed0 output/s34/heldout/swap/b_seed1 \\
        --num-val 1000 --output output/s34/heldout/swap/blocks.json

Each RUN is a training output folder (``config.yaml`` and ``model_final.pth``, as
``tools/ablation.py`` and ``tools/train_net.py`` leave them). Its config is evaluated with
``DATASETS.SYNTHETIC.NUM_VAL`` = ``--num-val`` on ``synth_openworld_val_all``, the EMA teacher's
weights as in ``--eval-only``. The synthetic set's images are seeded per index, so the first
block (``--block`` images, by default the run's own ``NUM_VAL``) is exactly the validation set
the run was measured on, and the blocks after it are further samples of the same kind; training
is unaffected (the training images do not depend on ``NUM_VAL``).

Printed (markdown): per run, box and mask AR of known and novel objects on each block, on
"blocks 1+" (every image after the first block, pooled) and on "all"; with ``--baseline`` (one
baseline run per RUN, e.g. the same seed of another row), the differences RUN − baseline, and
over the pairs: the mean ± sd on block 0 (what a report on the run's own validation set says),
on "blocks 1+" and on "all", the sd of a pair's difference across blocks (how far one block of
images moves a difference, the training runs fixed) and the sd across blocks of the mean over
the pairs (how far it moves a mean over seeds: as far as one pair's when every seed's models
find the same images easy or hard, by 1/sqrt(pairs) of it when the seeds are independent).

With two RUNs or more (and as many baselines), the mean ± sd over them of each metric on block
0, "blocks 1+" and "all": a row of ``tools/ablation.py``'s table on the larger validation split.

Results are kept in ``--output`` (JSON, one entry per run folder with the sizes it was evaluated
at, the seconds it took and the weights file's size and modification time) and read back instead
of evaluating again while the run's weights are the same file (a run trained again is evaluated
again). ``--report FILE`` writes the printed tables as markdown under a header with the
command, the machine and the time (the ``docs/`` pages made by this tool are such reports).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere without installing
    sys.path.insert(0, str(ROOT))

METRICS = ("known box AR@100", "novel box AR@100", "novel box AR@10", "known mask AR@100",
           "novel mask AR@100")


def evaluate_run(run: str, num_val: int, block: int | None, weights: str) -> dict:
    """{"num_val", "block", "eval_seconds", "groups": {group: {metric: value}}} of one run
    folder (:func:`vclr_d2.engine.experiments.evaluate_blocks`)."""
    from vclr_d2.engine.experiments import evaluate_blocks

    try:
        return evaluate_blocks(run, num_val, block, weights)
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"eval_blocks: {e}") from e


def load_results(path: str | None) -> dict:
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"eval_blocks: {path} is not valid JSON ({e}); move it away or pass "
                         "another --output") from e
    if not isinstance(data, dict):
        raise ValueError(f"eval_blocks: {path} holds no object of run results")
    return data


def signed(x: float) -> str:
    """``+1.2`` / ``-0.4``; a difference that rounds to zero is ``+0.0``."""
    text = f"{x:+.1f}"
    return "+0.0" if text == "-0.0" else text


def mean_sd(values: list[float], sign: bool = False) -> str:
    fmt = signed if sign else "{:.1f}".format
    if len(values) < 2:
        return fmt(values[0])
    return f"{fmt(statistics.mean(values))} ± {statistics.stdev(values):.1f}"


def table_head() -> list[str]:
    return ["| images | " + " | ".join(METRICS) + " |", "| --- |" + " ---: |" * len(METRICS)]


def run_table(run: str, groups: dict) -> list[str]:
    lines = [f"{run}:", "", *table_head()]
    for name, m in groups.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.1f}" for k in METRICS) + " |")
    return lines + [""]


def summary_groups(groups: dict) -> list[tuple[str, str]]:
    """(label, group) of the rows a summary over runs or pairs reports."""
    return [("block 0 (the runs' own validation set)", "block 0")] + [
        (g, g) for g in ("blocks 1+", "all") if g in groups]


def same_blocks(runs: list[str], results: dict) -> None:
    """Raise naming two runs evaluated on different blocks (they cannot share a table)."""
    first = list(results[runs[0]]["groups"])
    for r in runs[1:]:
        if list(results[r]["groups"]) != first:
            raise ValueError(f"eval_blocks: {r} and {runs[0]} were evaluated on different "
                             f"blocks ({list(results[r]['groups'])} against {first})")


def runs_table(label: str, runs: list[str], results: dict) -> list[str]:
    """Mean ± sd over ``runs`` of each metric per group, as the ablation's table does over seeds."""
    from vclr_d2.engine.report import markdown_table

    groups = [results[r]["groups"] for r in runs]
    records = {name: [{"metrics": x[g]} for x in groups]
               for name, g in summary_groups(groups[0])}
    return [f"{label}, over the {len(runs)} runs, mean ± sd:", "",
            markdown_table(records, METRICS), ""]


def pair_tables(pairs: list[tuple[str, str]], results: dict) -> list[str]:
    """RUN − baseline per pair and over the pairs (runs checked by ``same_blocks`` first)."""
    diffs = []  # per pair: {group: {metric: difference}}
    for run, base in pairs:
        a, b = results[run]["groups"], results[base]["groups"]
        diffs.append({g: {k: a[g][k] - b[g][k] for k in METRICS} for g in a})
    blocks = [g for g in diffs[0] if g.startswith("block ")]
    lines = []
    for (run, base), d in zip(pairs, diffs):
        lines += [f"{run} − {base}:", "", *table_head()]
        for name, m in d.items():
            lines.append(f"| {name} | " + " | ".join(signed(m[k]) for k in METRICS) + " |")
        lines.append("")
    summary = summary_groups(diffs[0])
    over = f"{len(pairs)} pairs" if len(pairs) > 1 else "one pair"
    lines += [f"Over the {over}, mean ± sd of RUN − baseline:", "", *table_head()]
    for label, g in summary:
        lines.append(f"| {label} | " + " | ".join(
            mean_sd([d[g][k] for d in diffs], sign=True) for k in METRICS) + " |")
    if len(blocks) > 1:
        lines.append(f"| sd across the {len(blocks)} blocks, mean over the pairs | " + " | ".join(
            f"{statistics.mean(statistics.stdev(d[b][k] for b in blocks) for d in diffs):.1f}"
            for k in METRICS) + " |")
    if len(blocks) > 1 and len(pairs) > 1:
        # what a mean over the pairs, reported on one block, would move by with another block
        sds = [statistics.stdev(statistics.mean(d[b][k] for d in diffs) for b in blocks)
               for k in METRICS]
        lines.append(f"| sd across the {len(blocks)} blocks of the mean over the pairs | "
                     + " | ".join(f"{x:.1f}" for x in sds) + " |")
    return lines + [""]


def report_header(command: str, runs: list[dict], evaluated: int, seconds: float) -> str:
    from vclr_d2.engine.experiments import TEST_SET, machine

    block, num_val = runs[0]["block"], runs[0]["num_val"]
    timed = [r["eval_seconds"] for r in runs if "eval_seconds" in r]
    took = (f"the {len(timed)} runs' evaluations took {sum(timed) / 60:.0f} min in all"
            if len(timed) == len(runs) else
            f"{len(runs) - len(timed)} of the runs were evaluated before the tool recorded times")
    text = (
        f"Written on {machine()} in {seconds / 60:.1f} min: {evaluated} of the {len(runs)} runs "
        f"evaluated by this invocation, the others read back from --output; {took}. Each run's "
        f"EMA teacher on `{TEST_SET}` with {num_val} validation images, in blocks of {block}: "
        "block 0 is the run's own validation set (the images are seeded by their index), "
        "\"blocks 1+\" pools the images after it. Class-agnostic AR in percent; *known* objects "
        "are of the families annotated in training, *novel* of the others. The trained runs are "
        "fixed: every number moves only with the images.")
    return "\n".join([
        "# Validation blocks: how much of a difference the validation images make", "",
        "Generated by `tools/eval_blocks.py`; do not edit by hand (analysis: "
        "docs/experiments.md, §4 \"How far the 200 validation images move a difference\").", "",
        f"    {command}", "", text, "", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="training output folders")
    parser.add_argument("--baseline", nargs="+", default=[], metavar="RUN",
                        help="one baseline run folder per RUN: differences RUN − baseline")
    parser.add_argument("--num-val", type=int, default=1000,
                        help="validation images to evaluate on (default 1000)")
    parser.add_argument("--block", type=int, default=None,
                        help="images per block (default: each run's own DATASETS.SYNTHETIC."
                             "NUM_VAL, so block 0 is its validation set)")
    parser.add_argument("--weights", default="model_final.pth",
                        help="checkpoint file name inside each run folder")
    parser.add_argument("--output", default=None, help="JSON file of results, read back")
    parser.add_argument("--report", default=None,
                        help="also write the tables as a markdown report (command, machine, time)")
    args = parser.parse_args(argv)
    if args.baseline and len(args.baseline) != len(args.runs):
        parser.error(f"--baseline needs one run per RUN: {len(args.runs)} runs, "
                     f"{len(args.baseline)} baselines")
    if args.num_val < 1 or (args.block is not None and args.block < 1):
        parser.error(f"--num-val and --block must be positive (got {args.num_val}, "
                     f"{args.block})")
    try:
        results = load_results(args.output)
    except ValueError as e:
        parser.error(str(e))
    from vclr_d2.engine.experiments import weights_stamp

    start, evaluated = time.perf_counter(), []
    try:  # a missing file, a config without the test set, blocks that do not pair: named
        for run in dict.fromkeys(args.runs + args.baseline):
            weights = os.path.join(run, args.weights)
            stamp = weights_stamp(weights) if os.path.isfile(weights) else None
            saved = results.get(run)
            # entries written before the tool kept the weights' stamp are read back as they are
            if saved and saved["num_val"] == args.num_val and saved.get(
                    "weights", stamp) == stamp and (
                    args.block is None or saved["block"] == args.block):
                continue
            results[run] = {**evaluate_run(run, args.num_val, args.block, args.weights),
                            "weights": stamp}
            evaluated.append(run)
            if args.output:
                os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
                with open(args.output, "w") as f:
                    json.dump(results, f, indent=1)
        same_blocks(list(dict.fromkeys(args.runs + args.baseline)), results)
        lines = []
        for run in dict.fromkeys(args.runs + args.baseline):
            lines += run_table(run, results[run]["groups"])
        if len(args.runs) > 1:
            lines += runs_table("RUN", args.runs, results)
            if args.baseline:
                lines += runs_table("baseline", args.baseline, results)
        if args.baseline:
            lines += pair_tables(list(zip(args.runs, args.baseline)), results)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    text = "\n".join(lines)
    print(text)
    if args.report:
        command = "python tools/eval_blocks.py " + shlex.join(
            [*args.runs] + (["--baseline", *args.baseline] if args.baseline else [])
            + ["--num-val", str(args.num_val)]
            + (["--block", str(args.block)] if args.block else [])
            + (["--weights", args.weights] if args.weights != "model_final.pth" else [])
            + (["--output", args.output] if args.output else []) + ["--report", args.report])
        header = report_header(command, [results[r] for r in dict.fromkeys(
            args.runs + args.baseline)], len(evaluated), time.perf_counter() - start)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
            Path(args.report).write_text(header + text + "\n")
        except OSError as e:
            parser.error(f"cannot write --report {args.report}: {e}")
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
