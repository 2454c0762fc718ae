"""Which network a recipe's ``generator.backend`` trains and samples, and the one interface they share
(:class:`Backend`): the class/attribute U-Net (:mod:`~synthaug.generator.model`), the text-conditioned
pixel U-Net (:mod:`~synthaug.generator.text`) or Stable Diffusion + LoRA (:mod:`~synthaug.generator.lora`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from synthaug.conditions import ConditionSchema
from synthaug.generator.sampling import training_scheduler


@runtime_checkable
class Backend(Protocol):
    """A denoiser as the training loop and the sampler see it, whatever it denoises (pixels or VAE latents).

    Every backend is also a ``torch.nn.Module``: the loop hands it to accelerate, switches it between
    ``train()`` and ``eval()``, and checkpoints the part of its ``state_dict`` that ``trainable_parameters``
    covers. Frozen parts (a text encoder, a VAE) are plain attributes, never submodules, so they are
    neither saved nor checkpointed; nothing copies a backend (EMA goes through ``train.ema_weights``).

    >>> from synthaug.generator.model import build_denoiser
    >>> s = ConditionSchema("class", ("a", "b"), (0, 1), resolution=8, channels=1)
    >>> isinstance(build_denoiser(s, "tiny", base_channels=8), Backend)
    True
    """

    #: True when ``encode`` is costly (a VAE): the loop then encodes the training set, and its mirror
    #: images, once. False for pixels, which stay uint8 on the device and are scaled batch by batch.
    encode_once: bool

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the network denoises."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The network's output (epsilon or v) for noisy ``x_t`` (B, *sample_shape) at timesteps ``t`` (B,)
        under integer conditions (B,) or (B, A)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> what the network denoises (N, *sample_shape): pixels scaled to [-1, 1],
        or scaled VAE latents; an image's encoding does not depend on which others share the call."""

    def decode(self, x: torch.Tensor, network_batch: int) -> torch.Tensor:
        """What the network denoised -> pixels in [-1, 1] (N, C, H, W), run ``network_batch`` rows at a time
        (padded) so an image does not depend on which others were decoded with it."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimizer and the EMA update (everything, or only a LoRA)."""

    def save_pretrained(self, folder: Path) -> None:
        """Write the trained weights into ``folder`` in a diffusers layout (``unet/`` or ``lora/``, ...)."""

    def prompt(self, condition_value: tuple[int, ...]) -> str | None:
        """The text a condition is drawn from (recorded with each sample), or None for a non-text backend."""


def build_model(g_cfg, schema: ConditionSchema, device: torch.device, align_dim: int = 0) -> tuple[Backend, object]:
    """A freshly initialised denoiser for ``schema`` on ``device`` and the noise schedule it trains with (``align_dim``:
    the feature size of a representation-alignment encoder, whose projector the unet backend then carries)."""
    if g_cfg.backend == "sd-lora":
        from synthaug.generator.lora import base_scheduler, build_lora_denoiser

        return build_lora_denoiser(g_cfg, schema, device), base_scheduler(g_cfg)
    if g_cfg.backend == "text-unet":
        from synthaug.generator.text import build_text_denoiser

        model = build_text_denoiser(g_cfg, schema, device).to(device)
    else:
        from synthaug.generator.augment import AUGMENT_DIM
        from synthaug.generator.model import build_denoiser

        model = build_denoiser(schema, g_cfg.preset, augment_dim=AUGMENT_DIM if g_cfg.augment else 0, align_dim=align_dim,
                               base_channels=g_cfg.base_channels, channel_mult=g_cfg.channel_mult,
                               layers_per_block=g_cfg.layers_per_block, dropout=g_cfg.dropout).to(device)
    return model, training_scheduler(g_cfg.schedule, g_cfg.num_timesteps, g_cfg.prediction)


def load_model(folder: Path, g_cfg, schema: ConditionSchema, device: torch.device) -> Backend:
    """The denoiser saved in ``folder`` (a run's ``ema/`` or ``model/``), with its frozen parts, on ``device``."""
    if g_cfg.backend == "sd-lora":
        from synthaug.generator.lora import load_lora_denoiser

        return load_lora_denoiser(folder, g_cfg, schema, device)
    if g_cfg.backend == "text-unet":
        from synthaug.generator.text import load_text_denoiser

        return load_text_denoiser(folder, g_cfg, schema, device).to(device)
    from synthaug.generator.model import Denoiser

    return Denoiser.from_pretrained(folder).to(device)


def describe_backend(g_cfg, schema: ConditionSchema) -> dict:
    """What a run records about a text backend (its pretrained parts' sha256 and prompts); {} for unet."""
    if g_cfg.backend == "unet":
        return {}
    from synthaug.generator.text import Prompts, folder_sha256, resolve_model_path

    out = {"backend": g_cfg.backend}
    if g_cfg.backend == "sd-lora":
        from synthaug.generator.lora import BASE_PARTS

        source = resolve_model_path(g_cfg.base_model, "generator.base_model")
        out.update(base_model=source, base_model_sha256=folder_sha256(source, BASE_PARTS), lora_rank=g_cfg.lora_rank)
    else:
        source = resolve_model_path(g_cfg.text_encoder, "generator.text_encoder")
        out.update(text_encoder=source, text_encoder_sha256=folder_sha256(source))
    return {**out, **Prompts(schema, g_cfg.prompt_template).describe()}
