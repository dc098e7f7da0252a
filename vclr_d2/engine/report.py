"""Tables of open-world results over seeds: mean ± standard deviation, and paired differences.

``results`` everywhere is what ``train_and_evaluate`` returns: ``{dataset: {task: {metric:
value}}}``, with ``_seen``/``_unseen`` metric suffixes where known and novel objects were told
apart.
"""

from __future__ import annotations

import math
import statistics

__all__ = ["metric_rows", "summary_table"]

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


def _fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


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
