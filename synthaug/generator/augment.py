"""Training-time tricks from EDM and EDM2 that change what the network sees, not the network:

- non-leaky augmentation (Karras et al. 2022, "Elucidating the design space...", appendix C.4; the trick
  comes from StyleGAN2-ADA): each training image is flipped, rotated by quarter turns and shifted by whole
  pixels, each with probability ``generator.augment``, and the network is told which (a condition vector
  through a bias-free linear layer added to the timestep embedding). Sampling passes no augmentation, the
  zero vector, whose contribution is exactly zero, so the augmentations do not leak into the samples and the
  saved U-Net alone is the sampler's network;
- EDM's log-normal noise levels (``generator.noise_sampling = "lognormal"``), mapped onto the nearest step of
  the recipe's discrete schedule;
- EDM2's power-function EMA (Karras et al. 2024, "Analyzing and improving the training dynamics..."), whose
  averaging window is a fixed share (``generator.ema_std``, the relative standard deviation) of the run so
  far, for runs of any length.
"""

from __future__ import annotations

import math

import torch

#: the augmentation condition: x-flip, y-flip, sin and cos - 1 of the quarter-turn angle, x and y shift
#: as a share of the largest shift; all zero for an image left as it is
AUGMENT_DIM = 6
MAX_SHIFT = 1 / 8  # integer shifts up to an eighth of the image side, as in EDM's translate_int


def draw_augmentations(n: int, probability: float, size: int, generator: torch.Generator, device) -> torch.Tensor:
    """(n, 4) integer parameters [flips (bit 0: x, bit 1: y), quarter turns, x shift, y shift] for a global
    batch of ``size``-pixel images, each of the five transforms applied with ``probability``."""
    u = torch.rand(n, 5, generator=generator, device=device) < probability
    turns = torch.randint(1, 4, (n,), generator=generator, device=device) * u[:, 2]
    m = max(1, int(size * MAX_SHIFT))
    shift = torch.randint(-m, m + 1, (n, 2), generator=generator, device=device) * u[:, 3:5]
    return torch.stack([u[:, 0].long() + 2 * u[:, 1].long(), turns, shift[:, 0], shift[:, 1]], dim=1)


def apply_augmentations(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``x`` (B, C, H, H) transformed by ``params`` (from :func:`draw_augmentations`) and their
    (B, AUGMENT_DIM) condition vectors. Shifts pad by reflection, so no empty border appears."""
    b, _, h, w = x.shape
    xflip, yflip = (params[:, 0] & 1).bool(), (params[:, 0] & 2).bool()
    x = torch.where(xflip[:, None, None, None], x.flip(3), x)
    x = torch.where(yflip[:, None, None, None], x.flip(2), x)
    turns = params[:, 1]
    for k in (1, 2, 3):
        x = torch.where((turns == k)[:, None, None, None], torch.rot90(x, k, dims=(2, 3)), x)
    m = max(1, int(h * MAX_SHIFT))
    dx, dy = params[:, 2], params[:, 3]
    if bool((dx != 0).any() or (dy != 0).any()):
        padded = torch.nn.functional.pad(x, (m, m, m, m), mode="reflect")
        rows = (torch.arange(h, device=x.device)[None] + m - dy[:, None])  # (B, H)
        cols = (torch.arange(w, device=x.device)[None] + m - dx[:, None])  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    angle = turns.to(torch.float32) * (math.pi / 2)
    labels = torch.stack([xflip.float(), yflip.float(), torch.sin(angle), torch.cos(angle) - 1,
                          dx.float() / m, dy.float() / m], dim=1)
    return x.contiguous(), labels


def lognormal_timesteps(n: int, alphas_cumprod: torch.Tensor, mean: float, std: float, generator: torch.Generator,
                        device) -> torch.Tensor:
    """Timesteps whose noise levels sigma = sqrt((1 - a) / a) follow EDM's log-normal (ln sigma ~ N(mean, std)),
    each mapped to the schedule step with the nearest ln sigma."""
    log_sigmas = 0.5 * (torch.log1p(-alphas_cumprod) - torch.log(alphas_cumprod)).to(device)  # increasing in t
    z = torch.randn(n, generator=generator, device=device) * std + mean
    i = torch.searchsorted(log_sigmas, z).clamp(1, len(log_sigmas) - 1)
    nearer_below = (z - log_sigmas[i - 1]) < (log_sigmas[i] - z)
    return torch.where(nearer_below, i - 1, i)


def power_ema_gamma(std: float) -> float:
    """EDM2's exponent gamma for a relative standard deviation ``std`` (the root of
    std^2 = (g + 1) / ((g + 2)^2 (g + 3)), which decreases in g >= 0), by bisection; std <= 0.2887 (g = 0)."""
    def rel_std(g):
        return math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))

    lo, hi = 0.0, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rel_std(mid) > std else (lo, mid)
    return (lo + hi) / 2


def power_ema(ema_class, gamma: float):
    """A subclass of diffusers' ``EMAModel`` (passed in, as the caller imported it) whose decay at
    optimization step t is EDM2's (1 - 1/t) ** (gamma + 1)."""

    class PowerEMA(ema_class):
        def get_decay(self, optimization_step: int) -> float:
            t = max(int(optimization_step), 1)
            return float((1 - 1 / t) ** (gamma + 1))

    return PowerEMA

