#!/usr/bin/env python
"""The paper's ablation on the built-in synthetic open-world set, over seeds.

    python tools/ablation.py --seeds 0 1 2 --report docs/ablation.md

Rows (configs under configs/synthetic/, see vclr_d2/engine/experiments.py):
  (a) baseline.yaml   known-class ground truth, natural images, no student augmentations
  (b) proposals.yaml  (a) + proposals
  (c) views.yaml      (b) + views and student augmentations
  (d) vclr.yaml       (c) + L_sim = v-CLR
  (e) vclr_plus.yaml  (b) + natural/depth views + L_sim, the depth-view teacher's pseudo-labels
  (f) vclr_plus_views.yaml
                      (d) without student augmentations + the depth-view teacher's
                      pseudo-labels with score weight 0 (the best row with 5600 iterations)
  (m) mask_rcnn.yaml  detectron2's Mask R-CNN on the data of (a) (yardstick)

Each run trains into <output>/<row>_seed<seed>/ and writes run.json there; a run whose run.json
exists is read back, so an interrupted ablation continues where it stopped. Runs go --jobs at a
time, each in its own process with cpu_count // jobs torch threads (a run repeats exactly with
the same seed and thread count). The report (markdown, and JSON beside it) holds the mean ± sd
table of known and novel box / mask AR@10 / AR@100, the paired per-seed differences between
rows, the command, the machine and the wall-clock time.

With --num-val N (a multiple of the runs' own NUM_VAL) the runs are evaluated again after
training on the first N validation images of their set (their own NUM_VAL first: the set seeds
each image by its index, training does not change), kept in each run folder as val<N>.json, and
the report gives the table on all N and the paired differences on all N, on the runs' own
validation images and on the images after them (docs/ablation_val1000.md):

    python tools/ablation.py --rows a b d f --seeds 0 1 2 --jobs 2 --threads 1 --report-only \
        --num-val 1000 --report docs/ablation_val1000.md TEST.EVAL_PERIOD 700
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

METRICS = [f"{o} {t} AR@{k}" for o in ("known", "novel") for t in ("box", "mask")
           for k in (10, 100)]
# (minuend, subtrahend) pairs the targets are stated on
DIFFS = [("d", "a"), ("d", "b"), ("e", "b"), ("f", "b"), ("d", "c"), ("b", "a"), ("a", "m")]


def _runs(n: int) -> str:
    return f"{n} run{'s' if n > 1 else ''}"


def where_trained(trained: Counter, here: str) -> str:
    """The report's sentence on where the runs trained, empty when all of them trained here.

    Run records made before ``machine()`` named the CPU family, model and torch's kernels hold
    the same name without its parenthesised part ("AMD EPYC, 2 cores, torch 2.14.1"); such a
    name is counted with the detailed one it is the short form of (this machine's first) and
    quoted, since it cannot tell two CPU generations of one model name apart.
    """
    def short(name: str) -> str:
        return re.sub(r" \([^)]*\)", "", name)

    detailed = [m for m in dict.fromkeys([here, *trained]) if "(" in m]
    groups: dict[str, list] = {}  # name -> [runs, {short name recorded: runs}]
    for name, n in trained.items():
        target = next((d for d in detailed if "(" not in name and short(d) == name), name)
        group = groups.setdefault(target, [0, {}])
        group[0] += n
        if target != name:
            group[1][name] = n
    since = "used before run records gave the CPU family and torch's kernels"
    if set(groups) == {here}:
        return "".join(f"{_runs(k)} {'was' if k == 1 else 'were'} recorded as \"{old}\", the "
                       "short form of this "
                       f"machine's name {since}. " for old, k in groups[here][1].items())
    return "The runs trained on " + "; ".join(
        f"{name} ({_runs(n)}"
        + "".join(f", {k} of them recorded as \"{old}\", the short form of that name {since}"
                  for old, k in olds.items()) + ")"
        for name, (n, olds) in groups.items()) + ". "


def build_report(records: dict, command: str, wall: float | None, machine: str,
                 missing: list[str] = (), larger_val: dict | None = None) -> str:
    """The markdown report. ``larger_val`` (``--num-val``): ``{"num_val", "own", "equal"}``,
    the records' ``metrics`` being on ``num_val`` validation images, their ``own_metrics`` on
    the first ``own`` (the runs' validation set) and ``after_metrics`` on the rest; ``equal``:
    how many runs' first ``own`` images gave their ``run.json`` metrics again."""
    from vclr_d2.engine.experiments import ROWS
    from vclr_d2.engine.report import markdown_table, paired_differences, summarize

    seeds = sorted({r["seed"] for runs in records.values() for r in runs})
    # float results differ between CPU kinds: name where the runs trained when it is not here
    trained = Counter(r.get("machine") or machine for runs in records.values() for r in runs)
    elsewhere = where_trained(trained, machine)
    serial = sum(r["train_seconds"] + r["eval_seconds"] for runs in records.values()
                 for r in runs)
    if larger_val:
        n, own = larger_val["num_val"], larger_val["own"]
        runs = sum(len(v) for v in records.values())
        images = (f"with its first {n} validation images (`--num-val {n}`, evaluated after "
                  f"training): the first {own} are the runs' own validation set, on which "
                  f"their run.json was measured ({larger_val['equal']} of the {runs} runs give "
                  f"exactly those numbers again there), the {n - own} after them further "
                  "images of the same kind (the set seeds each image by its index)")
    else:
        images = ""
    lines = [
        "# Ablation on the built-in synthetic open-world set"
        + (f", {larger_val['num_val']} validation images" if larger_val else ""),
        "",
        "Generated by `tools/ablation.py`; do not edit by hand (analysis: docs/experiments.md).",
        "",
        f"    {command}",
        "",
        f"Seeds {', '.join(map(str, seeds))}; "
        + (f"wall-clock {wall / 60:.1f} min on {machine} (runs read back from an earlier "
           f"invocation count 0; " if wall is not None else
           f"`--report-only` report of the finished runs, written on {machine} (")
        + f"the runs' own times add up to {serial / 60:.0f} min). " + elsewhere
        + (f"**Not run yet: {', '.join(missing)}** (their rows average fewer seeds). "
           if missing else "") +
        "Class-agnostic AR in percent of the EMA teacher (the student for (m)) on "
        f"`synth_openworld_val_all`{' ' + images + '.' if images else ':'} "
        f"{'*Known*' if images else '*known*'} objects are of the 4 families annotated in "
        "training, "
        "*novel* of the 4 never annotated. Mean ± sample standard deviation over the seeds.",
        "",
        markdown_table(records, METRICS, {k: ROWS[k].title for k in records}),
        "",
        "## Paired differences (per seed"
        + (f" on all {larger_val['num_val']} images" if larger_val else "")
        + ", then mean ± sd)",
        "",
    ]
    if larger_val:
        lines += [f"| difference | metric | per seed | mean ± sd | on the runs' own {own} "
                  f"| on the {n - own} after them |", "| --- | --- | --- | ---: | ---: | ---: |"]
    else:
        lines += ["| difference | metric | per seed | mean ± sd |", "| --- | --- | --- | ---: |"]
    for x, y in DIFFS:
        if x not in records or y not in records:
            continue
        for m in ("novel box AR@100", "known box AR@100", "novel mask AR@100"):
            d = paired_differences(records[x], records[y], m)
            if d:
                mean, sd = summarize(d)
                spread = f" ± {sd:.1f}" if len(d) > 1 else " (one seed)"
                row = (f"| ({x}) − ({y}) | {m} | {', '.join(f'{v:+.1f}' for v in d)} "
                       f"| {mean:+.1f}{spread} |")
                for part in ("own_metrics", "after_metrics") if larger_val else ():
                    d = paired_differences([{**r, "metrics": r[part]} for r in records[x]],
                                           [{**r, "metrics": r[part]} for r in records[y]], m)
                    mean, sd = summarize(d)
                    row += f" {mean:+.1f}{f' ± {sd:.1f}' if len(d) > 1 else ''} |"
                lines.append(row)
    lines += ["", "## Time per run (s, mean over seeds)", "",
              "| row | train + final evaluation | "
              + (f"evaluation on {larger_val['num_val']} images" if larger_val else
                 "separate evaluation") + " | threads |",
              "| --- | ---: | ---: | ---: |"]
    for key, runs in records.items():
        t = summarize([r["train_seconds"] for r in runs])[0]
        e = summarize([r["eval_seconds"] for r in runs])[0]
        lines.append(f"| ({key}) | {t:.0f} | {e:.0f} | {runs[0].get('threads', '')} |")
    return "\n".join(lines) + "\n"


def check_num_val(num_val: int, own: set[int]) -> None:
    """``--num-val`` against the runs' own ``DATASETS.SYNTHETIC.NUM_VAL`` values: one value,
    and ``num_val`` a larger multiple of it (whole blocks after the runs' own images)."""
    if len(own) != 1:
        raise ValueError(f"the runs have different validation set sizes ({sorted(own)}): "
                         "report them separately")
    if num_val <= min(own) or num_val % min(own):
        raise ValueError(f"--num-val {num_val} must be a multiple of the runs' own "
                         f"DATASETS.SYNTHETIC.NUM_VAL ({min(own)}) larger than it")


def on_larger_val(found: list[tuple[str, dict]], num_val: int, jobs: int,
                  threads: int | None) -> tuple[list[dict], dict]:
    """Records ``[(output_dir, record)]`` evaluated again on ``num_val`` validation images
    (kept in each run folder): ``metrics`` on all of them, ``own_metrics`` on the first block
    (the runs' own validation set), ``after_metrics`` on the rest, ``eval_seconds`` that
    evaluation's; and ``build_report``'s ``larger_val``."""
    from vclr_d2.engine import load_cfg
    from vclr_d2.engine.experiments import evaluate_runs_larger_val

    own = set()
    for o, _ in found:
        config = os.path.join(o, "config.yaml")
        if not os.path.isfile(config):
            raise FileNotFoundError(f"{o} has a run.json but no config.yaml ({config}) to "
                                    "evaluate it with; delete the folder to train it again")
        own.add(load_cfg(config, []).DATASETS.SYNTHETIC.NUM_VAL)
    check_num_val(num_val, own)
    results = evaluate_runs_larger_val([o for o, _ in found], num_val, jobs, threads)
    records, equal = [], 0
    for (_, rec), res in zip(found, results):
        groups = res["groups"]
        equal += groups["block 0"] == rec["metrics"]
        records.append({**rec, "metrics": groups["all"], "own_metrics": groups["block 0"],
                        "after_metrics": groups["blocks 1+"],
                        "run_metrics": rec["metrics"], "num_val": num_val,
                        "eval_seconds": res["eval_seconds"]})
    return records, {"num_val": num_val, "own": own.pop(), "equal": equal}


def _write(report: str, text: str, command: str, wall: float | None, records: dict) -> None:
    from vclr_d2.engine.experiments import machine

    os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
    Path(report).write_text(text)
    Path(report).with_suffix(".json").write_text(json.dumps(
        {"command": command, "wall_seconds": None if wall is None else round(wall, 1),
         "machine": machine(), "runs": records}, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--rows", nargs="+", default=["a", "b", "c", "d", "e", "f", "m"],
                        help="rows to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    default_output = str(ROOT / "output" / "ablation")
    parser.add_argument("--output", default=default_output,
                        help="runs go to <output>/<row>_seed<seed>/ (default output/ablation)")
    parser.add_argument("--report", default=None,
                        help="markdown report path, JSON beside it (default <output>/ablation.md)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default cpu_count // jobs)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the runs that have a run.json, train nothing")
    parser.add_argument("--num-val", type=int, default=None,
                        help="report the runs on this many validation images of their set "
                             "(evaluated after training, kept in each run folder as "
                             "val<N>.json); the first NUM_VAL are their own validation set")
    parser.add_argument("opts", nargs=argparse.REMAINDER,
                        help="KEY VALUE config overrides applied to every row")
    args = parser.parse_args(argv)

    from vclr_d2.engine.experiments import ROWS, machine, read_run_record, run_rows

    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {sorted(ROWS)}")
    if args.num_val is not None and args.num_val < 1:
        parser.error(f"--num-val must be positive, got {args.num_val}")
    report = args.report or os.path.join(args.output, "ablation.md")
    command = "python tools/ablation.py " + shlex.join(
        ["--rows", *args.rows, "--seeds", *map(str, args.seeds), "--jobs", str(args.jobs)]
        + (["--threads", str(args.threads)] if args.threads else [])
        + (["--output", args.output] if args.output != default_output else [])
        + (["--report", args.report] if args.report else [])
        + (["--num-val", str(args.num_val)] if args.num_val else []) + args.opts)
    runs = [(str(ROOT / "configs" / ROWS[r].config), s, os.path.join(args.output, f"{r}_seed{s}"))
            for s in args.seeds for r in args.rows]
    start = time.perf_counter()
    done = []

    def progress(record: dict) -> None:
        done.append(record)
        m = record["metrics"]
        print(f"[ablation {len(done)}/{len(runs)}] {Path(record['config']).name} seed "
              f"{record['seed']}: known box AR@100 {m['known box AR@100']:.1f}, novel box "
              f"AR@100 {m['novel box AR@100']:.1f} ({record['train_seconds']:.0f} s)", flush=True)

    if args.report_only:
        # each record checked to be of the run this command names (config, seed, overrides;
        # the threads too): the report prints the command as the one that made them
        try:
            found = [(run, read_run_record(*run, args.opts)) for run in runs]
        except ValueError as e:
            parser.error(str(e))
        done = [run for run, rec in found if rec is not None]
        results = [rec for _, rec in found if rec is not None]
        missing = [f"({Path(o).name.split('_seed')[0]}) seed {s}" for c, s, o in runs
                   if (c, s, o) not in done]
        for (_, _, o), rec in zip(done, results):
            if args.threads and rec.get("threads") != args.threads:
                parser.error(f"{Path(o, 'run.json')} was made with {rec.get('threads')} threads, "
                             f"not the --threads {args.threads} of this command")
        larger = None
        if args.num_val and results:
            try:
                results, larger = on_larger_val([(o, rec) for (_, _, o), rec in
                                                 zip(done, results)], args.num_val,
                                                args.jobs, args.threads)
            except (FileNotFoundError, ValueError) as e:
                parser.error(str(e))
        records = {r: [rec for (c, s, o), rec in zip(done, results)
                       if o.endswith(f"/{r}_seed{s}")] for r in ROWS if r in args.rows}
        records = {k: v for k, v in records.items() if v}
        text = build_report(records, command, None, machine(), missing, larger)
        _write(report, text, command, None, records)
        print(text)
        return 0
    # the set once, here, before the runs start in parallel (cached under $DETECTRON2_DATASETS)
    from vclr_d2.data.datasets.builtin import synthetic_kwargs
    from vclr_d2.data.datasets.synthetic import ensure_synthetic_openworld
    from vclr_d2.engine import get_vclr_cfg

    if args.num_val:  # before hours of training, not after
        try:
            check_num_val(args.num_val, {get_vclr_cfg(c, list(args.opts)).DATASETS.SYNTHETIC
                                         .NUM_VAL for c, _, _ in runs})
        except ValueError as e:
            parser.error(str(e))
    files = ensure_synthetic_openworld(
        **synthetic_kwargs(get_vclr_cfg(runs[0][0], list(args.opts))), workers=args.jobs)
    print(f"[ablation] synthetic set: {files.dir}", flush=True)
    print(f"[ablation] {len(runs)} runs, {args.jobs} at a time -> {args.output}", flush=True)
    results = run_rows(runs, args.opts, jobs=args.jobs, threads=args.threads, on_done=progress)
    larger = None
    if args.num_val:
        print(f"[ablation] evaluating the {len(runs)} runs on {args.num_val} validation images",
              flush=True)
        try:
            results, larger = on_larger_val([(o, rec) for (_, _, o), rec in zip(runs, results)],
                                            args.num_val, args.jobs, args.threads)
        except (FileNotFoundError, ValueError) as e:  # e.g. too few images for --num-val
            parser.error(str(e))
    wall = time.perf_counter() - start
    records = {r: [rec for (c, s, o), rec in zip(runs, results) if o.endswith(f"/{r}_seed{s}")]
               for r in ROWS if r in args.rows}
    text = build_report(records, command, wall, machine(), larger_val=larger)
    _write(report, text, command, wall, records)
    print("\n" + text)
    print(f"report: {report} (JSON beside it)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
