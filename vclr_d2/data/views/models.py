"""The depth and style models behind the model views, read from local paths only.

- :func:`load_depth_model`: a Hugging Face depth-estimation folder (:class:`HFDepth`, needs
  ``transformers``) or a TorchScript file (:class:`TorchScriptDepth`);
- :class:`TorchScriptStyle`: a TorchScript image -> image module.

Each is called on an RGB uint8 HxWx3 image: depth models return a float HxW map at the image's
size, the style model a BGR uint8 HxWx3 image. ``torch`` is imported on first use.
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path

import cv2
import numpy as np

from vclr_d2.utils.io import InputError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "HFDepth", "TorchScriptDepth", "TorchScriptStyle",
           "load_depth_model", "model_input_size"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def model_input_size(h: int, w: int, input_size: int = 0, multiple: int = 1) -> tuple[int, int]:
    """(h, w) fed to a TorchScript model: shorter side ``input_size`` (0: as is), rounded to
    a multiple of ``multiple``."""
    if input_size > 0:
        s = input_size / min(h, w)
        h, w = h * s, w * s
    m = max(1, multiple)
    return max(m, int(round(h / m)) * m), max(m, int(round(w / m)) * m)


def _to_tensor(rgb: np.ndarray, size: tuple[int, int], normalize: bool, device):
    import torch

    h, w = rgb.shape[:2]
    if (h, w) != size:
        interp = cv2.INTER_AREA if size[0] * size[1] < h * w else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=interp)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float()
    x = x / 255.0
    if normalize:
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def _resize_map(t, h: int, w: int):
    """Bilinear resize of a 1xCxhxw tensor to HxW."""
    import torch.nn.functional as F

    if tuple(t.shape[-2:]) != (h, w):
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return t


class TorchScriptDepth:
    """Depth from a TorchScript module; ``__call__(rgb uint8 HxWx3) -> float HxW``.

    The module takes a 1x3xHxW float RGB image in [0, 1] normalised by the ImageNet mean/std
    and returns 1x1xhxw, 1xhxw or hxw depth (resized bilinearly to the image).
    """

    def __init__(self, path: str, device: str = "cpu", input_size: int = 0, multiple: int = 1):
        self.module = _load_torchscript(path, device, "depth")
        self.path, self.device = path, device
        self.input_size, self.multiple = input_size, multiple

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        h, w = rgb.shape[:2]
        x = _to_tensor(rgb, model_input_size(h, w, self.input_size, self.multiple), True,
                       self.device)
        with torch.inference_mode():
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not torch.is_tensor(out) or out.dim() not in (2, 3, 4) or (
                out.dim() == 4 and tuple(out.shape[:2]) != (1, 1)) or (
                out.dim() == 3 and out.shape[0] != 1):
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise InputError(f"depth model {self.path} returned {shape}; expected a "
                             f"1x1xhxw, 1xhxw or hxw tensor")
        out = out.float().reshape(1, 1, *out.shape[-2:])
        return _resize_map(out, h, w)[0, 0].cpu().double().numpy()


class HFDepth:
    """Depth from a local Hugging Face depth-estimation folder (model + image processor)."""

    def __init__(self, path: str, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation
        except ImportError as e:
            raise InputError(f"--depth-model {path} is a Hugging Face folder, which needs "
                             f"transformers (pip install 'vclr_d2[views]'): {e}") from e
        if not (Path(path) / "config.json").is_file():
            raise InputError(f"--depth-model {path}: a folder must be a Hugging Face model "
                             f"folder with config.json (or pass a TorchScript file)")
        try:
            self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForDepthEstimation.from_pretrained(
                path, local_files_only=True).to(device).eval()
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"cannot load the Hugging Face depth model in {path}: {e}") from e
        self.path, self.device = path, device

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        h, w = rgb.shape[:2]
        inputs = self.processor(images=rgb, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with torch.inference_mode():
            outputs = self.model(**inputs)
            post = getattr(self.processor, "post_process_depth_estimation", None)
            if post is not None:
                # the processor's own post-processing: removes padding (ZoeDepth) and resizes
                kwargs = {"target_sizes": [(h, w)]}
                if "source_sizes" in inspect.signature(post).parameters:
                    kwargs["source_sizes"] = [(h, w)]
                out = post(outputs, **kwargs)[0]["predicted_depth"]
            else:
                out = outputs.predicted_depth
        out = out.float().reshape(1, 1, *out.shape[-2:])
        return _resize_map(out, h, w)[0, 0].cpu().double().numpy()


class TorchScriptStyle:
    """Stylization by a TorchScript module; ``__call__(rgb uint8 HxWx3) -> BGR uint8 HxWx3``.

    The module maps 1x3xHxW -> 1x3xhxw (RGB), input and output normalised by the ImageNet
    mean/std (``norm="imagenet"``) or in [0, 1] (``norm="none"``).
    """

    def __init__(self, path: str, device: str = "cpu", norm: str = "imagenet",
                 input_size: int = 0, multiple: int = 1):
        self.module = _load_torchscript(path, device, "style")
        self.path, self.device, self.norm = path, device, norm
        self.input_size, self.multiple = input_size, multiple

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        import torch

        h, w = rgb.shape[:2]
        normalize = self.norm == "imagenet"
        x = _to_tensor(rgb, model_input_size(h, w, self.input_size, self.multiple), normalize,
                       self.device)
        with torch.inference_mode():
            out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not torch.is_tensor(out) or out.dim() != 4 or tuple(out.shape[:2]) != (1, 3):
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise InputError(f"style model {self.path} returned {shape}; expected 1x3xhxw")
        out = out.float()
        if normalize:
            mean = torch.tensor(IMAGENET_MEAN, device=out.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=out.device).view(1, 3, 1, 1)
            out = out * std + mean
        out = _resize_map(out.clamp(0, 1), h, w).clamp(0, 1)
        img = (out[0].permute(1, 2, 0) * 255.0).round().byte().cpu().numpy()
        return cv2.cvtColor(img, cv2.COLOR_RGB2BGR)


def _load_torchscript(path: str, device: str, what: str):
    import torch

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} model file not found: {p}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            module = torch.jit.load(str(p), map_location=device)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"cannot load {what} model {p} as TorchScript: "
                         f"{str(e).splitlines()[0] if str(e) else e}") from e
    return module.eval()


def load_depth_model(path: str, device: str = "cpu", input_size: int = 0, multiple: int = 1):
    """A Hugging Face folder or a TorchScript file, chosen by what ``path`` is."""
    p = Path(path)
    if p.is_dir():
        return HFDepth(path, device)
    if not p.exists():
        raise InputError(f"depth model not found: {p}")
    return TorchScriptDepth(path, device, input_size, multiple)
