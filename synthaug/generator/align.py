"""Representation alignment (REPA, Yu et al., ICLR 2025): a pretrained prior for a generator trained from scratch.

A frozen ImageNet encoder (a timm model with offline weights, :mod:`synthaug.weights.timm_imagenet`) sees each clean
training image once; its last stage's feature map, pooled to ``grid`` x ``grid`` tokens, is cached on disk. While the
denoiser trains, its bottleneck (the U-Net's mid block), pooled to the same tokens and passed through a small
projector, is pulled toward those tokens by ``1 - cosine similarity``, weighted by ``generator.align_weight`` and
added to the diffusion loss. The projector trains with the denoiser and is left out of the saved weights, so sampling
is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthaug import progress

log = logging.getLogger(__name__)

ENCODE_CHUNK = 64  # images per encoder call
COMPUTED = {"feature_sets": 0}  # feature sets this process computed (not read from the cache): tests count them


class Projector(nn.Module):
    """The denoiser's features (B, C, g, g) -> (B, D, g, g): a per-token MLP (1x1 convolutions), as in REPA."""

    def __init__(self, channels: int, dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
                                 nn.Conv2d(hidden, dim, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def alignment_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over images and tokens of ``1 - cos(projected, target)`` (both (B, D, g, g)): 0 when every projected
    token points the way its encoder token does, 2 when opposite.

    >>> t = torch.randn(2, 8, 3, 3)
    >>> float(alignment_loss(3 * t, t)) < 1e-6
    True
    """
    return (1 - F.cosine_similarity(projected.float(), target.float(), dim=1)).mean()


def token_grid(resolution: int, levels: int, grid: int) -> int:
    """Tokens per side: ``grid``, or the U-Net bottleneck's side where that is smaller."""
    return max(1, min(grid, resolution // 2 ** (levels - 1)))


class AlignmentTarget:
    """The frozen encoder of ``generator.align_encoder``: its name, token grid and feature size, and the cached
    features of a training set.

    Built before a run folder is touched (:func:`synthaug.generator.train.build_training`), so a missing weights
    package is one sentence naming the package, and nothing is written. ``levels``: the U-Net's resolution levels
    (its bottleneck is ``resolution / 2 ** (levels - 1)`` on a side).
    """

    def __init__(self, g_cfg, schema, levels: int):
        from synthaug.weights.timm_imagenet import create_classifier, weights_provenance

        self.name, self.pretrained, self.resolution = g_cfg.align_encoder, g_cfg.align_pretrained, g_cfg.align_resolution
        self.encoder = create_classifier(self.name, num_classes=0, in_chans=schema.channels, pretrained=self.pretrained).eval()
        self.weights = weights_provenance(self.name, self.pretrained)
        self.grid = token_grid(schema.resolution, levels, g_cfg.align_grid)
        with torch.no_grad():
            self.dim = self.encode(torch.zeros(1, schema.channels, schema.resolution, schema.resolution, dtype=torch.uint8)).shape[1]

    def describe(self) -> dict:
        """What run.json records about the prior."""
        return {"encoder": self.name, "pretrained": self.pretrained, "weights": self.weights, "input_resolution":
                self.resolution, "tokens": [self.grid, self.grid], "dim": self.dim}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> (B, D, g, g) float32: the encoder's last stage at ``resolution`` px, pooled."""
        from synthaug.weights.timm_imagenet import input_normalization

        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in input_normalization(self.encoder))
        x = images.float().cpu() / 255.0
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        (last,) = self.encoder.forward_intermediates((x - mean) / std, indices=1, intermediates_only=True)
        return F.adaptive_avg_pool2d(last.float(), self.grid)

    def cache_key(self, pixels_sha256: str, views: int) -> str:
        import timm

        identity = {"encoder": self.name, "weights": self.weights.get("sha256") or self.weights, "resolution":
                    self.resolution, "grid": self.grid, "images": pixels_sha256, "views": views, "timm": timm.__version__}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def features(self, images: np.ndarray, pixels_sha256: str, flip: bool) -> torch.Tensor:
        """(V, N, D, g, g) float16 features of every training image (V = 2 with flips: the mirror images' second),
        computed once and kept under ``cache_root()/align-features`` with a sha256 record (a damaged file is computed
        again)."""
        from safetensors.torch import load, save

        from synthaug.cache import cache_root, usable_cache_file, write_cache_file

        views = 2 if flip else 1
        path = cache_root() / "align-features" / f"{self.cache_key(pixels_sha256, views)}.safetensors"
        if (usable := usable_cache_file(path)) is not None:
            try:
                cached = load(usable.read_bytes())["features"]
                if cached.shape[:2] == (views, len(images)):
                    log.info("Read the %s features of %d training images from %s.", self.name, len(images), usable)
                    return cached
            except (OSError, ValueError, KeyError, RuntimeError):
                pass
        from synthaug.images import as_tensor, chunks_of

        out = torch.empty((views, len(images), self.dim, self.grid, self.grid), dtype=torch.float16)
        start = 0
        with progress.task(f"encoding {len(images)} training images with {self.name}", total=len(images)) as bar:
            for chunk in chunks_of(images, ENCODE_CHUNK):
                x = as_tensor(chunk).permute(0, 3, 1, 2)
                for v, view in enumerate((x, x.flip(3))[:views]):
                    out[v, start : start + len(x)] = self.encode(view).half()
                start += len(x)
                bar.advance(len(x))
        COMPUTED["feature_sets"] += 1
        write_cache_file(path, save({"features": out.contiguous()}))
        return out

