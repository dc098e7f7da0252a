"""Tables of open-world results over seeds: mean ± standard deviation, and paired differences.

Two shapes, one formatting (``mean ± sd``, one decimal):

- ``summary_table``: one row per metric, one column per arm (self-training rounds, proposal
  sources), from ``train_and_evaluate`` results: ``{dataset: {task: {metric: value}}}``, with
  ``_seen``/``_unseen`` metric suffixes where known and novel objects were told apart;
- ``markdown_table``: one row per arm, one column per metric, from the ablation's run records
  (``{"seed", "metrics": {name: value}}``, ``vclr_d2.engine.experiments``), with
  ``paired_differences`` between two arms' seeds.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence

__all__ = ["markdown_table", "metric_rows", "paired_differences", "summarize", "summary_table",
           "write_summary"]

_SPLITS = (("", "all"), ("_seen", "known"), ("_unseen", "novel"))
_TASKS = (("bbox", "box"), ("segm", "mask"))


def metric_rows(results: dict, ks: tuple[int, ...] = (10, 100)) -> list[tuple[str, str, str]]:
    """(dataset, task, metric key) of every AR@k of ``results``, in a stable order."""
    rows = []
    for dataset, tasks in results.items():
        for suffix, _ in _SPLITS:
            for task, _ in _TASKS:
                for k in ks:
                    if f"AR@{k}{suffix}" in tasks.get(task, {}):
                        rows.append((dataset, task, f"AR@{k}{suffix}"))
    return rows


def _label(dataset: str, task: str, key: str) -> str:
    split = next(name for suffix, name in reversed(_SPLITS) if key.endswith(suffix))
    k = key.split("@")[1].split("_")[0]
    return f"| {dataset} | {split} | {dict(_TASKS)[task]} AR@{k} |"


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN for no values."""
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: Sequence[float | None]) -> str:
    """``mean ± sd`` over the seeds (one value: the value; missing or NaN ones left out)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    mean, sd = summarize(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {sd:.1f}"


def summary_table(columns: dict[str, list[dict]], reference: str | None = None,
                  ks: tuple[int, ...] = (10, 100)) -> str:
    """Markdown: one row per AR@k of the first run, one column per entry of ``columns``
    (name -> results of each seed, seeds in the same order in every column), and a
    ``<name> - <reference>`` column of paired differences for every other column."""
    names = list(columns)
    first = next((runs[0] for runs in columns.values() if runs), None)
    if first is None:
        return ""
    others = [n for n in names if reference is not None and n != reference]
    head = ["dataset", "objects", "metric"] + names + [f"{n} - {reference}" for n in others]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | --- |" + " ---: |" * (
        len(head) - 3)]

    def get(results: dict, dataset: str, task: str, key: str):
        return results.get(dataset, {}).get(task, {}).get(key)

    for dataset, task, key in metric_rows(first, ks):
        cells = [_fmt([get(r, dataset, task, key) for r in columns[n]]) for n in names]
        for n in others:
            pairs = zip(columns[n], columns[reference])
            diffs = [None if None in (get(a, dataset, task, key), get(b, dataset, task, key))
                     else get(a, dataset, task, key) - get(b, dataset, task, key)
                     for a, b in pairs]
            cells.append(_fmt(diffs))
        lines.append(_label(dataset, task, key) + " " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(a: Sequence[Mapping], b: Sequence[Mapping], metric: str) -> list[float]:
    """Per-seed ``a - b`` of ``metric`` over runs paired by seed (seeds present in both)."""
    by_seed = {r["seed"]: r for r in b}
    return [r["metrics"][metric] - by_seed[r["seed"]]["metrics"][metric]
            for r in a if r["seed"] in by_seed]


def markdown_table(records: Mapping[str, Sequence[Mapping]], metrics: Sequence[str],
                   titles: Mapping[str, str] | None = None) -> str:
    """Rows = ``records`` keys (each a list of run records over seeds), columns = ``metrics``;
    mean ± sample sd over the seeds."""
    head = "| row | " + " | ".join(metrics) + " |"
    rows = [head, "| --- |" + " ---: |" * len(metrics)]
    for key, runs in records.items():
        label = f"({key}) {titles[key]}" if titles and key in titles else key
        cells = [_fmt([r["metrics"][m] for r in runs]) for m in metrics]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_summary(output_dir: str, name: str, subject: str, columns: dict[str, list[dict]],
                  reference: str, seeds: Sequence[int], record: dict) -> str:
    """Write ``<output_dir>/<name>.md`` (a header naming ``subject`` and the seeds, then
    ``summary_table(columns, reference)``) and ``<name>.json`` (``record``); return the
    markdown, header included."""
    header = (f"{subject}, seed(s) {', '.join(map(str, seeds))}"
              + (" (mean ± standard deviation)" if len(seeds) > 1 else "")
              + ": teacher (EMA) weights, class-agnostic AR in percent.")
    md = header + "\n\n" + summary_table(columns, reference=reference)
    with open(os.path.join(output_dir, f"{name}.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(output_dir, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    return md
