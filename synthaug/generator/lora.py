"""Stable Diffusion + LoRA (``generator.backend = "sd-lora"``): a pretrained pipeline's U-Net, VAE and
CLIP text encoder from ``generator.base_model``, frozen, with a LoRA (peft through diffusers) on the
U-Net's attention projections, trained in the VAE's latent space.

The run folder keeps only the LoRA weights (``ema/lora/pytorch_lora_weights.safetensors``); the base
model is read again from its folder, whose sha256 the run records.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synthaug.errors import SynthaugError
from synthaug.conditions import ConditionSchema
from synthaug.generator.model import scale_pixels
from synthaug.generator.text import PromptEncoder, prompt_encoder, require, resolve_model_path, unreadable_model

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")  # what the base model's sha256 covers


class LatentCodec:
    """The frozen VAE: uint8 pixels -> scaled latent means, and latents -> pixels in [-1, 1]. Not a module, so
    it is neither saved with the generator nor part of its training state."""

    def __init__(self, vae, channels: int):
        self.vae = vae.eval().requires_grad_(False)
        self.channels = channels  # of the data: grey images go through an RGB VAE as three equal channels

    @torch.no_grad()
    def encode(self, images: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """uint8 (N, C, H, W) -> (N, c, h, w), ``chunk`` images at a time (padded, so a latent does not
        depend on which images shared its chunk)."""
        vae = self.vae
        out = []
        for start in range(0, len(images), chunk):
            x = scale_pixels(images[start : start + chunk])
            x = x.expand(-1, vae.config.in_channels, -1, -1) if x.shape[1] == 1 else x
            pad = chunk - len(x)
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
            out.append(vae.encode(x).latent_dist.mode()[: chunk - pad] * vae.config.scaling_factor)
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, network_batch: int) -> torch.Tensor:
        """Latents -> pixels in [-1, 1], in chunks of exactly ``network_batch`` rows (padded), so an
        image does not depend on which others were decoded with it."""
        vae = self.vae
        out = []
        for start in range(0, len(latents), network_batch):
            z = latents[start : start + network_batch]
            pad = network_batch - len(z)
            z = torch.cat([z, z.new_zeros((pad, *z.shape[1:]))]) if pad else z
            out.append(vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample[: network_batch - pad].float())
        x = torch.cat(out)
        return x.mean(dim=1, keepdim=True) if self.channels == 1 and x.shape[1] != 1 else x


class LoraDenoiser(nn.Module):
    """``forward(z_t, t, condition)`` on VAE latents, for a Stable Diffusion U-Net carrying a LoRA (a
    :class:`~synthaug.generator.backends.Backend`): ``encode`` takes uint8 pixels to scaled latents and
    ``decode`` latents back to pixels in [-1, 1], so the loop and the sampler treat it as a pixel denoiser.
    """

    encode_once = True  # a VAE forward per image: the loop encodes the training set once

    def __init__(self, unet, vae, prompts: PromptEncoder, latent_size: int, channels: int):
        super().__init__()
        self.unet = unet
        self.codec = LatentCodec(vae, channels)  # frozen, not a submodule
        self.prompts = prompts  # frozen, not a submodule
        self.latent_size = latent_size

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.unet.config.in_channels, self.latent_size, self.latent_size)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        # no encoder_attention_mask: the pretrained U-Net attends to every position of the padded CLIP
        # embedding, as in Stable Diffusion's pre-training and in StableDiffusionPipeline
        context, _ = self.prompts(condition)
        return self.unet(sample, timestep, encoder_hidden_states=context.to(sample.device, sample.dtype)).sample

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(images)

    def decode(self, x: torch.Tensor, network_batch: int) -> torch.Tensor:
        return self.codec.decode(x, network_batch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]  # the LoRA; the base U-Net is frozen

    def prompt(self, condition_value: tuple[int, ...]) -> str | None:
        return self.prompts.text(condition_value)

    def save_pretrained(self, folder: Path) -> None:
        """The LoRA weights only, in the file diffusers' ``save_lora_adapter`` writes (and ``load_lora_adapter``
        reads), written so that equal weights give equal bytes in any process."""
        import json

        from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        config = {k: sorted(v) if isinstance(v, set) else v for k, v in self.unet.peft_config["default"].to_dict().items()}
        # one metadata entry only: safetensors writes several in a random (hash map) order
        metadata = {LORA_ADAPTER_METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)}
        (Path(folder) / "lora").mkdir(parents=True, exist_ok=True)
        weights = {k: v.contiguous() for k, v in get_peft_model_state_dict(self.unet, adapter_name="default").items()}
        save_file(weights, Path(folder) / "lora" / LORA_WEIGHTS, metadata=metadata)


def load_base(g_cfg, schema: ConditionSchema, device: torch.device):
    """The frozen U-Net, VAE and prompt encoder of ``generator.base_model``, and the latent size."""
    require("sd-lora", "transformers", "peft")
    from diffusers import AutoencoderKL, UNet2DConditionModel

    source = resolve_model_path(g_cfg.base_model, "generator.base_model")
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae")
    except (OSError, ValueError):
        raise unreadable_model(source, "generator.base_model", "Stable Diffusion model in the diffusers layout "
                               "(unet/, vae/, text_encoder/, tokenizer/, scheduler/)") from None
    prompts = prompt_encoder(g_cfg, schema, source, "generator.base_model", device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_size = schema.resolution // factor
    levels = 2 ** (len(unet.config.block_out_channels) - 1)
    if schema.resolution % factor or latent_size % levels or latent_size == 0:
        raise SynthaugError(f"Resolution {schema.resolution} does not fit this Stable Diffusion model; use a multiple of "
                            f"{factor * levels} (data.resolution).")
    unet.requires_grad_(False)
    return unet.to(device), vae.to(device), prompts, latent_size


def base_scheduler(g_cfg):
    """The base model's own noise schedule: LoRA fine-tuning must keep the schedule it was trained with."""
    from diffusers import DDPMScheduler

    source = resolve_model_path(g_cfg.base_model, "generator.base_model")
    try:
        return DDPMScheduler.from_pretrained(source, subfolder="scheduler")
    except (OSError, ValueError):
        raise unreadable_model(source, "generator.base_model", "scheduler/ folder") from None


def lora_config(g_cfg):
    from peft import LoraConfig

    return LoraConfig(r=g_cfg.lora_rank, lora_alpha=g_cfg.lora_rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)


def build_lora_denoiser(g_cfg, schema: ConditionSchema, device: torch.device) -> LoraDenoiser:
    """The frozen base model with a fresh LoRA on its U-Net's attention projections (the only trained weights)."""
    unet, vae, prompts, latent_size = load_base(g_cfg, schema, device)
    unet.add_adapter(lora_config(g_cfg))
    return LoraDenoiser(unet, vae, prompts, latent_size, schema.channels)


def load_lora_denoiser(folder: Path, g_cfg, schema: ConditionSchema, device: torch.device) -> LoraDenoiser:
    """The base model with a run's saved LoRA weights applied."""
    unet, vae, prompts, latent_size = load_base(g_cfg, schema, device)
    unet.load_lora_adapter(str(Path(folder) / "lora"), prefix=None, weight_name=LORA_WEIGHTS, adapter_name="default")
    return LoraDenoiser(unet.to(device), vae, prompts, latent_size, schema.channels)
