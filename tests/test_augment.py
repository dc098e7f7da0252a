"""Student-only augmentations: grayscale, patch mixing, random erasing."""

import pytest
import torch
import torch.nn.functional as F

from vclr_d2.modeling.augment import StudentAugmentation


def test_grayscale_gives_equal_channels_with_bt601_weights():
    aug = StudentAugmentation(grayscale_prob=1.0, input_format="BGR")
    x = torch.zeros(3, 2, 2)
    x[2] = 100.0  # pure red in BGR
    (y,) = aug.grayscale([x])
    assert torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])
    assert y[0, 0, 0].item() == pytest.approx(29.9)


def test_grayscale_is_decided_once_per_batch():
    aug = StudentAugmentation(grayscale_prob=0.5)
    torch.manual_seed(3)
    outcomes = set()
    for _ in range(50):
        batch = aug.grayscale([torch.rand(3, 4, 4) for _ in range(4)])
        gray = [torch.equal(b[0], b[1]) for b in batch]
        assert len(set(gray)) == 1
        outcomes.add(gray[0])
    assert outcomes == {True, False}


def test_patch_mix_is_a_blend_with_an_upsampled_eighth_size_patch():
    aug = StudentAugmentation(patch_mix_prob=1.0, patch_mix_lambda_low=0.5)
    torch.manual_seed(0)
    x = torch.rand(3, 32, 32)
    y = aug.patch_mix(x)
    # search every 4x4 patch position for the one explaining y = lam x + (1 - lam) up(patch)
    patches = x.unfold(1, 4, 1).unfold(2, 4, 1)  # (3, 29, 29, 4, 4)
    patches = patches.permute(1, 2, 0, 3, 4).reshape(-1, 3, 4, 4)
    up = F.interpolate(patches, size=(32, 32), mode="bilinear", align_corners=False)
    a, b = (x - up).flatten(1), (y - up).flatten(1)  # y - up = lam (x - up)
    lam = (a * b).sum(1) / (a * a).sum(1)
    residual = (b - lam[:, None] * a).abs().max(1).values
    best = residual.argmin()
    assert residual[best] < 1e-5
    assert 0.5 <= lam[best] <= 1.0


def test_random_erasing_zeroes_one_rectangle_of_the_configured_area():
    aug = StudentAugmentation(patch_mix_prob=0.0, erase_prob=1.0)
    x = torch.ones(3, 100, 100)
    for _ in range(20):
        y = aug.per_image(x)
        zero = (y == 0).all(0)
        area = zero.float().mean().item()
        assert 0.02 - 0.01 <= area <= 1 / 3 + 0.01
        rows, cols = zero.any(1).nonzero()[:, 0], zero.any(0).nonzero()[:, 0]
        assert zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        h, w = len(rows), len(cols)
        assert 0.3 * 0.8 <= h / w <= 0.7 * 1.25


@pytest.mark.parametrize("key,value", [("patch_mix_prob", 1.5), ("grayscale_prob", -0.1)])
def test_wrong_probabilities_are_named(key, value):
    with pytest.raises(ValueError, match=f"={value}"):
        StudentAugmentation(**{key: value})
