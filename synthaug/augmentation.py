"""Classic augmentation of classifier inputs (random resized crop, optional horizontal flip, colour jitter), drawn
per image from a seeded generator: the baseline every synthetic method in the benchmark has to beat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, g: torch.Generator, flip: bool) -> torch.Tensor:
    """Classic augmentation, drawn per image: random resized crop (area 0.6-1, aspect 3/4-4/3),
    optional horizontal flip, and brightness / contrast / saturation jitter of +-20%. ``x`` in [0, 1].

    What torchvision's v2 ``RandomResizedCrop``, ``RandomHorizontalFlip`` and ``ColorJitter`` do, but for a
    whole batch at once on its device (one ``grid_sample``), drawn from the run's own generator so a seed
    gives the same augmentations on any machine; torchvision's per-image transforms draw from the global
    RNG, one image at a time."""
    b, c = x.shape[:2]
    dev = x.device

    def uniform(lo, hi, shape=(b,)):
        return lo + (hi - lo) * torch.rand(shape, generator=g, device=dev)

    area, log_ratio = uniform(0.6, 1.0), uniform(math.log(3 / 4), math.log(4 / 3))
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    tx, ty = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
    sign = torch.where(torch.rand(b, generator=g, device=dev) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * sign, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = x * uniform(0.8, 1.2).view(b, 1, 1, 1)  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * uniform(0.8, 1.2).view(b, 1, 1, 1)  # contrast
    if c == 3:
        gray = x.mean(dim=1, keepdim=True)
        x = gray + (x - gray) * uniform(0.8, 1.2).view(b, 1, 1, 1)  # saturation
    return x.clamp(0, 1)
