"""Built-in synthetic open-world instance-segmentation dataset (COCO format, cached on disk).

The set is the project's embedded default: with no data and no GPU, v-CLR and a plain
class-agnostic baseline train on it on a CPU in minutes. It is built so that the *texture
shortcut* is tempting and wrong, while every object stays findable from its shape and
boundary in the natural image:

- shape families are split into KNOWN families (annotated in training) and NOVEL families
  (never annotated in training, the evaluation target);
- known objects are painted with textures of a *known pool* (sharp, high-frequency,
  two-coloured patterns) that nothing else ever uses; the background is painted with textures
  of a *background pool* (smooth patterns), and novel objects use the background pool too,
  with their own colours, phase, scale and orientation, so their boundary is visible but
  "known texture => object" explains all the training ground truth;
- the depth, style and edge views keep the geometry and destroy (depth, style) or reduce
  (edges) that texture information: depth is exact (one depth per object, background plane
  with a gradient, colorized), style re-textures every region from a *third pool* drawn
  independently of the family;
- simulated unsupervised proposals cover a fraction of ALL objects (known and novel) with
  noisy masks and boxes, plus false positives on the background, top-k per image.

Every image is generated from its own random generator seeded with (seed, split, index), so
the output is byte-identical whatever the number of worker processes. The set is written once
to ``<root>/<key>/`` where ``key`` names the sizes and hashes every parameter::

    <root>/<key>/train/000000.png        natural training images (RGB PNG)
    <root>/<key>/train_depth/000000.png  colorized exact depth (same size)
    <root>/<key>/train_style/000000.png  re-textured view
    <root>/<key>/train_edges/000000.png  Canny edges of the natural image, 3 channels
    <root>/<key>/val/..., val_depth/..., val_style/..., val_edges/...
    <root>/<key>/annotations/train_known.json      training ground truth, known families only
    <root>/<key>/annotations/train_proposals.json  proposals, one category "object", scores
    <root>/<key>/annotations/train_all.json        every training object (analysis only)
    <root>/<key>/annotations/val_novel.json        validation ground truth, novel families only
    <root>/<key>/annotations/val_all.json          every validation object with its family
    <root>/<key>/params.json                       parameters, categories and counts

Category ids are the same in every file: families in the order known + novel, from 1.
Segmentations are compressed RLE (``counts`` as str), ``bbox`` is the mask's extent (XYWH),
``area`` the mask's pixel count, ``iscrowd`` 0. Proposal boxes are jittered independently of
their masks (``area`` is the proposal mask's area).

Frozen defaults (``SyntheticOpenWorldParams()``; sizes are fractions of the image side S)
======================================  =====================================================
knob                                    default
======================================  =====================================================
known_families                          ellipse, rectangle, triangle, star
novel_families                          ring, cross, hexagon, crescent
objects_per_image                       2-6 (uniform)
novel_fraction                          0.5 (each object novel with this probability)
object_size                             0.10-0.40 S diameter (13-51 px at 128 px)
min_visible_fraction / _area            0.3 of the object / 0.0015 S^2 (25 px at 128), else
                                        the object is removed from the scene
known_textures (known objects only)     checker, dots, stripes, grid; period 0.03-0.07 S
background_textures (bg + novel)        noise, waves, gradient, marble; period 0.12-0.35 S
style_textures (style view, any region) hatch, mosaic, rings, posterize; period 0.05-0.15 S
background_split_prob                   0.5 (second background texture on a half-plane)
min_contrast                            60 (RGB distance, object vs background mean colour)
pixel_noise_std                         2.0 (Gaussian noise of the natural image)
depth                                   objects 0.15-0.55, background plane 0.6-1.0 with a
                                        random-direction gradient; 255*(1-d), inferno map
edges                                   cv2.Canny(gray, 100, 200), 3 channels
proposal_fraction                       0.5 of all objects, known and novel alike
proposal noise                          merge with a neighbour 0.1, cut in half 0.1,
                                        dilate/erode |N(0, 0.12)| of the object size,
                                        shift N(0, 0.04), box jitter N(0, 0.05) per side
proposal_false_positives                1-3 random blobs of 0.08-0.30 S on the background
proposal score                          0.15 + 0.7 * mask IoU + N(0, 0.12), clipped
proposal_top_k                          5 per image, by score
======================================  =====================================================

Default set (``python tools/generate_synthetic.py``: 1000 train + 200 val, 128 px, seed 0):
about 21 s on a 2-core CPU, 56 MiB; details and counts in docs/synthetic.md.
"""

from __future__ import annotations

import colorsys
import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np
from pycocotools import mask as mask_util

from vclr_d2.utils.io import datasets_root

__all__ = [
    "SHAPE_FAMILIES",
    "KNOWN_TEXTURES",
    "BACKGROUND_TEXTURES",
    "STYLE_TEXTURES",
    "GENERATOR_VERSION",
    "SyntheticOpenWorldParams",
    "SyntheticOpenWorldFiles",
    "default_synthetic_root",
    "synthetic_openworld_files",
    "ensure_synthetic_openworld",
    "generate_scene",
    "simulate_proposals",
]

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


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Paths and cache key
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Shapes (binary masks drawn with cv2 fill functions, 4 fractional bits)
# --------------------------------------------------------------------------------------------
_SHIFT = 4
_ONE = 1 << _SHIFT


def _pts(xy: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(xy, np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _poly(mask, cx, cy, radii, angles):
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    cv2.fillPoly(mask, [_pts(xy)], 1, cv2.LINE_8, _SHIFT)


def _ellipse(mask, cx, cy, a, b, angle_deg, value=1):
    cv2.ellipse(mask, (int(round(cx * _ONE)), int(round(cy * _ONE))),
                (max(1, int(round(a * _ONE))), max(1, int(round(b * _ONE)))),
                angle_deg, 0, 360, value, -1, cv2.LINE_8, _SHIFT)


def _rect(mask, cx, cy, w, h, rot):
    c, s = math.cos(rot), math.sin(rot)
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], np.float64) / 2
    xy = corners @ np.array([[c, s], [-s, c]]) + [cx, cy]
    cv2.fillConvexPoly(mask, _pts(xy), 1, cv2.LINE_8, _SHIFT)


def _draw_shape(family: str, rng: np.random.Generator, size: int, cx: float, cy: float,
                r: float) -> np.ndarray:
    """Binary mask (uint8 0/1) of one object of ``family`` with radius ``r`` around (cx, cy)."""
    m = np.zeros((size, size), np.uint8)
    rot = rng.uniform(0, 2 * math.pi)
    if family == "ellipse":
        _ellipse(m, cx, cy, r, r * rng.uniform(0.5, 1.0), math.degrees(rot))
    elif family == "rectangle":
        a = rng.uniform(math.radians(25), math.radians(45))
        _rect(m, cx, cy, 2 * r * math.cos(a), 2 * r * math.sin(a), rot)
    elif family == "triangle":
        ang = rot + np.array([0, 2, 4]) * math.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        _poly(m, cx, cy, r * rng.uniform(0.85, 1.0, 3), ang)
    elif family == "star":
        n = int(rng.integers(5, 8))
        ang = rot + np.arange(2 * n) * math.pi / n
        radii = np.where(np.arange(2 * n) % 2 == 0, r, r * rng.uniform(0.4, 0.55))
        _poly(m, cx, cy, radii, ang)
    elif family == "ring":
        b = r * rng.uniform(0.75, 1.0)
        _ellipse(m, cx, cy, r, b, math.degrees(rot))
        k = rng.uniform(0.45, 0.6)
        _ellipse(m, cx, cy, r * k, b * k, math.degrees(rot), value=0)
    elif family == "cross":
        w = 2 * r * rng.uniform(0.3, 0.4)
        _rect(m, cx, cy, 2 * r, w, rot)
        _rect(m, cx, cy, 2 * r, w, rot + math.pi / 2)
    elif family == "hexagon":
        ang = rot + np.arange(6) * math.pi / 3
        _poly(m, cx, cy, np.full(6, r), ang)
        if rng.random() < 0.5:  # slightly squashed hexagon
            m = _squash(m, cx, cy, rng.uniform(0.75, 1.0), rot)
    elif family == "crescent":
        _ellipse(m, cx, cy, r, r, 0.0)
        off = r * rng.uniform(0.35, 0.6)
        _ellipse(m, cx + off * math.cos(rot), cy + off * math.sin(rot),
                 r * rng.uniform(0.75, 0.95), r * rng.uniform(0.75, 0.95), 0.0, value=0)
    else:  # pragma: no cover - validated in the params
        raise ValueError(f"unknown family {family!r}")
    return m


def _squash(m, cx, cy, k, rot):
    """Scale the mask by ``k`` along direction ``rot`` around (cx, cy) (nearest-neighbour)."""
    c, s = math.cos(rot), math.sin(rot)
    rmat = np.array([[c, -s], [s, c]])
    a = rmat @ np.diag([k, 1.0]) @ rmat.T
    t = np.array([cx, cy]) - a @ np.array([cx, cy])
    return cv2.warpAffine(m, np.hstack([a, t[:, None]]), (m.shape[1], m.shape[0]),
                          flags=cv2.INTER_NEAREST, borderValue=0)


# --------------------------------------------------------------------------------------------
# Textures (vectorised over the whole image, HxWx3 float32 in RGB 0-255)
# --------------------------------------------------------------------------------------------
_GRIDS: dict = {}


def _grid(size: int):
    if size not in _GRIDS:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        _GRIDS[size] = (xx, yy)
    return _GRIDS[size]


def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0),
                                        min(max(v, 0.0), 1.0)), np.float32) * 255.0


def _palette(rng: np.random.Generator, pool: str):
    """Two colours of a texture: high-contrast pair (known), tonal pair (background),
    independent pair (style)."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.95)
    a = _hsv(h, s, v)
    if pool == "known":
        b = _hsv(h + rng.uniform(0.3, 0.7), rng.uniform(0.4, 1.0),
                 v + (-1 if v > 0.6 else 1) * rng.uniform(0.3, 0.5))
    elif pool == "background":
        b = _hsv(h + rng.uniform(-0.08, 0.08), s * rng.uniform(0.7, 1.1),
                 v + (-1 if v > 0.6 else 1) * rng.uniform(0.15, 0.35))
    else:
        b = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 1.0), rng.uniform(0.15, 1.0))
    return a, b


def _value_noise(rng: np.random.Generator, shape: tuple, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] with feature size ``cell`` px (bicubic upsampled random grid)."""
    h, w = shape
    nh, nw = int(math.ceil(h / cell)) + 3, int(math.ceil(w / cell)) + 3
    g = rng.random((nh, nw), dtype=np.float32)
    big = cv2.resize(g, (int(math.ceil(nw * cell)), int(math.ceil(nh * cell))),
                     interpolation=cv2.INTER_CUBIC)
    oy, ox = (int(x) for x in rng.integers(0, max(1, int(cell)), 2))
    t = big[oy:oy + h, ox:ox + w]
    lo, hi = float(t.min()), float(t.max())
    return (t - lo) / max(hi - lo, 1e-6)


def _frac(x):
    return x - np.floor(x)


def _mosaic(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Voronoi cells of one jittered seed per unit cell of (u, v), a random value per cell."""
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    u0, v0 = int(iu.min()) - 1, int(iv.min()) - 1
    nu, nv = int(iu.max()) - u0 + 2, int(iv.max()) - v0 + 2
    jitter = rng.uniform(0.1, 0.9, (nv, nu, 2)).astype(np.float32)
    value = rng.random((nv, nu), dtype=np.float32)
    best_d = np.full(u.shape, np.inf, np.float32)
    t = np.zeros(u.shape, np.float32)
    for dv in (-1, 0, 1):
        for du in (-1, 0, 1):
            cu, cv = iu + du - u0, iv + dv - v0
            d = (u - (cu + u0 + jitter[cv, cu, 0])) ** 2 + (v - (cv + v0 + jitter[cv, cu, 1])) ** 2
            closer = d < best_d
            best_d = np.where(closer, d, best_d)
            t = np.where(closer, value[cv, cu], t)
    return t


def _texture(kind: str, rng: np.random.Generator, size: int, period_range: tuple,
             pool: str, box: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 RGB, mean colour) of one texture instance of ``kind`` on the whole
    ``size`` x ``size`` image, or on its crop ``box`` = (x0, y0, x1, y1) only."""
    xx, yy = _grid(size)
    if box is not None:
        xx, yy = xx[box[1]:box[3], box[0]:box[2]], yy[box[1]:box[3], box[0]:box[2]]
    period = max(2.0, rng.uniform(*period_range) * size)
    th = rng.uniform(0, math.pi)
    c, s = math.cos(th), math.sin(th)
    ox, oy = rng.uniform(0, period, 2)
    u = ((xx + ox) * c + (yy + oy) * s) / period
    v = (-(xx + ox) * s + (yy + oy) * c) / period
    a, b = _palette(rng, pool)
    if kind == "checker":
        t = (np.floor(u) + np.floor(v)) % 2
    elif kind == "dots":
        rad = rng.uniform(0.2, 0.35)
        t = ((_frac(u) - 0.5) ** 2 + (_frac(v) - 0.5) ** 2 < rad * rad).astype(np.float32)
    elif kind == "stripes":
        t = (_frac(u) < rng.uniform(0.35, 0.65)).astype(np.float32)
    elif kind == "grid":
        w = rng.uniform(0.15, 0.3)
        t = ((_frac(u) < w) | (_frac(v) < w)).astype(np.float32)
    elif kind == "noise":
        t = _value_noise(rng, xx.shape, period / 2)
    elif kind == "waves":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u + rng.uniform(0.5, 2.0) * np.sin(np.pi * v))
    elif kind == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif kind == "marble":
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u + rng.uniform(3.0, 6.0)
                               * _value_noise(rng, xx.shape, period))
    elif kind == "hatch":
        t = (_frac(u * 2) < rng.uniform(0.2, 0.35)).astype(np.float32)
    elif kind == "mosaic":
        t = _mosaic(rng, u, v)
    elif kind == "rings":
        cx, cy = rng.uniform(-0.5, 1.5, 2) * size
        r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / period
        t = np.floor(_frac(r) * 3) / 2
    elif kind == "posterize":
        t = np.floor(_value_noise(rng, xx.shape, period) * 3.999) / 3
    else:  # pragma: no cover - validated in the params
        raise ValueError(f"unknown texture {kind!r}")
    t = t.astype(np.float32)[..., None]
    img = a * (1 - t) + b * t
    mean = a * (1 - float(t.mean())) + b * float(t.mean())
    return img, mean


def _contrasting_texture(rng, pools: tuple, period_range: tuple, pool: str, size: int,
                         box: tuple, under: np.ndarray, min_contrast: float):
    """A texture (on ``box``) of a random kind of ``pools`` whose mean colour is at least
    ``min_contrast`` away from ``under`` (best of up to 20 draws)."""
    best, best_d = None, -1.0
    for _ in range(20):
        kind = pools[int(rng.integers(len(pools)))]
        img, mean = _texture(kind, rng, size, period_range, pool, box)
        dist = float(np.linalg.norm(mean - under))
        if dist > best_d:
            best, best_d = (kind, img), dist
        if dist >= min_contrast:
            break
    return best


# --------------------------------------------------------------------------------------------
# One scene
# --------------------------------------------------------------------------------------------
def _image_rngs(seed: int, split: str, index: int):
    ss = np.random.SeedSequence([GENERATOR_VERSION, seed, _SPLITS[split], index])
    scene, proposals = ss.spawn(2)
    return np.random.Generator(np.random.PCG64(scene)), np.random.Generator(
        np.random.PCG64(proposals))


def generate_scene(rng: np.random.Generator, size: int, p: SyntheticOpenWorldParams) -> dict:
    """One scene: natural/depth/style/edges images (HxWx3 uint8, RGB) and its objects.

    Returns ``{"natural", "depth", "style", "edges", "objects"}`` where ``objects`` is a list
    (far to near) of ``{"family", "novel", "texture", "depth", "mask"}`` with the visible mask
    (bool HxW).
    """
    xx, yy = _grid(size)
    # ---- objects: sample, then cull from the nearest so visible parts are large enough ----
    n = int(rng.integers(p.objects_per_image[0], p.objects_per_image[1] + 1))
    candidates = []
    for _ in range(n):
        novel = bool(rng.random() < p.novel_fraction)
        group = p.novel_families if novel else p.known_families
        family = group[int(rng.integers(len(group)))]
        r = rng.uniform(*p.object_size) * size / 2
        cx, cy = rng.uniform(0.1 * size, 0.9 * size, 2)
        mask = _draw_shape(family, rng, size, cx, cy, r).astype(bool)
        candidates.append({"family": family, "novel": novel,
                           "depth": float(rng.uniform(*p.object_depth)), "full": mask})
    candidates.sort(key=lambda o: o["depth"])  # near to far
    occupied = np.zeros((size, size), bool)
    min_area = p.min_visible_area * size * size
    kept = []
    for o in candidates:
        full_area = int(o["full"].sum())
        visible = o["full"] & ~occupied
        area = int(visible.sum())
        if full_area == 0 or area < max(min_area, p.min_visible_fraction * full_area, 1):
            continue  # removed from the scene: not drawn, occludes nothing
        o["mask"] = visible
        occupied |= o["full"]
        kept.append(o)
    objects = kept[::-1]  # far to near

    # ---- background: one or two (half-plane) textures, depth plane with a gradient ----
    bg_tex = [_texture(p.background_textures[int(rng.integers(len(p.background_textures)))],
                       rng, size, p.background_texture_period, "background")[0]]
    split = rng.random() < p.background_split_prob
    if split:
        ang = rng.uniform(0, 2 * math.pi)
        px, py = rng.uniform(0.2, 0.8, 2) * size
        region = ((xx - px) * math.cos(ang) + (yy - py) * math.sin(ang)) > 0
        bg_tex.append(_texture(p.background_textures[int(rng.integers(
            len(p.background_textures)))], rng, size, p.background_texture_period,
            "background")[0])
        natural = np.where(region[..., None], bg_tex[1], bg_tex[0])
    else:
        region = None
        natural = bg_tex[0].copy()
    ang = rng.uniform(0, 2 * math.pi)
    proj = xx * math.cos(ang) + yy * math.sin(ang)
    proj = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    d0, d1 = p.background_depth
    depth = (d0 + (d1 - d0) * proj).astype(np.float32)

    # style view background: same regions, style-pool textures
    style = _texture(p.style_textures[int(rng.integers(len(p.style_textures)))], rng, size,
                     p.style_texture_period, "style")[0]
    if region is not None:
        other = _texture(p.style_textures[int(rng.integers(len(p.style_textures)))], rng, size,
                         p.style_texture_period, "style")[0]
        style = np.where(region[..., None], other, style)

    # ---- paint objects far to near (their visible masks do not overlap) ----
    for o in objects:
        ys, xs = np.nonzero(o["full"])
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        crop = (slice(box[1], box[3]), slice(box[0], box[2]))
        m = o["full"][crop]
        nat, sty = natural[crop], style[crop]  # views into the full images
        if o["novel"]:
            kind, img = _contrasting_texture(rng, p.background_textures,
                                             p.background_texture_period, "background", size,
                                             box, nat[m].mean(0), p.min_contrast)
        else:
            kind, img = _contrasting_texture(rng, p.known_textures, p.known_texture_period,
                                             "known", size, box, nat[m].mean(0), p.min_contrast)
        o["texture"] = kind
        nat[m] = img[m]
        depth[crop][m] = o["depth"]
        _, simg = _contrasting_texture(rng, p.style_textures, p.style_texture_period, "style",
                                       size, box, sty[m].mean(0), p.min_contrast)
        sty[m] = simg[m]
        del o["full"]

    if p.pixel_noise_std > 0:
        natural = natural + rng.normal(0, p.pixel_noise_std, natural.shape).astype(np.float32)
    natural = np.clip(np.round(natural), 0, 255).astype(np.uint8)
    style = np.clip(np.round(style), 0, 255).astype(np.uint8)
    d8 = np.clip(np.round(255.0 * (1.0 - depth)), 0, 255).astype(np.uint8)
    depth_bgr = cv2.applyColorMap(d8, _COLORMAPS[p.depth_colormap])
    gray = cv2.cvtColor(natural, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, float(p.edge_thresholds[0]), float(p.edge_thresholds[1]))
    return {"natural": natural, "depth": np.ascontiguousarray(depth_bgr[..., ::-1]),
            "style": style, "edges": np.repeat(edges[..., None], 3, 2), "objects": objects}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.count_nonzero(a & b)
    return inter / max(np.count_nonzero(a | b), 1)


def _extent(m: np.ndarray):
    ys, xs = np.nonzero(m)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def simulate_proposals(rng: np.random.Generator, objects: list, size: int,
                       p: SyntheticOpenWorldParams) -> list:
    """Noisy class-agnostic proposals of a scene: ``[{"mask", "box" (XYXY), "score",
    "source" ("known" | "novel" | "false_positive")}]``, top-k by score."""
    out = []
    masks = [o["mask"] for o in objects]
    centres = [np.array(_extent(m)).reshape(2, 2).mean(0) for m in masks]
    for i, o in enumerate(objects):
        if rng.random() >= p.proposal_fraction:
            continue
        gt = o["mask"]
        x0, y0, x1, y1 = _extent(gt)
        osize = max(x1 - x0, y1 - y0)
        m = gt.copy()
        r = rng.random()
        if r < p.proposal_merge_prob and len(objects) > 1:  # under-segmentation
            dist = [np.linalg.norm(centres[j] - centres[i]) if j != i else np.inf
                    for j in range(len(objects))]
            m |= masks[int(np.argmin(dist))]
        elif r < p.proposal_merge_prob + p.proposal_split_prob:  # over-segmentation
            ang = rng.uniform(0, 2 * math.pi)
            cx, cy = centres[i]
            xx, yy = _grid(size)
            half = m & (((xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)) > 0)
            if np.count_nonzero(half) >= 0.3 * np.count_nonzero(m):
                m = half
        k = int(round(abs(rng.normal(0, p.proposal_morph)) * osize))
        if k >= 1:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
            m8 = m.astype(np.uint8)
            er = cv2.erode(m8, kernel) if rng.random() < 0.5 else None
            if er is not None and np.count_nonzero(er) >= 0.3 * np.count_nonzero(m8):
                m = er.astype(bool)
            else:
                m = cv2.dilate(m8, kernel).astype(bool)
        dx, dy = np.round(rng.normal(0, p.proposal_shift * osize, 2))
        if dx or dy:
            mat = np.float32([[1, 0, dx], [0, 1, dy]])
            m = cv2.warpAffine(m.astype(np.uint8), mat, (size, size), flags=cv2.INTER_NEAREST,
                               borderValue=0).astype(bool)
        if np.count_nonzero(m) < 4:
            continue
        out.append({"mask": m, "quality": _iou(m, gt),
                    "source": "novel" if o["novel"] else "known", "size": osize})
    occupied = np.zeros((size, size), bool)
    for m in masks:
        occupied |= m
    nfp = int(rng.integers(p.proposal_false_positives[0], p.proposal_false_positives[1] + 1))
    for _ in range(nfp):
        best = None
        for _try in range(10):  # prefer blobs lying on the background
            r = rng.uniform(*p.false_positive_size) * size / 2
            cx, cy = rng.uniform(0, size, 2)
            blob = np.zeros((size, size), np.uint8)
            if rng.random() < 0.5:
                _ellipse(blob, cx, cy, r, r * rng.uniform(0.4, 1.0), rng.uniform(0, 180))
            else:
                npts = int(rng.integers(5, 9))
                ang = np.sort(rng.uniform(0, 2 * math.pi, npts))
                _poly(blob, cx, cy, r * rng.uniform(0.5, 1.0, npts), ang)
            blob = blob.astype(bool)
            area = np.count_nonzero(blob)
            if area < 4:
                continue
            overlap = np.count_nonzero(blob & occupied) / area
            if best is None or overlap < best[0]:
                best = (overlap, blob)
            if overlap < 0.2:
                break
        if best is None:
            continue
        blob = best[1]
        q = max([_iou(blob, g) for g in masks], default=0.0)
        x0, y0, x1, y1 = _extent(blob)
        out.append({"mask": blob, "quality": q, "source": "false_positive",
                    "size": max(x1 - x0, y1 - y0)})
    for prop in out:
        x0, y0, x1, y1 = np.array(_extent(prop["mask"])) + rng.normal(
            0, p.proposal_box_jitter * prop.pop("size"), 4)
        x0, x1 = sorted((float(np.clip(x0, 0, size - 1)), float(np.clip(x1, 1, size))))
        y0, y1 = sorted((float(np.clip(y0, 0, size - 1)), float(np.clip(y1, 1, size))))
        prop["box"] = (x0, y0, max(x1, x0 + 1.0), max(y1, y0 + 1.0))
        score = 0.15 + 0.7 * prop.pop("quality") + rng.normal(0, p.proposal_score_noise)
        prop["score"] = round(float(np.clip(score, 0.01, 0.99)), 4)
    out.sort(key=lambda d: -d["score"])  # stable: ties keep generation order
    return out[:p.proposal_top_k]


# --------------------------------------------------------------------------------------------
# Generation of one image (worker) and of the whole set
# --------------------------------------------------------------------------------------------
def _rle(m: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(x) for x in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _coco_ann(m: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    bbox = [float(x) for x in mask_util.toBbox(rle)]
    return {"bbox": bbox, "area": float(mask_util.area(rle)), "iscrowd": 0,
            "segmentation": {"size": [int(x) for x in rle["size"]],
                             "counts": rle["counts"].decode("ascii")}}


def _write_png(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"cannot write {path}")


def _generate_one(task) -> dict:
    out_dir, split, index, size, seed, p = task
    scene_rng, prop_rng = _image_rngs(seed, split, index)
    scene = generate_scene(scene_rng, size, p)
    name = f"{index:06d}.png"
    _write_png(os.path.join(out_dir, split, name), scene["natural"])
    for view in _VIEWS:
        _write_png(os.path.join(out_dir, f"{split}_{view}", name), scene[view])
    image = {"id": index + 1, "file_name": name, "height": size, "width": size}
    objects = []
    for o in scene["objects"]:
        ann = _coco_ann(o["mask"])
        ann.update(category_id=p.category_id(o["family"]), novel=o["novel"])
        objects.append(ann)
    proposals = []
    if split == "train":
        for prop in simulate_proposals(prop_rng, scene["objects"], size, p):
            x0, y0, x1, y1 = prop["box"]
            proposals.append({
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": float(np.count_nonzero(prop["mask"])), "iscrowd": 0, "category_id": 1,
                "score": prop["score"], "segmentation": _rle(prop["mask"]),
                "source": prop["source"]})
    return {"image": image, "objects": objects, "proposals": proposals}


def _init_worker():
    cv2.setNumThreads(1)  # one process per core; no OpenCV thread pool in the workers


@contextlib.contextmanager
def _worker_pool(workers: int):
    """A pool of forked workers (they start at once: no re-import of the package).

    OpenCV's thread pool does not survive fork(): a child touching a pool that had threads in
    the parent can deadlock. The parent's pool is therefore shut down (one thread) while the
    workers are forked, and restored afterwards."""
    if "fork" not in mp.get_all_start_methods():  # pragma: no cover - not on Linux
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            yield pool
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        pool = mp.get_context("fork").Pool(workers, initializer=_init_worker)
    finally:
        cv2.setNumThreads(threads)
    with pool:
        yield pool


def _dump(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


def _generate(tmp: str, num_train: int, num_val: int, size: int, seed: int,
              p: SyntheticOpenWorldParams, config: dict, workers: int, progress: bool) -> None:
    for split in _SPLITS:
        os.makedirs(os.path.join(tmp, split))
        for view in _VIEWS:
            os.makedirs(os.path.join(tmp, f"{split}_{view}"))
    os.makedirs(os.path.join(tmp, "annotations"))
    tasks = [(tmp, "train", i, size, seed, p) for i in range(num_train)]
    tasks += [(tmp, "val", i, size, seed, p) for i in range(num_val)]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), desc="synthetic open-world set", unit="img")
    results = {"train": [], "val": []}
    try:
        if workers and workers > 0:
            with _worker_pool(workers) as pool:
                for task, res in zip(tasks, pool.imap(_generate_one, tasks, chunksize=8)):
                    results[task[1]].append(res)
                    if bar is not None:
                        bar.update(1)
        else:
            for task in tasks:
                results[task[1]].append(_generate_one(task))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    cats = [{"id": p.category_id(f), "name": f, "supercategory": "novel" if f in
             p.novel_families else "known"} for f in p.families]
    info = {"description": "vclr_d2 synthetic open-world set", "version": GENERATOR_VERSION,
            "seed": seed, "image_size": size}
    stats = {}

    def coco(split, keep, categories, extra=None):
        images, anns = [], []
        for res in results[split]:
            images.append(res["image"])
            for o in res["objects"]:
                if keep(o):
                    ann = {"id": len(anns) + 1, "image_id": res["image"]["id"]}
                    ann.update({k: v for k, v in o.items() if k != "novel"})
                    anns.append(ann)
        return {"info": info, "images": images, "annotations": anns, "categories": categories}

    ann_dir = os.path.join(tmp, "annotations")
    known = [c for c in cats if c["supercategory"] == "known"]
    novel = [c for c in cats if c["supercategory"] == "novel"]
    for fname, split, keep, categories in (
            ("train_known.json", "train", lambda o: not o["novel"], known),
            ("train_all.json", "train", lambda o: True, cats),
            ("val_novel.json", "val", lambda o: o["novel"], novel),
            ("val_all.json", "val", lambda o: True, cats)):
        d = coco(split, keep, categories)
        stats[fname[:-5] + "_annotations"] = len(d["annotations"])
        _dump(os.path.join(ann_dir, fname), d)

    images, props = [], []
    by_source = {"known": 0, "novel": 0, "false_positive": 0}
    for res in results["train"]:
        images.append(res["image"])
        for prop in res["proposals"]:
            by_source[prop["source"]] += 1
            ann = {"id": len(props) + 1, "image_id": res["image"]["id"]}
            ann.update({k: v for k, v in prop.items() if k != "source"})
            props.append(ann)
    _dump(os.path.join(ann_dir, "train_proposals.json"),
          {"info": info, "images": images, "annotations": props,
           "categories": [{"id": 1, "name": "object"}]})
    stats.update(train_images=num_train, val_images=num_val, proposals=len(props),
                 proposals_on_known=by_source["known"], proposals_on_novel=by_source["novel"],
                 proposals_false_positive=by_source["false_positive"],
                 train_novel_objects=sum(o["novel"] for r in results["train"]
                                         for o in r["objects"]))
    meta = dict(config, known_classes=list(p.known_families),
                novel_classes=list(p.novel_families), categories=cats, stats=stats)
    _dump(os.path.join(tmp, "params.json"), meta)  # written last: marks the set complete


def ensure_synthetic_openworld(num_train: int = 1000, num_val: int = 200, image_size: int = 128,
                               seed: int = 0, root: str | None = None,
                               params: SyntheticOpenWorldParams | None = None,
                               workers: int = 0, progress: bool = True,
                               ) -> SyntheticOpenWorldFiles:
    """Generate the set into its cache folder if it is not there yet, and return its paths.

    Generation goes to a temporary sibling folder renamed into place at the end, so an
    interrupted run never leaves a folder that looks complete; if another process finished
    first, its folder is used. ``workers`` > 0 uses that many processes (same output).
    """
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    files = synthetic_openworld_files(num_train, num_val, image_size, seed, root, params)
    if files.is_complete():
        return files
    num_train, num_val, image_size, seed, params = _check_args(num_train, num_val, image_size,
                                                               seed, params)
    config = _config_dict(num_train, num_val, image_size, seed, params)
    parent = os.path.dirname(files.dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(files.dir)}.tmp-{os.getpid()}-"
                               f"{uuid.uuid4().hex[:8]}")
    try:
        _generate(tmp, num_train, num_val, image_size, seed, params, config, int(workers),
                  progress)
        if os.path.isdir(files.dir) and not files.is_complete():
            shutil.rmtree(files.dir, ignore_errors=True)  # a stray incomplete folder
        try:
            os.rename(tmp, files.dir)
        except OSError:
            if not files.is_complete():
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return files
