"""Classic augmentation of classifier inputs (random resized crop, optional horizontal flip, colour jitter): the
baseline every synthetic method in the benchmark has to beat.

The operations are torchvision's (``transforms.v2``: ``RandomResizedCrop``, ``RandomHorizontalFlip``, ``ColorJitter``)
with their functionals' formulas, checked against ``torchvision.transforms.v2.functional`` in the tests. They are
applied to a whole batch at once on its device, with parameters drawn per image from the run's own generator:
torchvision's transforms draw from the global RNG, and its functionals take one set of parameters for a whole batch,
so per-image parameters would mean a call per image (about 12x slower on a batch of 64 digits on one CPU thread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class AugmentParams:
    """One image's augmentation per row: the crop box in pixels, the flip, and the colour jitter factors."""

    top: torch.Tensor  # (B,) int
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    flip: torch.Tensor  # (B,) bool
    brightness: torch.Tensor  # (B,) factors in [0.8, 1.2]
    contrast: torch.Tensor
    saturation: torch.Tensor


def draw_params(batch: int, height: int, width: int, g: torch.Generator, flip: bool) -> AugmentParams:
    """Per image: a crop of 60-100% of the area with aspect 3/4-4/3 (clamped to the image), placed uniformly;
    a horizontal flip with probability 1/2 when ``flip``; brightness, contrast and saturation factors in 0.8-1.2."""
    dev = g.device

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(batch, generator=g, device=dev)

    area, log_ratio = uniform(0.6, 1.0), uniform(math.log(3 / 4), math.log(4 / 3))
    w = ((area * log_ratio.exp()).sqrt() * width).round().clamp(1, width).long()
    h = ((area / log_ratio.exp()).sqrt() * height).round().clamp(1, height).long()
    left = (uniform(0, 1) * (width - w + 1)).floor().clamp(max=width - w).long()
    top = (uniform(0, 1) * (height - h + 1)).floor().clamp(max=height - h).long()
    flips = torch.rand(batch, generator=g, device=dev) < 0.5 if flip else torch.zeros(batch, dtype=torch.bool, device=dev)
    return AugmentParams(top, left, h, w, flips, uniform(0.8, 1.2), uniform(0.8, 1.2), uniform(0.8, 1.2))


def gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luminance as torchvision computes it (a one-channel image is its own)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def apply_params(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """``x`` (B, C, H, W) in [0, 1] with each image's crop (resized back to H x W, bilinear), flip and jitter, as
    ``resized_crop``, ``horizontal_flip``, ``adjust_brightness``, ``adjust_contrast`` and ``adjust_saturation`` do
    (each clamps to [0, 1], as torchvision does); one ``grid_sample`` for the batch."""
    b, c, height, width = x.shape
    dev = x.device
    # output pixel j samples the crop at left + (j + 0.5) * w / W - 0.5 (bilinear, half-pixel centres), as resizing
    # the crop does; in grid_sample's normalised coordinates of the whole image:
    scale_x, scale_y = p.width.float() / width, p.height.float() / height
    centre_x = (2 * p.left.float() + p.width.float()) / width - 1
    centre_y = (2 * p.top.float() + p.height.float()) / height - 1
    sign = torch.where(p.flip, -1.0, 1.0).to(dev)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = scale_x * sign, centre_x, scale_y, centre_y
    grid = F.affine_grid(theta, [b, c, height, width], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def factor(v: torch.Tensor) -> torch.Tensor:
        return v.view(b, 1, 1, 1)

    x = (x * factor(p.brightness)).clamp(0, 1)
    mean = gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (factor(p.contrast) * x + (1 - factor(p.contrast)) * mean).clamp(0, 1)
    if c == 3:
        x = (factor(p.saturation) * x + (1 - factor(p.saturation)) * gray(x)).clamp(0, 1)
    return x


def augment(x: torch.Tensor, g: torch.Generator, flip: bool) -> torch.Tensor:
    """Classic augmentation of ``x`` (B, C, H, W) in [0, 1], drawn per image from ``g`` (:func:`draw_params`), so a
    seed gives the same augmentations on any machine."""
    return apply_params(x, draw_params(x.shape[0], x.shape[2], x.shape[3], g, flip))
