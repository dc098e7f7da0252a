"""Student-only image augmentations of v-CLR, applied inside the model.

The teacher sees the natural image untouched; the student's view additionally gets per-batch
grayscale (on raw pixels), then, per image and after normalisation, patch mixing and random
erasing. Geometry never changes, so student and teacher locations stay aligned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torchvision.transforms import RandomErasing

__all__ = ["StudentAugmentation"]

# ITU-R BT.601 luma weights, in RGB order.
_LUMA_RGB = (0.299, 0.587, 0.114)


class StudentAugmentation:
    """Patch mixing, random erasing and per-batch grayscale for the student branch."""

    @configurable
    def __init__(
        self,
        *,
        patch_mix_prob: float = 1.0,
        patch_mix_lambda_low: float = 0.5,
        patch_mix_divisor: int = 8,
        erase_prob: float = 0.5,
        erase_scale: tuple[float, float] = (0.02, 1 / 3),
        erase_ratio: tuple[float, float] = (0.3, 0.7),
        grayscale_prob: float = 0.5,
        input_format: str = "BGR",
    ):
        """
        Args:
            patch_mix_prob: probability that an image gets
                ``x <- lam * x + (1 - lam) * up(patch)``, ``lam ~ U[patch_mix_lambda_low, 1]``.
            patch_mix_divisor: the random patch is (h / divisor, w / divisor), upsampled to
                (h, w).
            erase_prob, erase_scale, erase_ratio: torchvision ``RandomErasing`` with fill 0
                (on the normalised image); the aspect ratio is drawn log-uniformly.
            grayscale_prob: probability that the whole batch is turned to grayscale.
            input_format: channel order of the raw images, "BGR" or "RGB".
        """
        for name, p in (("PATCH_MIX_PROB", patch_mix_prob), ("RANDOM_ERASE_PROB", erase_prob),
                        ("GRAYSCALE_PROB", grayscale_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"MODEL.VCLR.{name}={p}: a probability must be in [0, 1]")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT={input_format!r}: v-CLR supports BGR or RGB")
        self.patch_mix_prob = patch_mix_prob
        self.patch_mix_lambda_low = patch_mix_lambda_low
        self.patch_mix_divisor = patch_mix_divisor
        self.grayscale_prob = grayscale_prob
        self.luma = _LUMA_RGB if input_format == "RGB" else _LUMA_RGB[::-1]
        self.erase = RandomErasing(
            p=erase_prob, scale=tuple(erase_scale), ratio=tuple(erase_ratio), value=0
        )

    @classmethod
    def from_config(cls, cfg) -> dict:
        v = cfg.MODEL.VCLR
        return {
            "patch_mix_prob": v.PATCH_MIX_PROB,
            "patch_mix_lambda_low": v.PATCH_MIX_LAMBDA_LOW,
            "erase_prob": v.RANDOM_ERASE_PROB,
            "erase_scale": tuple(v.RANDOM_ERASE_SCALE),
            "erase_ratio": tuple(v.RANDOM_ERASE_RATIO),
            "grayscale_prob": v.GRAYSCALE_PROB,
            "input_format": cfg.INPUT.FORMAT,
        }

    def grayscale(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """With probability ``grayscale_prob``, all (3, H, W) raw images -> 3-channel luma."""
        if self.grayscale_prob == 0 or torch.rand(()) >= self.grayscale_prob:
            return images
        out = []
        for x in images:
            w = x.new_tensor(self.luma).view(3, 1, 1)
            out.append((x * w).sum(0, keepdim=True).expand_as(x).contiguous())
        return out

    def patch_mix(self, x: torch.Tensor) -> torch.Tensor:
        """Blend a (3, H, W) image with an upsampled random patch of itself."""
        if self.patch_mix_prob == 0 or torch.rand(()) >= self.patch_mix_prob:
            return x
        h, w = x.shape[-2:]
        ph, pw = max(h // self.patch_mix_divisor, 1), max(w // self.patch_mix_divisor, 1)
        y0 = int(torch.randint(0, h - ph + 1, ()))
        x0 = int(torch.randint(0, w - pw + 1, ()))
        patch = x[None, :, y0:y0 + ph, x0:x0 + pw]
        up = F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False)[0]
        lam = float(torch.empty(()).uniform_(self.patch_mix_lambda_low, 1.0))
        return lam * x + (1 - lam) * up

    def per_image(self, x: torch.Tensor) -> torch.Tensor:
        """Patch mixing then random erasing of one normalised (3, H, W) image."""
        return self.erase(self.patch_mix(x))
