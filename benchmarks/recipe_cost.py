"""What each GPU recipe costs, computed from FLOP counts (not measured): the generator's training and drawing.

For each GPU recipe the generator's network is built at the recipe's real size on the ``meta`` device (no
memory, no arithmetic) and one forward pass of one image is counted with ``torch.utils.flop_counter``
(matrix products and convolutions; norms and activations are not counted, a few percent). Then:

- training FLOPs = images seen (``duration_kimg``) x forward FLOPs x 3 (forward and backward; a LoRA's
  backward skips the frozen weights' gradients: x 2);
- drawing 1,000 images = 1,000 x sampler steps x forward FLOPs x 2 (the batched classifier-free guidance
  forward runs every image twice), plus the VAE decoder for a latent backend;
- hours on one H100/H200 at a model FLOP utilisation (MFU) of 15% and of 40% of its 989 dense bf16 TFLOP/s.
  Small U-Nets at 32-64 px sit at the low end; the range is an assumption, not a measurement. When
  ``benchmarks/gpu_check.py`` has run on a GPU, its measured images/s replace these estimates.

Text encoders run once per class prompt (cached) and the VAE encodes each training image once, so neither
is counted in training. The classifier benchmark is not counted.

Usage:
    python benchmarks/recipe_cost.py            # writes results/recipe_cost.json and .md
"""

from __future__ import annotations

import argparse
import json

import torch
from harness import RECIPES, RESULTS

PEAK_TFLOPS = 989.0  # H100 SXM / H200, dense bf16
MFU = (0.40, 0.15)
# What the data would give each recipe's conditions (the recipes' own datasets): classes, or attribute levels.
CONDITIONS = {"cub": ("class", 200), "cars": ("class", 196), "faces": ("attributes", (6,) * 5), "birds": ("class", 555),
              "birds-imagen": ("class", 555), "birds-sd-lora": ("class", 555)}
T5_LARGE_DIM, CLIP_L_DIM, TOKENS = 1024, 768, 77


def forward_flops(model: torch.nn.Module, *inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return int(counter.get_total_flops())


def recipe_network(name: str):
    """(the recipe, its denoiser on meta, the inputs of one image, the VAE decoder's forward FLOPs or 0, LoRA?)"""
    from synthaug.conditions import ConditionSchema
    from synthaug.recipe import load_recipe

    recipe = load_recipe(RECIPES / f"{name}.toml")
    g, res = recipe.generator, recipe.data.resolution
    kind, spec = CONDITIONS[name]
    if kind == "class":
        schema = ConditionSchema("class", tuple(f"c{i}" for i in range(spec)), tuple(range(spec)), resolution=res, channels=3)
    else:
        schema = ConditionSchema("attributes", ("face",), (0,), resolution=res, channels=3,
                                 attribute_names=tuple(f"a{i}" for i in range(len(spec))), attribute_levels=spec)
    t = torch.tensor([500], device="meta")
    with torch.device("meta"):
        if g.backend == "unet":
            from synthaug.generator.model import build_denoiser

            net = build_denoiser(schema, g.preset, base_channels=g.base_channels, channel_mult=g.channel_mult,
                                 layers_per_block=g.layers_per_block)
            cond = torch.zeros(1, dtype=torch.long) if kind == "class" else torch.zeros(1, len(spec), dtype=torch.long)
            return recipe, net, (torch.zeros(1, 3, res, res), t, cond), 0, False
        from diffusers import UNet2DConditionModel

        if g.backend == "text-unet":
            from synthaug.generator.text import text_unet_config

            unet = UNet2DConditionModel(**text_unet_config(schema, g, T5_LARGE_DIM))
            return recipe, unet, (torch.zeros(1, 3, res, res), t, torch.zeros(1, TOKENS, T5_LARGE_DIM)), 0, False
        from diffusers import AutoencoderKL
        from gpu_check import stable_diffusion_configs

        configs = stable_diffusion_configs(tiny=False, vocab=49408, max_length=TOKENS)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        latent = res // 8
        decode = forward_flops(vae.decoder, torch.zeros(1, 4, latent, latent))
        return recipe, unet, (torch.zeros(1, 4, latent, latent), t, torch.zeros(1, TOKENS, CLIP_L_DIM)), decode, True


def cost(name: str) -> dict:
    recipe, net, inputs, decode, lora = recipe_network(name)
    f = forward_flops(net, *inputs)
    g, s = recipe.generator, recipe.sampling
    train = g.duration_kimg * 1000 * f * (2 if lora else 3)
    draw = 1000 * (s.steps * 2 * f + decode)
    hours = lambda flops: [round(flops / (PEAK_TFLOPS * 1e12 * m) / 3600, 2) for m in MFU]  # noqa: E731
    return {"recipe": name, "backend": g.backend, "resolution": recipe.data.resolution, "preset": g.preset,
            "parameters_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 1),
            "forward_gflop_per_image": round(f / 1e9, 2), "duration_kimg": g.duration_kimg,
            "training_pflop": round(train / 1e15, 1), "training_hours_h100": hours(train),
            "draw_1000_tflop": round(draw / 1e12, 1), "draw_1000_seconds_h100": [round(draw / (PEAK_TFLOPS * 1e12 * m), 1) for m in MFU]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="*", default=list(CONDITIONS))
    parser.add_argument("--out", default=str(RESULTS / "recipe_cost.json"))
    args = parser.parse_args()
    rows = [cost(name) for name in args.recipes]
    result = {"what": "computed from FLOP counts, not measured", "peak_tflops": PEAK_TFLOPS, "mfu": MFU, "recipes": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    lines = ["| recipe | backend | px | parameters | GFLOP per image (forward) | kimg | training | hours on one H100 (40% / 15% MFU) "
             "| 1,000 images: seconds (40% / 15%) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["training_hours_h100"]
        dlo, dhi = r["draw_1000_seconds_h100"]
        lines.append(f"| {r['recipe']} | {r['backend']} | {r['resolution']} | {r['parameters_M']} M | {r['forward_gflop_per_image']} "
                     f"| {r['duration_kimg']:,.0f} | {r['training_pflop']:,} PFLOP | {lo} / {hi} | {dlo} / {dhi} |")
    with open(args.out.replace(".json", ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
