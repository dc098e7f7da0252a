"""The student views (depth, style, edges): where their files live and how they are made.

- ``layout``: the one definition of the view-folder layout (``ViewSpec``; ``DEPTH``,
  ``STYLE``, ``EDGES``: ``<split>_depth_cmap/*.png``, ``style_coco_<split>/*.jpg``,
  ``<split>_edges/*.png``), ``view_path`` (the training mapper's lookup), ``output_dirs`` /
  ``output_path`` (where ``generate_views`` writes) and the image-folder listing;
- ``render``: ``edges_view`` (Canny, optional Gaussian blur first), ``colorize_depth``,
  colormaps, atomic image writing;
- ``models``: the depth (local Hugging Face folder or TorchScript) and style (TorchScript)
  model adapters;
- ``generate``: ``generate_views``, which writes the views of an image folder (used by
  ``tools/generate_views.py``).

Bad inputs raise ``vclr_d2.utils.InputError`` (``ToolError`` is its former name, kept as an
alias).
"""

from vclr_d2.utils.io import InputError

from .generate import MODEL_VIEWS, generate_views
from .layout import (
    DEPTH,
    EDGES,
    IMAGE_EXTS,
    LAYOUT,
    NATURAL,
    STYLE,
    VIEWS,
    ViewSpec,
    list_images,
    output_dirs,
    output_path,
    parse_views,
    view_path,
)
from .models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HFDepth,
    TorchScriptDepth,
    TorchScriptStyle,
    load_depth_model,
    model_input_size,
)
from .render import (
    COLORMAPS,
    GRAY,
    colorize_depth,
    colormap_id,
    edges_view,
    read_image,
    write_image,
)

ToolError = InputError  # the name tools/generate_views.py used before the move

__all__ = [
    "COLORMAPS", "DEPTH", "EDGES", "GRAY", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTS",
    "LAYOUT", "MODEL_VIEWS", "NATURAL", "STYLE", "VIEWS", "HFDepth", "InputError",
    "TorchScriptDepth", "TorchScriptStyle", "ToolError", "ViewSpec", "colorize_depth",
    "colormap_id", "edges_view", "generate_views", "list_images", "load_depth_model",
    "model_input_size", "output_dirs", "output_path", "parse_views", "read_image",
    "view_path", "write_image",
]
