"""Feature sources of the object discoverer: patch features (h, w, C) of a batch of images.

- ``TimmFeatures``: a frozen timm model from a LOCAL checkpoint (nothing is downloaded), e.g.
  a DINO ViT-S/8 (``vit_small_patch8_224.dino``) or ViT-B/8. Vision transformers give the keys
  of their last attention block (what MaskCut uses) or their output patch tokens; other models
  (CNNs) give the map of ``forward_features``. Images are resized to a square
  ``input_size`` and normalised with the model's mean and std; batches run on ``device``.
- ``PixelFeatures``: no model. Each patch is described by its soft colour histogram (CIE Lab,
  ``bins`` per channel, Gaussian soft assignment): two patches are similar when they hold the
  same colours. On an image's depth view this separates objects by depth; on natural images it
  is a weak, texture-blind discoverer. Deterministic, cheap, used by the tests.

Every source may read another image than the natural one: ``view_dir`` holds an image of the
same file stem (``view_ext`` its extension, default the natural image's), e.g. the depth view.
``build_feature_source`` parses the command-line spec of a source.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch

__all__ = ["FeatureSource", "PixelFeatures", "TimmFeatures", "build_feature_source"]


class FeatureSource:
    """Base class: ``__call__(images)`` maps RGB uint8 images (H, W, 3) to patch features.

    Attributes:
        name: a readable name (shown in logs and written to the output file's ``info``).
        view_dir, view_ext: where the image this source reads lives (None: the natural image).
        default_tau: the affinity threshold used with this source unless one is given.
    """

    name = "source"
    default_tau = 0.2

    def __init__(self, view_dir: str | None = None, view_ext: str | None = None):
        self.view_dir = view_dir
        self.view_ext = view_ext

    def image_path(self, natural_path: str) -> str:
        """The file this source reads for the natural image ``natural_path``."""
        if not self.view_dir:
            return natural_path
        stem, ext = os.path.splitext(os.path.basename(natural_path))
        return os.path.join(self.view_dir, stem + (self.view_ext or ext))

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(h, w, C) float32 features of each image (a list: grids may differ in size)."""
        raise NotImplementedError

    def describe(self) -> str:
        return self.name + (f"@{self.view_dir}" if self.view_dir else "")


class PixelFeatures(FeatureSource):
    """Soft CIE-Lab colour histograms of ``patch_size`` x ``patch_size`` patches.

    Args:
        patch_size: side of a patch in pixels of the (resized) image.
        input_size: the image is first resized to a square of this side (None: kept, cropped
            to a multiple of ``patch_size``).
        bins: histogram bins per Lab channel (``bins ** 3`` features).
        sigma: width of the Gaussian soft assignment, in bin widths.

    Its default affinity threshold is 0.9 (histograms of different colours still have cosine
    similarities of 0.2-0.7; measured on the synthetic set, docs/discovery.md).
    """

    name = "pixels"
    default_tau = 0.9

    def __init__(self, patch_size: int = 8, input_size: int | None = None, bins: int = 8,
                 sigma: float = 1.0, view_dir: str | None = None, view_ext: str | None = None):
        super().__init__(view_dir, view_ext)
        for key, value in (("patch_size", patch_size), ("bins", bins)):
            if value < 1:
                raise ValueError(f"PixelFeatures: {key} must be >= 1, got {value}")
        if input_size is not None and input_size < patch_size:
            raise ValueError(f"PixelFeatures: input_size {input_size} is smaller than "
                             f"patch_size {patch_size}")
        if sigma <= 0:
            raise ValueError(f"PixelFeatures: sigma must be > 0, got {sigma}")
        self.patch_size, self.input_size, self.bins, self.sigma = (
            patch_size, input_size, bins, sigma)
        self.centres = (np.arange(bins, dtype=np.float32) + 0.5) / bins

    def _one(self, image: np.ndarray) -> np.ndarray:
        p = self.patch_size
        if self.input_size:
            image = cv2.resize(image, (self.input_size, self.input_size),
                               interpolation=cv2.INTER_AREA)
        h, w = image.shape[0] // p, image.shape[1] // p
        if h == 0 or w == 0:
            raise ValueError(f"PixelFeatures: image of shape {image.shape} is smaller than one "
                             f"{p} x {p} patch")
        lab = cv2.cvtColor(image[: h * p, : w * p].astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        unit = (lab + np.array([0.0, 128.0, 128.0], np.float32)) / np.array(
            [100.0, 255.0, 255.0], np.float32)
        width = self.sigma / self.bins
        # (H, W, 3, bins) soft assignment of each channel, normalised over the bins
        g = np.exp(-0.5 * ((unit[..., None] - self.centres) / width) ** 2)
        g /= g.sum(axis=-1, keepdims=True)
        joint = (g[..., 0, :, None, None] * g[..., 1, None, :, None]
                 * g[..., 2, None, None, :]).reshape(h * p, w * p, -1)
        return joint.reshape(h, p, w, p, -1).mean(axis=(1, 3)).astype(np.float32)

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self._one(np.asarray(im)) for im in images]


def _vit_like(model: torch.nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "blocks")


class TimmFeatures(FeatureSource):
    """Patch features of a frozen timm model loaded from a local checkpoint.

    Args:
        model_name: any timm model name, with its pretrained tag when the checkpoint needs one
            (e.g. ``vit_small_patch8_224.dino`` for DINO's mean/std).
        checkpoint: local weights file (``.pth``, ``.bin``, ``.safetensors``); timm's own
            loader reads it (classifier dropped, position embeddings resized).
        input_size: images are resized to ``input_size`` x ``input_size`` (MaskCut: 480).
        feature: "keys" (last attention block's keys, ViT only) or "tokens" (output patch
            tokens); CNNs always give their ``forward_features`` map.
        device: "cpu", "cuda", ...
        model_kwargs: extra arguments of ``timm.create_model`` (e.g. a small depth in tests).

    Its default affinity threshold is MaskCut's 0.2 (for DINO keys).
    """

    def __init__(self, model_name: str, checkpoint: str, input_size: int = 480,
                 feature: str = "keys", device: str = "cpu", model_kwargs: dict | None = None,
                 view_dir: str | None = None, view_ext: str | None = None):
        import timm

        super().__init__(view_dir, view_ext)
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"timm checkpoint of {model_name} not found: {checkpoint}")
        if feature not in ("keys", "tokens"):
            raise ValueError(f"TimmFeatures: feature must be 'keys' or 'tokens', got {feature!r}")
        try:
            model = timm.create_model(
                model_name, pretrained=True, num_classes=0,
                pretrained_cfg_overlay={"file": os.path.abspath(checkpoint)},
                **(model_kwargs or {}))
        except RuntimeError as e:  # torch's load_state_dict mismatch
            raise ValueError(f"{checkpoint} does not fit timm model {model_name}: {e}") from e
        self.vit = _vit_like(model)
        if self.vit:
            model.set_input_size(img_size=(input_size, input_size))
        elif feature == "keys":
            feature = "tokens"  # a CNN has no attention keys: its feature map
        self.model = model.eval().to(device).requires_grad_(False)
        self.name = f"timm:{model_name}"
        self.input_size, self.feature, self.device = input_size, feature, device
        cfg = timm.data.resolve_data_config({}, model=model)
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1) * 255
        self._keys: torch.Tensor | None = None
        if self.feature == "keys":
            self.model.blocks[-1].attn.qkv.register_forward_hook(self._keep_keys)

    def _keep_keys(self, module, inputs, output) -> None:
        c = output.shape[-1] // 3
        self._keys = output[..., c: 2 * c]

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        s = self.input_size
        batch = np.stack([cv2.resize(np.asarray(im), (s, s), interpolation=cv2.INTER_LINEAR)
                          for im in images])
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        out = self.model.forward_features(x)
        if self.vit:
            if self.feature == "keys":
                out = self._keys
            h, w = self.model.patch_embed.grid_size
            out = out[:, self.model.num_prefix_tokens:].reshape(len(images), h, w, -1)
        else:
            out = out.permute(0, 2, 3, 1)
        return list(out.float().cpu().numpy())


def build_feature_source(spec: str, *, input_size: int = 480, pixel_patch: int = 8,
                         pixel_bins: int = 8, feature: str = "keys", device: str = "cpu",
                         view_ext: str | None = None) -> FeatureSource:
    """A source from its command-line spec, ``SOURCE[@VIEW_DIR]`` with SOURCE one of:

    - ``pixels``: ``PixelFeatures(pixel_patch, input_size, pixel_bins)``;
    - ``timm:MODEL=CHECKPOINT``: ``TimmFeatures(MODEL, CHECKPOINT, input_size, feature,
      device)``.

    ``@VIEW_DIR`` makes the source read the image of the same stem from VIEW_DIR.
    """
    source, _, view_dir = spec.partition("@")
    view_dir = view_dir or None
    if source == "pixels":
        return PixelFeatures(pixel_patch, input_size, pixel_bins, view_dir=view_dir,
                             view_ext=view_ext)
    kind, _, rest = source.partition(":")
    model_name, sep, checkpoint = rest.partition("=")
    if kind == "timm" and model_name and sep and checkpoint:
        return TimmFeatures(model_name, checkpoint, input_size, feature, device,
                            view_dir=view_dir, view_ext=view_ext)
    raise ValueError(f"feature source {spec!r}: use 'pixels[@VIEW_DIR]' or "
                     "'timm:MODEL=CHECKPOINT[@VIEW_DIR]'")
