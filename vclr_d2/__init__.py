"""vclr_d2: v-CLR open-world instance segmentation in Detectron2.

Importing this package registers its backbone, meta-architecture, datasets and evaluator in
detectron2's registries.
"""

from . import data, evaluation, modeling  # noqa: F401  (imported to register components)
from .config import add_vclr_config

__all__ = ["add_vclr_config"]
