"""Reading and writing the JSON files of datasets and tools, and where datasets live."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["InputError", "datasets_root", "expand_datasets_root", "load_json", "read_metrics",
           "write_json"]


class InputError(ValueError):
    """A problem with an input file or an option; the message names the file, key and value.

    Tools print it as ``<tool>: error: <message>`` and exit with status 1 (``run_tool``).
    """


def load_json(path: str | os.PathLike, what: str):
    """Read a JSON file; a missing or malformed file raises ``InputError`` naming it.

    ``what`` says what the file is for the message (e.g. ``"ground-truth"``).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file not found: {p}")
    try:
        with p.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} file {p} is not valid JSON: {e.msg} at line {e.lineno}, "
                         f"column {e.colno}") from e
    except UnicodeDecodeError as e:
        raise InputError(f"{what} file {p} is not UTF-8 text JSON: {e}") from e


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The logged objects of one run's ``metrics.json`` (detectron2's ``JSONWriter``: one JSON
    object per logging step, with ``"iteration"``), in order; ``path`` is the run folder or the
    file itself.

    Raises:
        InputError: no such file, or a line that is not a JSON object with an ``iteration``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise InputError(f"{path}: no such metrics file")
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}, line {n}: not JSON ({e})") from None
            if not isinstance(obj, dict) or "iteration" not in obj:
                raise InputError(f"{path}, line {n}: not a logged step (no 'iteration')")
            out.append(obj)
    return out


def write_json(obj, path: str | os.PathLike) -> None:
    """Write compact JSON atomically (a temporary file renamed), creating parent folders.

    An interrupted write leaves the previous file (or none), never half a file.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, p)


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` with ``~`` expanded, default ``datasets`` (detectron2's rule)."""
    return os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))


def expand_datasets_root(path: str) -> str:
    """``path`` with ``$DETECTRON2_DATASETS`` / ``${DETECTRON2_DATASETS}`` replaced by
    ``datasets_root()``."""
    root = datasets_root()
    return path.replace("${DETECTRON2_DATASETS}", root).replace("$DETECTRON2_DATASETS", root)
