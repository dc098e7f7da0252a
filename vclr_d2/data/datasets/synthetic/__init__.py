"""Built-in synthetic open-world instance-segmentation set (COCO format, cached on disk).

Small images of textured shapes: KNOWN shape families are annotated in training, NOVEL ones
only in validation, and textures make "known texture => object" a tempting, wrong shortcut.
Each image comes with depth, style and edges views and simulated proposals; the set is
generated once, deterministically, into a folder named by its sizes and a hash of every
parameter. See docs/synthetic.md for the parameters, the files and the numbers.

Modules: ``parameters`` (knobs, validation, cache key and folder layout), ``shapes``,
``textures``, ``scenes``, ``views`` (depth and edges), ``proposals``, ``writing`` (files,
process pool, ``ensure_synthetic_openworld``).
"""

from .parameters import (
    BACKGROUND_TEXTURES,
    GENERATOR_VERSION,
    KNOWN_TEXTURES,
    SHAPE_FAMILIES,
    STYLE_TEXTURES,
    SyntheticOpenWorldFiles,
    SyntheticOpenWorldParams,
    default_synthetic_root,
    family_split_params,
    synthetic_openworld_files,
)
from .proposals import simulate_proposals
from .scenes import generate_scene
from .writing import ensure_synthetic_openworld

__all__ = [
    "SHAPE_FAMILIES",
    "KNOWN_TEXTURES",
    "BACKGROUND_TEXTURES",
    "STYLE_TEXTURES",
    "GENERATOR_VERSION",
    "SyntheticOpenWorldParams",
    "SyntheticOpenWorldFiles",
    "default_synthetic_root",
    "family_split_params",
    "synthetic_openworld_files",
    "ensure_synthetic_openworld",
    "generate_scene",
    "simulate_proposals",
]
