"""Classic augmentation: torchvision's operations, applied to a batch at once with per-image seeded parameters."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from synthaug.augmentation import apply_params, draw_params


@pytest.mark.parametrize("channels", [3, 1])
def test_the_batched_augmentation_equals_torchvisions_functionals_image_by_image(channels):
    x = torch.rand(32, channels, 24, 24, generator=torch.Generator().manual_seed(0))
    p = draw_params(32, 24, 24, torch.Generator().manual_seed(1), flip=True)
    got = apply_params(x, p)
    for i in range(32):
        img = TF.resized_crop(x[i], int(p.top[i]), int(p.left[i]), int(p.height[i]), int(p.width[i]), [24, 24],
                              antialias=True)
        if p.flip[i]:
            img = TF.horizontal_flip(img)
        img = TF.adjust_brightness(img, float(p.brightness[i]))
        img = TF.adjust_contrast(img, float(p.contrast[i]))
        if channels == 3:
            img = TF.adjust_saturation(img, float(p.saturation[i]))
        # the crop's outermost output pixels sample half a pixel outside it: torchvision clamps there to the crop's
        # edge, the batched grid to the image's, so they may differ (and move the contrast's mean a little);
        # everything inside agrees
        inner = (got[i] - img)[:, 1:-1, 1:-1].abs()
        assert inner.max() < 2e-3, (i, inner.max())
        assert (got[i] - img).abs().mean() < 0.02


def test_crops_are_torchvisions_random_resized_crop_ranges():
    p = draw_params(4000, 32, 32, torch.Generator().manual_seed(0), flip=False)
    area = (p.height * p.width).float() / 32**2
    assert area.min() > 0.5 and area.max() <= 1 and 0.75 < area.mean() < 0.85
    assert (p.top >= 0).all() and (p.left >= 0).all() and (p.top + p.height <= 32).all() and (p.left + p.width <= 32).all()
    assert not p.flip.any()
    for f in (p.brightness, p.contrast, p.saturation):
        assert f.min() >= 0.8 and f.max() <= 1.2
