"""Which network a recipe's ``generator.backend`` trains and samples: the class/attribute U-Net
(:mod:`~synthaug.generator.model`), the text-conditioned pixel U-Net (:mod:`~synthaug.generator.text`)
or Stable Diffusion + LoRA (:mod:`~synthaug.generator.lora`). All take (x_t, t, integer condition).
"""

from __future__ import annotations

from pathlib import Path

import torch

from synthaug.generator.conditions import ConditionSchema
from synthaug.generator.sampling import training_scheduler


def build_model(g_cfg, schema: ConditionSchema, device: torch.device):
    """A freshly initialised denoiser for ``schema`` on ``device`` and the noise schedule it trains with."""
    if g_cfg.backend == "sd-lora":
        from synthaug.generator.lora import base_scheduler, build_lora_denoiser

        return build_lora_denoiser(g_cfg, schema, device), base_scheduler(g_cfg)
    if g_cfg.backend == "text-unet":
        from synthaug.generator.text import build_text_denoiser

        model = build_text_denoiser(g_cfg, schema, device).to(device)
    else:
        from synthaug.generator.model import build_denoiser

        model = build_denoiser(schema, g_cfg.preset, base_channels=g_cfg.base_channels, channel_mult=g_cfg.channel_mult,
                               layers_per_block=g_cfg.layers_per_block, dropout=g_cfg.dropout).to(device)
    return model, training_scheduler(g_cfg.schedule, g_cfg.num_timesteps, g_cfg.prediction)


def load_model(folder: Path, g_cfg, schema: ConditionSchema, device: torch.device):
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
