"""Where each view's files live: the one definition of the view-folder layout.

A view is a :class:`ViewSpec` ``(name, folder, ext)``. For a natural image
``<parent>/<split>/<stem>.<ext>`` the view's file is ``<parent>/<folder>/<stem><ext>`` with
``{split}`` in ``folder`` replaced by ``<split>``. The views written by
``tools/generate_views.py`` and read by default by the training mapper (the official v-CLR
layout, ``coco/train2017/x.jpg`` -> ``coco/train2017_depth_cmap/x.png``):

========  ========================  =====
view      folder                    ext
========  ========================  =====
depth     ``{split}_depth_cmap``    .png
style     ``style_coco_{split}``    .jpg
edges     ``{split}_edges``         .png
========  ========================  =====

The config defaults ``INPUT.VIEWS.DIRS`` / ``EXTS`` are taken from :data:`DEPTH` and
:data:`STYLE`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vclr_d2.utils.io import InputError, expand_datasets_root

__all__ = ["DEPTH", "EDGES", "IMAGE_EXTS", "LAYOUT", "NATURAL", "STYLE", "VIEWS", "ViewSpec",
           "list_images", "output_dirs", "output_path", "parse_views", "view_path"]


@dataclass(frozen=True)
class ViewSpec:
    """A student view: its name, the folder pattern of its files and their extension."""

    name: str
    folder: str = ""
    ext: str = ""

    @property
    def is_natural(self) -> bool:
        return self.name == "natural"

    def folder_for(self, split: str) -> str:
        """``folder`` with ``{split}`` replaced by ``split`` (e.g. ``train2017_depth_cmap``)."""
        return self.folder.replace("{split}", split)


NATURAL = ViewSpec("natural")
DEPTH = ViewSpec("depth", "{split}_depth_cmap", ".png")  # depth normalised per image, colorized
STYLE = ViewSpec("style", "style_coco_{split}", ".jpg")
EDGES = ViewSpec("edges", "{split}_edges", ".png")  # Canny edges, 3 channels
#: the generated views by name
LAYOUT: dict[str, ViewSpec] = {v.name: v for v in (DEPTH, STYLE, EDGES)}
#: the views generate_views can write, in the order they are made and reported
VIEWS = ("edges", "depth", "style")
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def view_path(natural_file: str, view: ViewSpec, root: str = "") -> str:
    """Path of ``view``'s file for the natural image ``natural_file``.

    ``root`` replaces the natural folder's parent; an absolute ``view.folder`` is used as is;
    ``$DETECTRON2_DATASETS`` in either is expanded (default ``datasets``). For ``natural`` the
    natural file itself.
    """
    if view.is_natural:
        return natural_file
    split_dir, fname = os.path.split(natural_file)
    parent, split = os.path.split(split_dir)
    folder = expand_datasets_root(view.folder_for(split))
    if not os.path.isabs(folder):
        folder = os.path.join(expand_datasets_root(root) if root else parent, folder)
    return os.path.join(folder, os.path.splitext(fname)[0] + view.ext)


def output_dirs(image_dir: str | os.PathLike, out_root: str | os.PathLike | None = None
                ) -> dict[str, Path]:
    """Folder of each generated view for ``<root>/<split>`` (``out_root`` replaces
    ``<root>``; no ``$DETECTRON2_DATASETS`` expansion)."""
    image_dir = Path(os.path.abspath(image_dir))
    split = image_dir.name
    root = Path(out_root) if out_root is not None else image_dir.parent
    return {name: root / spec.folder_for(split) for name, spec in LAYOUT.items()}


def output_path(dirs: dict[str, Path], view: str, image: Path) -> Path:
    """File of ``view`` for ``image`` in the folders ``dirs`` of :func:`output_dirs`."""
    return dirs[view] / (image.stem + LAYOUT[view].ext)


def list_images(image_dir: str | os.PathLike) -> list[Path]:
    """The images of a folder (not recursive), sorted; errors name the folder or the clash."""
    d = Path(image_dir)
    if not d.is_dir():
        raise InputError(f"image folder not found: {d}")
    images = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not images:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {d}")
    seen: dict[str, Path] = {}
    for p in images:
        if p.stem in seen:
            raise InputError(f"two images with the same stem would write the same view file: "
                             f"{seen[p.stem]} and {p}")
        seen[p.stem] = p
    return images


def parse_views(text: str) -> list[str]:
    """``"edges, depth"`` -> ``["edges", "depth"]`` (lower case, no duplicates); an unknown
    or empty list raises ``InputError`` naming the valid views."""
    views = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise InputError(f"--views: unknown view(s) {', '.join(bad) or repr(text)}; valid: "
                         f"{', '.join(VIEWS)}")
    return list(dict.fromkeys(views))
