"""Small helpers shared by the library and the command-line tools.

- ``io``: ``InputError`` (a bad input file or option, the message names it), ``load_json``,
  ``read_metrics`` (a run's ``metrics.json``), ``write_json`` (atomic), ``datasets_root``
  (``$DETECTRON2_DATASETS``, read in this one place);
- ``cli``: ``HelpFormatter`` (the tool's docstring verbatim plus option defaults) and
  ``run_tool`` (a tool's ``main`` body with ``InputError`` turned into ``prog: error: ...``),
  ``non_negative_int`` (an argparse type), ``load_tool`` (``tools/<name>.py`` as a module).
"""

from .cli import HelpFormatter, load_tool, non_negative_int, run_tool
from .io import (
    InputError,
    datasets_root,
    expand_datasets_root,
    load_json,
    read_metrics,
    write_json,
)

__all__ = ["HelpFormatter", "InputError", "datasets_root", "expand_datasets_root", "load_json",
           "load_tool", "non_negative_int", "read_metrics", "run_tool", "write_json"]
