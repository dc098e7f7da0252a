"""Parameters of the synthetic set: the frozen generator knobs and their validation, the
cache key (sizes + a hash of every parameter) and the layout of the cache folder."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from vclr_d2.utils.io import datasets_root

# Bump when the generator's output changes for the same parameters (part of the cache key).
GENERATOR_VERSION = 1

SHAPE_FAMILIES = ("ellipse", "rectangle", "triangle", "star", "ring", "cross", "hexagon",
                  "crescent")
KNOWN_TEXTURES = ("checker", "dots", "stripes", "grid")
BACKGROUND_TEXTURES = ("noise", "waves", "gradient", "marble")
STYLE_TEXTURES = ("hatch", "mosaic", "rings", "posterize")
_COLORMAPS = {
    "inferno": cv2.COLORMAP_INFERNO, "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA, "viridis": cv2.COLORMAP_VIRIDIS,
    "turbo": cv2.COLORMAP_TURBO, "jet": cv2.COLORMAP_JET, "bone": cv2.COLORMAP_BONE,
}
_SPLITS = {"train": 0, "val": 1}
_VIEWS = ("depth", "style", "edges")


@dataclass(frozen=True)
class SyntheticOpenWorldParams:
    """Every knob of the generator. The defaults are frozen: changing one changes the data
    (and the cache key). Sizes and periods are fractions of the image side."""

    #: shape families annotated in training
    known_families: tuple = ("ellipse", "rectangle", "triangle", "star")
    #: shape families never annotated in training (validation target)
    novel_families: tuple = ("ring", "cross", "hexagon", "crescent")
    #: (min, max) number of objects placed per image, uniform, before occlusion culling
    objects_per_image: tuple = (2, 6)
    #: probability that an object is of a novel family
    novel_fraction: float = 0.5
    #: (min, max) object diameter as a fraction of the image side
    object_size: tuple = (0.10, 0.40)
    #: an object whose visible part is below this fraction of its area is removed
    min_visible_fraction: float = 0.3
    #: ... or below this fraction of the image area
    min_visible_area: float = 0.0015
    #: texture pool of known objects (used by nothing else)
    known_textures: tuple = KNOWN_TEXTURES
    #: texture pool of the background and of novel objects
    background_textures: tuple = BACKGROUND_TEXTURES
    #: texture pool of the style view (all regions, independent of the family)
    style_textures: tuple = STYLE_TEXTURES
    #: (min, max) period of known-pool textures
    known_texture_period: tuple = (0.03, 0.07)
    #: (min, max) period of background-pool textures
    background_texture_period: tuple = (0.12, 0.35)
    #: (min, max) period of style-pool textures
    style_texture_period: tuple = (0.05, 0.15)
    #: probability that the background has a second texture on a random half-plane
    background_split_prob: float = 0.5
    #: minimum RGB distance between an object's mean colour and the background under it
    min_contrast: float = 60.0
    #: standard deviation of the Gaussian pixel noise of the natural image (0-255 scale)
    pixel_noise_std: float = 2.0
    #: (near, far) depth range of objects (depth 0 = camera, 1 = farthest)
    object_depth: tuple = (0.15, 0.55)
    #: (near, far) depth range of the background plane (gradient in a random direction)
    background_depth: tuple = (0.6, 1.0)
    #: OpenCV colormap of the depth view (inferno, magma, plasma, viridis, turbo, jet, bone)
    depth_colormap: str = "inferno"
    #: Canny thresholds of the edge view
    edge_thresholds: tuple = (100, 200)
    #: probability that an object (known or novel) gets a proposal
    proposal_fraction: float = 0.5
    #: probability that a proposal's mask is merged with the nearest other object
    proposal_merge_prob: float = 0.1
    #: probability that a proposal's mask keeps only one side of a cut through its centre
    proposal_split_prob: float = 0.1
    #: std of the dilation/erosion radius, fraction of the object size
    proposal_morph: float = 0.12
    #: std of the proposal mask shift, fraction of the object size
    proposal_shift: float = 0.04
    #: std of the jitter of each proposal box side, fraction of the object size
    proposal_box_jitter: float = 0.05
    #: std of the Gaussian noise added to proposal scores
    proposal_score_noise: float = 0.12
    #: (min, max) false-positive proposals per image, uniform
    proposal_false_positives: tuple = (1, 3)
    #: (min, max) size of false-positive blobs, fraction of the image side
    false_positive_size: tuple = (0.08, 0.30)
    #: proposals kept per image (highest scores)
    proposal_top_k: int = 5

    def __post_init__(self):
        for f in fields(self):  # lists -> tuples, so the params hash and compare
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        self._validate()

    # ---- validation -----------------------------------------------------------------------
    def _validate(self):
        def names(arg, pool, what):
            v = getattr(self, arg)
            if not isinstance(v, tuple) or not v:
                raise ValueError(f"{arg} must be a non-empty tuple of {what} names, got {v!r}")
            for n in v:
                if n not in pool:
                    raise ValueError(f"{arg}: unknown {what} {n!r} (choose from {pool})")
            if len(set(v)) != len(v):
                raise ValueError(f"{arg} has duplicates: {v!r}")

        names("known_families", SHAPE_FAMILIES, "family")
        names("novel_families", SHAPE_FAMILIES, "family")
        overlap = set(self.known_families) & set(self.novel_families)
        if overlap:
            raise ValueError(f"known_families and novel_families overlap: {sorted(overlap)}")
        names("known_textures", KNOWN_TEXTURES, "known texture")
        names("background_textures", BACKGROUND_TEXTURES, "background texture")
        names("style_textures", STYLE_TEXTURES, "style texture")

        def prob(arg):
            v = getattr(self, arg)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{arg} must be a probability in [0, 1], got {v!r}")

        for arg in ("novel_fraction", "min_visible_fraction", "min_visible_area",
                    "background_split_prob", "proposal_fraction", "proposal_merge_prob",
                    "proposal_split_prob"):
            prob(arg)
        if self.proposal_merge_prob + self.proposal_split_prob > 1.0:
            raise ValueError("proposal_merge_prob + proposal_split_prob must be <= 1")

        def interval(arg, lo, hi, integer=False):
            v = getattr(self, arg)
            ok = isinstance(v, tuple) and len(v) == 2
            ok = ok and all(isinstance(x, int if integer else (int, float)) for x in v)
            if not ok or not lo <= v[0] <= v[1] <= hi:
                raise ValueError(f"{arg} must be a ({'int' if integer else 'number'}) pair "
                                 f"lo <= hi within [{lo}, {hi}], got {v!r}")

        interval("objects_per_image", 1, 64, integer=True)
        interval("object_size", 0.02, 1.0)
        interval("known_texture_period", 0.005, 1.0)
        interval("background_texture_period", 0.005, 2.0)
        interval("style_texture_period", 0.005, 1.0)
        interval("object_depth", 0.0, 1.0)
        interval("background_depth", 0.0, 1.0)
        if self.object_depth[1] >= self.background_depth[0]:
            raise ValueError("object_depth must lie in front of (below) background_depth")
        interval("edge_thresholds", 0, 10000)
        interval("proposal_false_positives", 0, 64, integer=True)
        interval("false_positive_size", 0.01, 1.0)
        for arg in ("min_contrast", "pixel_noise_std", "proposal_morph", "proposal_shift",
                    "proposal_box_jitter", "proposal_score_noise"):
            v = getattr(self, arg)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{arg} must be a finite number >= 0, got {v!r}")
        if self.depth_colormap not in _COLORMAPS:
            raise ValueError(f"depth_colormap: unknown colormap {self.depth_colormap!r} "
                             f"(choose from {tuple(_COLORMAPS)})")
        if not isinstance(self.proposal_top_k, int) or self.proposal_top_k < 1:
            raise ValueError(f"proposal_top_k must be an int >= 1, got {self.proposal_top_k!r}")

    @property
    def families(self) -> tuple:
        """All families in category-id order (known first, then novel)."""
        return tuple(self.known_families) + tuple(self.novel_families)

    def category_id(self, family: str) -> int:
        return self.families.index(family) + 1


# ---- paths and cache key ---------------------------------------------------------------------
@dataclass(frozen=True)
class SyntheticOpenWorldFiles:
    """Absolute paths of one generated set, and its class names."""

    dir: str
    train_images: str
    val_images: str
    train_json: str
    train_proposals_json: str
    val_novel_json: str
    val_all_json: str
    known_classes: tuple[str, ...]
    novel_classes: tuple[str, ...]
    #: view name -> folder name relative to the images' parent ({split} = train or val)
    view_dirs: dict

    @property
    def train_all_json(self) -> str:
        """Every training object with its family (for analysis; not a training input)."""
        return os.path.join(self.dir, "annotations", "train_all.json")

    @property
    def params_json(self) -> str:
        return os.path.join(self.dir, "params.json")

    def view_folder(self, split: str, view: str) -> str:
        """Absolute folder of ``view`` (natural, depth, style, edges) for ``split``."""
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
        if view == "natural":
            return os.path.join(self.dir, split)
        if view not in self.view_dirs:
            raise ValueError(f"view must be natural or one of {tuple(self.view_dirs)}, "
                             f"got {view!r}")
        return os.path.join(self.dir, self.view_dirs[view].format(split=split))

    def is_complete(self) -> bool:
        return os.path.isfile(self.params_json)


def family_split_params(known_families=(), novel_families=()
                        ) -> SyntheticOpenWorldParams | None:
    """Parameters with another known/novel family split (an empty side keeps its default);
    None when both are empty (the frozen defaults)."""
    split = {k: tuple(v) for k, v in (("known_families", known_families),
                                      ("novel_families", novel_families)) if v}
    return SyntheticOpenWorldParams(**split) if split else None


def default_synthetic_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``) + ``/synth_openworld``."""
    return os.path.join(datasets_root(), "synth_openworld")


def _check_args(num_train, num_val, image_size, seed, params):
    def integer(name, v, lo):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")

    integer("num_train", num_train, 1)
    integer("num_val", num_val, 1)
    integer("image_size", image_size, 32)
    integer("seed", seed, 0)
    if params is None:
        params = SyntheticOpenWorldParams()
    elif not isinstance(params, SyntheticOpenWorldParams):
        raise ValueError(f"params must be a SyntheticOpenWorldParams, got {type(params)}")
    return int(num_train), int(num_val), int(image_size), int(seed), params


def _config_dict(num_train, num_val, image_size, seed, params) -> dict:
    return {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
            "image_size": image_size, "seed": seed, "params": asdict(params)}


def _cache_key(config: dict) -> str:
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return (f"train{config['num_train']}_val{config['num_val']}_{config['image_size']}px_"
            f"seed{config['seed']}_{digest}")


def synthetic_openworld_files(num_train: int = 1000, num_val: int = 200, image_size: int = 128,
                              seed: int = 0, root: str | None = None,
                              params: SyntheticOpenWorldParams | None = None,
                              ) -> SyntheticOpenWorldFiles:
    """Paths of the set with these parameters (generates nothing)."""
    num_train, num_val, image_size, seed, params = _check_args(num_train, num_val, image_size,
                                                               seed, params)
    root = os.path.abspath(root or default_synthetic_root())
    d = os.path.join(root, _cache_key(_config_dict(num_train, num_val, image_size, seed,
                                                   params)))
    ann = os.path.join(d, "annotations")
    return SyntheticOpenWorldFiles(
        dir=d, train_images=os.path.join(d, "train"), val_images=os.path.join(d, "val"),
        train_json=os.path.join(ann, "train_known.json"),
        train_proposals_json=os.path.join(ann, "train_proposals.json"),
        val_novel_json=os.path.join(ann, "val_novel.json"),
        val_all_json=os.path.join(ann, "val_all.json"),
        known_classes=tuple(params.known_families), novel_classes=tuple(params.novel_families),
        view_dirs={v: "{split}_" + v for v in _VIEWS})
