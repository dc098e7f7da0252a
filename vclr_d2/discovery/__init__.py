"""Unsupervised object discovery (MaskCut / VoteCut style) that writes v-CLR proposal files.

- ``features``: patch-feature sources (a timm model from a local checkpoint, or soft colour
  histograms of an image or of one of its views);
- ``ncut``: the normalized cut on the patch affinity graph, repeated for several objects;
- ``refine``: patch masks upsampled and refined with a guided filter;
- ``vote``: masks of several sources voted, scored by agreement;
- ``discover``: ``ObjectDiscoverer`` and ``discover_dataset`` (the COCO proposals file).

``tools/discover_objects.py`` is the command line.
"""

from .discover import (
    DiscoveryParams,
    ObjectDiscoverer,
    discover_dataset,
    images_from_folder,
    read_rgb,
)
from .features import FeatureSource, PixelFeatures, TimmFeatures, build_feature_source
from .ncut import Cut, affinity_matrix, foreground_side, multi_cut, second_eigenvector
from .refine import guided_filter, refine_mask
from .vote import Candidate, vote

__all__ = [
    "Candidate",
    "Cut",
    "DiscoveryParams",
    "FeatureSource",
    "ObjectDiscoverer",
    "PixelFeatures",
    "TimmFeatures",
    "affinity_matrix",
    "build_feature_source",
    "discover_dataset",
    "foreground_side",
    "guided_filter",
    "images_from_folder",
    "multi_cut",
    "read_rgb",
    "refine_mask",
    "second_eigenvector",
    "vote",
]
