"""Reading and writing the JSON files of datasets and tools, and where datasets live."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["InputError", "datasets_root", "expand_datasets_root", "load_json", "write_json"]


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
