"""Sampling: a diffusers scheduler's denoising loop, written out, with classifier-free guidance in
one batched forward and one seed per image.

An image depends only on (denoiser, condition, seed, sampler settings, network_batch): the network
always runs on exactly ``network_batch`` rows (the last chunk padded), because a convolution's
floating-point result depends on the batch shape but not on which other images share the batch.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from synthaug.errors import SynthaugError
from synthaug.generator.model import Denoiser

SAMPLER_CLASSES = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
}


def training_scheduler(schedule: str = "cosine", num_timesteps: int = 1000, prediction: str = "epsilon") -> DDPMScheduler:
    """The noise schedule a generator is trained with (saved in its run folder)."""
    return DDPMScheduler(
        num_train_timesteps=num_timesteps,
        beta_schedule="squaredcos_cap_v2" if schedule == "cosine" else "linear",
        prediction_type="v_prediction" if prediction == "v" else "epsilon",
    )


def make_sampler(name: str, scheduler_config: dict):
    """A fresh scheduler of kind ``name`` built from the training scheduler's config."""
    if name not in SAMPLER_CLASSES:
        raise SynthaugError(f"Sampler {name!r} is not known; use one of {', '.join(SAMPLER_CLASSES)}.")
    cls, extra = SAMPLER_CLASSES[name]
    # Where the sampled timesteps sit. An epsilon model cannot start at the last step of a cosine
    # schedule (alpha_bar ~ 0 there, so its x0 estimate blows up and images saturate; measured on
    # digits: 80% vs 97% conditioning accuracy with DPM-Solver++ at 20 steps), so epsilon models
    # use "leading" spacing; v models are stable there and use "trailing".
    spacing = "trailing" if scheduler_config.get("prediction_type") == "v_prediction" else "leading"
    return cls.from_config(dict(scheduler_config), timestep_spacing=spacing, **extra)


def run_network(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, null_row: torch.Tensor,
                network_batch: int) -> torch.Tensor:
    """The denoiser on every row of ``x``, in chunks of exactly ``network_batch`` rows (padded)."""
    out = []
    for start in range(0, len(x), network_batch):
        xs, cs = x[start : start + network_batch], cond[start : start + network_batch]
        pad = network_batch - len(xs)
        if pad:
            xs = torch.cat([xs, xs.new_zeros((pad, *xs.shape[1:]))])
            cs = torch.cat([cs, null_row.expand(pad, *null_row.shape[1:])])
        ts = t.expand(network_batch)
        out.append(denoiser(xs, ts, cs)[: network_batch - pad].float())
    return torch.cat(out)


@torch.inference_mode()
def sample_images(
    denoiser: Denoiser,
    conditions: torch.Tensor,
    null: torch.Tensor,
    seeds: list[int],
    scheduler_config: dict,
    *,
    sampler: str = "dpm++2m",
    steps: int = 20,
    guidance: float = 2.0,
    network_batch: int = 64,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Draw one image per (condition, seed) and return them as uint8 (B, H, W, C).

    Args:
        denoiser: the (EMA) denoiser, on its device, in eval mode (any backend: pixels or VAE latents).
        conditions: (B,) class ids or (B, A) attribute levels.
        null: the null condition for one image, (1,) or (1, A).
        seeds: one seed per image (``derive_seed(base_seed, condition key, index)``).
        scheduler_config: the training scheduler's config (timesteps, beta schedule, prediction type).
        sampler, steps: which diffusers scheduler, and how many network evaluations it makes.
        guidance: 1 = plain conditional; > 1 extrapolates away from the null condition.
        network_batch: rows per network call; part of what makes an image reproducible.
        autocast_dtype: e.g. torch.bfloat16 on a GPU.
    """
    device = next(denoiser.parameters()).device
    shape = (len(seeds), *denoiser.sample_shape)
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    scheduler = make_sampler(sampler, scheduler_config)
    scheduler.set_timesteps(steps, device=device)
    conditions = conditions.to(device)
    null = null.to(device)
    guided = guidance != 1.0
    step_kwargs = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
    cond_in = torch.cat([conditions, null.expand(len(seeds), *null.shape[1:])]) if guided else conditions

    # 1. initial noise, one generator per image
    x = randn_tensor(shape, generator=generators, device=device, dtype=torch.float32) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        # 2. conditional and null branches in one batched forward
        model_in = scheduler.scale_model_input(x, t)
        model_in = torch.cat([model_in, model_in]) if guided else model_in
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = run_network(denoiser, model_in, t.reshape(1).to(device), cond_in, null, network_batch)
        # 3. classifier-free guidance
        if guided:
            cond_out, null_out = out.chunk(2)
            out = null_out + guidance * (cond_out - null_out)
        # 4. one scheduler step (stochastic samplers draw fresh noise from each image's own generator)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    # 5. to uint8 pixels (a latent denoiser decodes its latents with its VAE first)
    if hasattr(denoiser, "decode_latents"):
        x = denoiser.decode_latents(x, network_batch)
    images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()
