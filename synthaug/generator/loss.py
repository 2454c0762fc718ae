"""The diffusion training loss: epsilon or v targets, MSE or L1, optional Min-SNR-gamma weighting."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from synthaug.errors import SynthaugError
from synthaug.recipe import LOSSES, PREDICTIONS  # declared once, with the recipe keys


@dataclass(frozen=True)
class DiffusionLoss:
    """``loss(output, x0, noise, alphas_cumprod_t) -> scalar``, averaged over pixels and the batch.

    Min-SNR-gamma (Hang et al. 2023) weights each sample by min(SNR, gamma) / SNR for epsilon
    targets and min(SNR, gamma) / (SNR + 1) for v targets; ``min_snr_gamma=0`` weights all equally.
    """

    prediction: str = "epsilon"
    kind: str = "mse"
    min_snr_gamma: float = 5.0

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise SynthaugError(f"generator.prediction {self.prediction!r} is not known; use epsilon or v.")
        if self.kind not in LOSSES:
            raise SynthaugError(f"generator.loss {self.kind!r} is not known; use mse or l1.")
        if self.min_snr_gamma < 0:
            raise SynthaugError("generator.min_snr_gamma must be 0 (off) or positive.")

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        if self.prediction == "epsilon":
            return noise
        a = alpha_bar.sqrt().view(-1, 1, 1, 1)
        s = (1 - alpha_bar).sqrt().view(-1, 1, 1, 1)
        return a * noise - s * x0  # v = sqrt(a_bar) eps - sqrt(1 - a_bar) x0

    def weights(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        if not self.min_snr_gamma:
            return torch.ones_like(alpha_bar)
        snr = alpha_bar / (1 - alpha_bar)
        clipped = snr.clamp(max=self.min_snr_gamma)
        return clipped / (snr + 1) if self.prediction == "v" else clipped / snr

    def __call__(self, output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        error = output.float() - self.target(x0, noise, alpha_bar)
        per_sample = (error.abs() if self.kind == "l1" else error.square()).mean(dim=(1, 2, 3))
        return (per_sample * self.weights(alpha_bar)).mean()
