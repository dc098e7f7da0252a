#!/usr/bin/env python
"""Learning curves: evaluation results against iterations, mean ± sd over each row's seeds.

    python tools/plot_curves.py output/plateau/i5600/a_seed0 output/plateau/i5600/b_seed0 \\
        output/plateau/i5600/b_seed1 output/plateau/i5600/b_seed2 --output docs/curves.png

Reads the ``metrics.json`` of each run folder (detectron2's ``JSONWriter``; a run logs its
evaluation results there every ``TEST.EVAL_PERIOD`` iterations, e.g. ``bbox/AR@100_seen``, the
known objects' box AR@100, and ``bbox/AR@100_unseen``, the novel objects'). Runs are grouped
into rows by their folder: ``<parent>/<row>_seed<n>`` (the folders of ``tools/ablation.py``)
is row ``<parent>/<row>``; ``--label`` renames a row. For each ``--key`` this prints a markdown
table, a row per group and a column per evaluation, of mean ± sample sd over the group's runs
(only evaluations that every run of the group logged; ``-`` elsewhere), and with ``--output``
draws the curves (one panel per key, the band is ± sd). The x axis counts the iterations done:
detectron2 logs a result after step ``i`` (from 0) as ``"iteration": i``, shown as ``i + 1``, and
the evaluation after training as ``"iteration": MAX_ITER``, shown as it is. A missing file, a
key that a run never logged, a group whose runs share no logged iteration, or a ``--label`` for
no row is an error naming it.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from vclr_d2.utils import (  # noqa: E402
    HelpFormatter,
    InputError,
    non_negative_int,
    read_metrics,
    run_tool,
    write_json,
)

DEFAULT_KEYS = ["bbox/AR@100_seen", "bbox/AR@100_unseen"]


def row_of(run: Path) -> str:
    """``<parent>/<row>`` of a run folder ``<parent>/<row>_seed<n>`` (the folder name
    unchanged when it has no ``_seed<n>``)."""
    run = run.parent if run.name == "metrics.json" else run
    row = re.sub(r"_seed\d+$", "", run.name)
    return f"{run.parent.name}/{row}"


def key_title(key: str) -> str:
    """``bbox/AR@100_unseen`` -> ``novel box AR@100``; other keys unchanged."""
    m = re.fullmatch(r"(bbox|segm)/(AR\S*?)(_seen|_unseen)?", key)
    if not m:
        return key
    kind = {"bbox": "box", "segm": "mask"}[m.group(1)]
    split = {"_seen": "known ", "_unseen": "novel ", None: ""}[m.group(3)]
    return f"{split}{kind} {m.group(2)}"


def values_by_iteration(steps: list[dict], key: str) -> dict[int, float]:
    """``{iterations done: value}`` of ``key`` (the last value where one was logged twice).

    A value logged after training step ``i`` (from 0) has ``"iteration": i``, so ``i + 1``
    steps were done; the evaluation after the last step is logged at ``"iteration": MAX_ITER``,
    one past the last training step (the last line with ``lr``), and counts ``MAX_ITER``.
    """
    last_step = max((s["iteration"] for s in steps if "lr" in s), default=math.inf)
    out = {}
    for s in steps:
        if key in s:
            done = s["iteration"] + 1 if s["iteration"] <= last_step else s["iteration"]
            out[done] = float(s[key])
    return out


def curves(runs: dict[str, dict[str, list[dict]]], key: str
           ) -> dict[str, list[tuple[int, float, float, int]]]:
    """For each row, ``(iterations, mean, sd, n)`` at the evaluations all its runs logged.

    ``runs`` maps a row to ``{run: logged steps}``. ``sd`` is the sample standard deviation
    (``nan`` for one run).

    Raises:
        InputError: a run never logged ``key``, or a row's runs share no logged iteration.
    """
    out = {}
    for row, members in runs.items():
        series = {}
        for run, steps in members.items():
            try:
                series[run] = values_by_iteration(steps, key)
            except (TypeError, ValueError) as e:
                raise InputError(f"--key {key!r}: {run} logged a value that is not a number "
                                 f"({e})") from None
            if not series[run]:
                raise InputError(f"--key {key!r}: {run} logged no value")
        common = sorted(set.intersection(*(set(s) for s in series.values())))
        if not common:
            raise InputError(f"--key {key!r}: the runs of row {row} ({', '.join(series)}) "
                             "share no logged iteration")
        points = []
        for it in common:
            vals = [s[it] for s in series.values()]
            sd = statistics.stdev(vals) if len(vals) > 1 else math.nan
            points.append((it, statistics.fmean(vals), sd, len(vals)))
        out[row] = points
    return out


def markdown(table: dict[str, list[tuple[int, float, float, int]]], key: str,
             digits: int = 1) -> str:
    """A markdown table of ``curves`` output: a row per group, a column per iteration."""
    iterations = sorted({p[0] for pts in table.values() for p in pts})
    lines = [f"{key_title(key)} (`{key}`), mean ± sd over the runs of each row", "",
             "| row | runs | " + " | ".join(map(str, iterations)) + " |",
             "| --- | ---: |" + " ---: |" * len(iterations)]
    for row, pts in table.items():
        at = {p[0]: p for p in pts}
        cells = []
        for it in iterations:
            if it not in at:
                cells.append("-")
            else:
                _, m, sd, n = at[it]
                cells.append(f"{m:.{digits}f}" + ("" if n == 1 else f" ± {sd:.{digits}f}"))
        n = max(p[3] for p in pts)
        lines.append(f"| {row} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(tables: dict[str, dict[str, list[tuple[int, float, float, int]]]], path: Path) -> None:
    """One panel per key, a line per row with a band of ± sd; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5.0 * len(tables), 3.8), squeeze=False)
    for ax, (key, table) in zip(axes[0], tables.items()):
        for row, pts in table.items():
            x = [p[0] for p in pts]
            m = [p[1] for p in pts]
            (line,) = ax.plot(x, m, marker="o", markersize=3, label=f"{row} (n={pts[0][3]})")
            if pts[0][3] > 1:
                ax.fill_between(x, [p[1] - p[2] for p in pts], [p[1] + p[2] for p in pts],
                                color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(key_title(key))
        ax.set_xlabel("iterations")
        ax.set_ylabel("percent")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run folders (or their metrics.json files)")
    parser.add_argument("--key", action="append", default=None,
                        help=f"logged value to plot (repeat for several; default {DEFAULT_KEYS})")
    parser.add_argument("--label", action="append", default=[], metavar="ROW=TEXT",
                        help="name a row in the table and the legend (repeat for several)")
    parser.add_argument("--digits", type=non_negative_int, default=1, help="decimals printed")
    parser.add_argument("--output", type=Path, default=None,
                        help="image file of the curves (.png, .pdf or .svg)")
    parser.add_argument("--json", type=Path, default=None, help="JSON file of the numbers")
    args = parser.parse_args(argv)

    def body() -> int:
        keys = args.key or DEFAULT_KEYS
        if args.output and args.output.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise InputError(f"--output {args.output}: not a .png, .pdf or .svg file")
        runs: dict[str, dict[str, list[dict]]] = {}
        for r in args.runs:
            runs.setdefault(row_of(r), {})[str(r)] = read_metrics(r)
        for item in args.label:
            old, sep, new = item.partition("=")
            if not sep or not new:
                raise InputError(f"--label {item!r}: expected ROW=TEXT")
            if old not in runs:
                raise InputError(f"--label {item!r}: no row {old!r} among {list(runs)}")
            if new in runs:
                raise InputError(f"--label {item!r}: {new!r} names another row already")
            runs = {(new if k == old else k): v for k, v in runs.items()}
        tables = {key: curves(runs, key) for key in keys}
        for key, table in tables.items():
            print("\n" + markdown(table, key, args.digits) + "\n")
        if args.output:
            plot(tables, args.output)
            print(f"curves: {args.output}")
        if args.json:
            write_json({key: {row: [{"iterations": it, "mean": m,
                                     "sd": None if math.isnan(sd) else sd, "runs": n}
                                    for it, m, sd, n in pts] for row, pts in table.items()}
                        for key, table in tables.items()}, args.json)
        return 0

    return run_tool("plot_curves.py", body)


if __name__ == "__main__":
    sys.exit(main())
