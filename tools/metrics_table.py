#!/usr/bin/env python
"""Means of training scalars over iteration windows, read from runs' ``metrics.json``.

    python tools/metrics_table.py output/plateau/i2800/e_seed0 output/plateau/i2800/e_seed1 \\
        --key vclr/num_pseudo --window 350 --start 350

detectron2's ``JSONWriter`` appends one JSON object per logging step to
``<run>/metrics.json`` (``"iteration"`` and the scalars logged then). For each window of
``--window`` iterations from ``--start`` (``[start, start + window)``, ...) up to ``--end``
(default: the last logged iteration), this prints a markdown table with the mean of each
``--key`` in each run: the figures docs/experiments.md gives for the pseudo-labels per image
during training, or for the loss of the same run on two machines. Logged lines without the key
(evaluation results share the file) are skipped; a window where a run logged no value shows
``-``. ``--output`` writes the numbers as JSON as well. A missing file, a line that is not JSON,
a key no run ever logged, or a window that is not positive is an error naming it.
"""

from __future__ import annotations

import argparse
import math
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


def window_means(steps: list[dict], key: str, window: int, start: int = 0,
                 end: int | None = None) -> list[tuple[int, int, float]]:
    """``(first, last, mean)`` of ``key`` over ``[first, first + window)`` from ``start`` to
    ``end`` (inclusive; default the last logged iteration); ``nan`` where nothing was logged."""
    if window <= 0:
        raise InputError(f"--window must be positive, got {window}")
    values = [(s["iteration"], s[key]) for s in steps if key in s]
    last = max((s["iteration"] for s in steps), default=start) if end is None else end
    out = []
    for first in range(start, last + 1, window):
        stop = min(first + window, last + 1)
        inside = [v for it, v in values if first <= it < stop]
        out.append((first, stop - 1, sum(inside) / len(inside) if inside else math.nan))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run folders (or their metrics.json files)")
    parser.add_argument("--key", action="append", required=True,
                        help="scalar to average (repeat for several)")
    parser.add_argument("--window", type=int, default=350, help="iterations per window")
    parser.add_argument("--start", type=int, default=0, help="first iteration")
    parser.add_argument("--end", type=int, default=None, help="last iteration (inclusive)")
    parser.add_argument("--digits", type=non_negative_int, default=2, help="decimals printed")
    parser.add_argument("--output", type=Path, default=None, help="JSON file of the means")
    args = parser.parse_args(argv)

    def body() -> int:
        steps = {str(r): read_metrics(r) for r in args.runs}
        end = args.end if args.end is not None else max(
            (s["iteration"] for run in steps.values() for s in run), default=args.start)
        if args.start > end:
            raise InputError(f"--start {args.start} is after the last iteration {end}")
        result = {}
        for key in args.key:
            if not any(key in s for run in steps.values() for s in run):
                raise InputError(f"--key {key!r}: logged by none of {list(steps)}")
            table = {r: window_means(run, key, args.window, args.start, end)
                     for r, run in steps.items()}
            result[key] = {r: [{"first": a, "last": b, "mean": None if math.isnan(m) else m}
                               for a, b, m in t] for r, t in table.items()}
            windows = [(a, b) for a, b, _ in next(iter(table.values()))]
            print(f"\n{key}, mean per window of {args.window} iterations\n")
            print("| run | " + " | ".join(f"{a}-{b}" for a, b in windows) + " |")
            print("| --- |" + " ---: |" * len(windows))
            for r, t in table.items():
                cells = ["-" if math.isnan(m) else f"{m:.{args.digits}f}" for _, _, m in t]
                print(f"| {r} | " + " | ".join(cells) + " |")
        if args.output:
            write_json(result, args.output)
        return 0

    return run_tool("metrics_table.py", body)


if __name__ == "__main__":
    sys.exit(main())
