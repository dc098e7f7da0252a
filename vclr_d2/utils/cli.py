"""What the command-line tools under ``tools/`` share."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from .io import InputError

__all__ = ["TOOLS_DIR", "HelpFormatter", "load_tool", "non_negative_int", "run_tool"]

# tools/ of the source checkout this package is imported from (an editable install)
TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """The module docstring verbatim, and the defaults of the options that have one."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def non_negative_int(text: str) -> int:
    """An argparse ``type`` for counts such as ``--digits``: ``"-1"`` is a usage error naming
    the option and the value (argparse adds both), not a traceback later on."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give 0 or more")
    return value


def run_tool(prog: str, body: Callable[[], int | None]) -> int:
    """Run a tool's ``body``; an ``InputError`` is printed as ``<prog>: error: <message>`` on
    stderr and gives exit status 1 (argparse's own usage errors keep status 2)."""
    try:
        return body() or 0
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` imported as a module (``tools/`` is no package), once per process:
    for a tool that drives another (``gpu_check`` runs ``benchmark``) and for the tests.

    Raises:
        InputError: the checkout has no such tool (``tools/`` exists only in a source checkout).
    """
    key = f"vclr_tool_{name}"
    if key not in sys.modules:
        path = TOOLS_DIR / f"{name}.py"
        if not path.is_file():
            raise InputError(f"no tool {name!r}: {path} not found")
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)  # registered first: dataclasses look themselves up
        except BaseException:
            del sys.modules[key]
            raise
        try:  # other processes cannot import it by name: cloudpickle (submitit) sends it by value
            import cloudpickle

            cloudpickle.register_pickle_by_value(module)
        except ImportError:
            pass
    return sys.modules[key]
