"""The conditional denoiser: a diffusers ``UNet2DModel`` whose condition embedding is added to the
timestep embedding and applied through scale-shift GroupNorm (AdaGN), plus a null condition for
classifier-free guidance.

Class conditions use the U-Net's own class-embedding table (row ``num_classes`` is the null class),
so plain diffusers can load and condition the saved U-Net. Attribute conditions add one embedding
per attribute level (each attribute has its own null level), summed and fed to the U-Net through
``class_embed_type="identity"``; that table is a small diffusers model of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from synthaug.errors import SynthaugError
from synthaug.conditions import ConditionSchema


@dataclass(frozen=True)
class Preset:
    channel_mult: tuple[int, ...]
    base_channels: int
    layers_per_block: int
    attention_levels: tuple[int, ...]  # which resolution levels (0 = full) carry self-attention


PRESETS = {
    # CPU and tests: two levels, attention only at the lowest.
    "tiny": Preset(channel_mult=(1, 2), base_channels=32, layers_per_block=1, attention_levels=(1,)),
    # One GPU at 32-64 px: the DDPM CIFAR-10 U-Net shape, attention at the second level.
    "small": Preset(channel_mult=(1, 2, 2, 2), base_channels=128, layers_per_block=2, attention_levels=(1,)),
    # The Imagen base 64x64 U-Net of the birds study: 128 x (1, 2, 4, 8), attention at the lowest level.
    "base": Preset(channel_mult=(1, 2, 4, 8), base_channels=128, layers_per_block=2, attention_levels=(3,)),
}


def unet_config(schema: ConditionSchema, preset: str, base_channels: int = 0, channel_mult: tuple[int, ...] = (),
                layers_per_block: int = 0, dropout: float = 0.0, attention_head_dim: int = 32) -> dict:
    """The ``UNet2DModel`` keyword arguments for a preset at the schema's resolution.

    ``base_channels``, ``channel_mult`` and ``layers_per_block`` override the preset when non-zero.
    """
    if preset not in PRESETS:
        raise SynthaugError(f"generator.preset {preset!r} is not known; use one of {', '.join(PRESETS)}.")
    p = PRESETS[preset]
    mult = tuple(channel_mult) or p.channel_mult
    base = base_channels or p.base_channels
    channels = tuple(base * m for m in mult)
    levels = len(channels)
    factor = 2 ** (levels - 1)
    if schema.resolution % factor or schema.resolution < factor:
        raise SynthaugError(
            f"Resolution {schema.resolution} cannot be halved {levels - 1} times by the {preset} U-Net; "
            f"use a multiple of {factor} (data.resolution) or fewer levels (generator.channel_mult)."
        )
    groups = min(32, channels[0] // 4) or 1
    if any(c % groups for c in channels):
        raise SynthaugError(f"U-Net channels {channels} are not divisible into {groups} norm groups; use multiples of {groups}.")
    attention = set(p.attention_levels) if not channel_mult else {levels - 1}
    down = tuple("AttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(levels)))
    config = dict(
        sample_size=schema.resolution,
        in_channels=schema.channels,
        out_channels=schema.channels,
        layers_per_block=layers_per_block or p.layers_per_block,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=groups,
        attention_head_dim=min(attention_head_dim, max(channels)),
        resnet_time_scale_shift="scale_shift",  # AdaGN: the (time + condition) embedding scales and shifts GroupNorm
        dropout=dropout,
    )
    if schema.kind == "class":
        config["num_class_embeds"] = schema.num_embeddings
    else:
        config["class_embed_type"] = "identity"
    return config


class AttributeEmbedding(ModelMixin, ConfigMixin):
    """Sum of one learned vector per (attribute, level); level ``levels[a]`` is attribute a's null."""

    @register_to_config
    def __init__(self, levels: tuple[int, ...] = (), dim: int = 128):
        super().__init__()
        sizes = [n + 1 for n in levels]
        self.table = nn.Embedding(sum(sizes), dim)
        offsets = torch.tensor([0] + sizes[:-1], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)

    def forward(self, levels: torch.Tensor) -> torch.Tensor:  # (B, A) -> (B, dim)
        return self.table(levels + self.offsets).sum(dim=1)


def scale_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float pixels in [-1, 1]: what a pixel-space backend denoises."""
    return images.float() / 127.5 - 1


class PixelSpace:
    """The part of the :class:`~synthaug.generator.backends.Backend` interface every pixel-space backend
    (a U-Net at ``self.unet``) shares: it denoises pixels, so encode scales them and decode is the identity."""

    encode_once = False  # scaling pixels costs nothing: each batch is scaled from the uint8 images as drawn

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the network denoises."""
        c = self.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return scale_pixels(images)

    def decode(self, x: torch.Tensor, network_batch: int) -> torch.Tensor:
        return x  # already pixels


class Denoiser(PixelSpace, nn.Module):
    """``forward(x_t, t, condition) -> model output`` for a class (B,) or attribute (B, A) condition, in pixel
    space (a :class:`~synthaug.generator.backends.Backend`)."""

    def __init__(self, unet: UNet2DModel, attributes: AttributeEmbedding | None = None, augment_dim: int = 0,
                 align_dim: int = 0):
        super().__init__()
        self.unet = unet
        self.attributes = attributes
        # non-leaky augmentation (training only): the augmentation's condition vector, through a bias-free linear
        # layer, is added to the timestep embedding; sampling passes none (the zero vector: exactly no change), so
        # the layer is not part of the saved weights
        self.augment = nn.Linear(augment_dim, unet.config.block_out_channels[0] * 4, bias=False) if augment_dim else None
        if self.augment is not None:
            nn.init.zeros_(self.augment.weight)
        # representation alignment (training only): the bottleneck's features through a projector
        # (synthaug.generator.align); like the augmentation layer, not part of the saved weights
        self.align = None
        if align_dim:
            from synthaug.generator.align import Projector

            self.align = Projector(unet.config.block_out_channels[-1], align_dim)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor,
                augment_labels: torch.Tensor | None = None, tokens: int = 0):
        """The network's output; with ``tokens`` > 0 (training with alignment) also the projected bottleneck
        features pooled to ``tokens`` x ``tokens``: ``(output, projected)``."""
        labels = condition if self.attributes is None else self.attributes(condition).to(sample.dtype)
        hooks, captured = [], []
        if augment_labels is not None and self.augment is not None:
            extra = self.augment(augment_labels.to(self.augment.weight.dtype))
            hooks.append(self.unet.time_embedding.register_forward_hook(lambda module, args, out: out + extra.to(out.dtype)))
        if tokens:
            if self.align is None:
                raise SynthaugError("This denoiser was built without an alignment projector (generator.align_encoder).")
            hooks.append(self.unet.mid_block.register_forward_hook(lambda module, args, out: captured.append(out)))
        try:
            out = self.unet(sample, timestep, class_labels=labels).sample
        finally:
            for hook in hooks:
                hook.remove()
        if not tokens:
            return out
        pooled = nn.functional.adaptive_avg_pool2d(captured[0], tokens)
        return out, self.align(pooled.to(next(self.align.parameters()).dtype))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def prompt(self, condition_value: tuple[int, ...]) -> str | None:
        return None

    def save_pretrained(self, folder: Path) -> None:
        """diffusers layout: ``unet/`` (and ``attribute_embedding/``), safetensors weights."""
        self.unet.save_pretrained(Path(folder) / "unet")
        if self.attributes is not None:
            self.attributes.save_pretrained(Path(folder) / "attribute_embedding")

    @classmethod
    def from_pretrained(cls, folder: Path) -> Denoiser:
        unet = UNet2DModel.from_pretrained(Path(folder) / "unet")
        attr_dir = Path(folder) / "attribute_embedding"
        attributes = AttributeEmbedding.from_pretrained(attr_dir) if attr_dir.exists() else None
        return cls(unet, attributes)


def build_denoiser(schema: ConditionSchema, preset: str = "tiny", augment_dim: int = 0, align_dim: int = 0,
                   **overrides) -> Denoiser:
    """A freshly initialised denoiser for ``schema`` (see :func:`unet_config` for ``overrides``).

    >>> from synthaug.conditions import ConditionSchema
    >>> s = ConditionSchema("class", ("a", "b"), (0, 1), resolution=8, channels=1)
    >>> d = build_denoiser(s, "tiny", base_channels=8)
    >>> d(torch.zeros(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 2])).shape
    torch.Size([2, 1, 8, 8])
    """
    config = unet_config(schema, preset, **overrides)
    unet = UNet2DModel(**config)
    attributes = None
    if schema.kind == "attributes":
        attributes = AttributeEmbedding(levels=tuple(schema.attribute_levels), dim=config["block_out_channels"][0] * 4)
    return Denoiser(unet, attributes, augment_dim, align_dim)
