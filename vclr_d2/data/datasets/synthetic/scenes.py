"""Scenes: the per-image random generators, and one scene (objects placed, culled by
occlusion and painted on a background, with its depth, style and edges views)."""

from __future__ import annotations

import math

import numpy as np

from .parameters import _SPLITS, GENERATOR_VERSION, SyntheticOpenWorldParams
from .shapes import _draw_shape
from .textures import _contrasting_texture, _grid, _texture
from .views import depth_view, edges_view


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
    return {"natural": natural, "depth": depth_view(depth, p.depth_colormap), "style": style,
            "edges": edges_view(natural, p.edge_thresholds), "objects": objects}
