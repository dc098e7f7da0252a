"""Data: the v-CLR dataset mapper, open-world dataset registration and the synthetic set.

``views`` (``vclr_d2.data.views``) is where the student views' files live and how they are
made (``ViewSpec`` and ``view_path`` come from there).
"""

from . import datasets  # noqa: F401  (registers the built-in datasets)
from .mapper import VCLRDatasetMapper, ViewSpec, build_geometric_augmentation, view_path

__all__ = ["VCLRDatasetMapper", "ViewSpec", "build_geometric_augmentation", "view_path"]
