"""What the command-line tools under ``tools/`` share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .io import InputError

__all__ = ["HelpFormatter", "run_tool"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """The module docstring verbatim, and the defaults of the options that have one."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def run_tool(prog: str, body: Callable[[], int | None]) -> int:
    """Run a tool's ``body``; an ``InputError`` is printed as ``<prog>: error: <message>`` on
    stderr and gives exit status 1 (argparse's own usage errors keep status 2)."""
    try:
        return body() or 0
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
