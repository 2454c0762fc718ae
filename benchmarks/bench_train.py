"""Generator training throughput: synthaug's training loop vs the stock diffusers way, same run.

The reference loop (``harness.reference_training``) is written the way diffusers' ``examples/
unconditional_image_generation/train_unconditional.py`` trains: a ``DataLoader`` (its default
``num_workers=0``) over a dataset that opens every image file with PIL each step and runs torchvision
transforms (Resize, CenterCrop, RandomHorizontalFlip when the recipe flips, ToTensor, Normalize),
``noise_scheduler.add_noise``, MSE, ``torch.optim.AdamW``, gradient clipping, ``EMAModel`` and
``loss.detach().item()`` every step, all through ``accelerate``. It trains the same class-conditional
U-Net (built from the same recipe, ``--set`` overrides included, so both sides have the same parameter
count; labels dropped to the null class 10% of the time) on the same image files at the same
resolution, batch size and flip setting.

synthaug runs its own ``train_generator`` on the recipe (its dataset cache already warm, as after the
first run; the cold decode is reported separately). Throughput is images per second over the steady
part of each run (after the first ``--warmup`` steps). Each side runs ``--repeats`` times, interleaved
(synthaug, reference, U-Net alone, synthaug, reference, ...), so a change in the machine's load hits
both sides alike; the report gives each side's median with its min-max and interquartile range, and
the headline is the ratio of the medians.

Usage:
    python benchmarks/bench_train.py            # digits at 8 px and the CUB subset at 32 px
    python benchmarks/bench_train.py --quick    # a few minutes: fewer images per measurement
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from harness import (
    RECIPES,
    SHARED_DATA,
    ReferenceMethod,
    logged_throughput,
    machine,
    private_cache,
    reference_files,
    reference_training,
    spread,
    write_result,
)

CONFIGS = {
    # name: (data spec, resolution, batch size, kimg measured, kimg measured in --quick)
    "digits8": ("digits", 8, 256, 20.0, 6.0),
    "cub32": (f"cub:{SHARED_DATA / 'cub100'}", 32, 64, 2.0, 0.8),
}


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def reference_throughput(files, schema, recipe, num_steps: int, warmup: int, device: str) -> dict:
    """The diffusers-example loop on the recipe's U-Net (``--set`` overrides included), batch size and flip
    setting; images/s over the steps after ``warmup`` and the share of that time spent loading data."""
    import torch

    from synthaug.generator.backends import build_model

    g = recipe.generator
    torch.manual_seed(0)
    model, _ = build_model(g, schema, torch.device(device))
    params = parameter_count(model)
    # throughput does not depend on the learning rate; the recipe's keeps both loops' numbers comparable
    method = ReferenceMethod(lr=g.lr, lr_schedule="cosine", warmup_steps=10, schedule=g.schedule, flip=g.flip)
    precision = None if g.mixed_precision == "auto" else g.mixed_precision  # the same precision as synthaug's
    for s in reference_training(files, schema, model, method, g.batch_size, device, num_steps, precision):
        if s.step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start, data_at_start, images_at_start = time.perf_counter(), s.data_s, s.images
        if s.step == num_steps:
            break
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    images = s.images - images_at_start
    return {"images_per_s": round(images / elapsed, 1), "measured_images": images, "seconds": round(elapsed, 2),
            "data_loading_share": round((s.data_s - data_at_start) / elapsed, 3), "parameters": params,
            "flip": method.flip, "precision": precision or "auto"}


def unet_only_throughput(schema, recipe, num_steps: int, warmup: int, device: str) -> dict:
    """The ceiling of any training loop: the recipe's U-Net forward, backward and a fused AdamW step on a batch
    already on the device, and nothing else (no data, noise schedule, EMA or logging)."""
    import torch

    from synthaug.generator.backends import build_model

    g = recipe.generator
    torch.manual_seed(0)
    dev = torch.device(device)
    model, _ = build_model(g, schema, dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=g.lr, fused=True)
    shape = (g.batch_size, schema.channels, schema.resolution, schema.resolution)
    x, noise = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
    t = torch.randint(0, 1000, (g.batch_size,), device=dev)
    labels = torch.randint(0, schema.num_classes, (g.batch_size,), device=dev)
    precision = torch.bfloat16 if g.mixed_precision == "bf16" or (g.mixed_precision == "auto" and device == "cuda") else None
    for step in range(num_steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device, dtype=precision, enabled=precision is not None):
            loss = (model(x, t, labels).float() - noise).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"images_per_s": round((num_steps - warmup) * g.batch_size / elapsed, 1), "parameters": parameter_count(model)}


def synthaug_throughput(recipe, warmup_steps: int) -> dict:
    """``train_generator`` on the recipe; images/s between the first log line after warm-up and the last, and the
    parameter count of the U-Net it saved."""
    from synthaug.generator.backends import load_model
    from synthaug.conditions import ConditionSchema
    from synthaug.generator.train import train_generator

    t0 = time.perf_counter()
    run = train_generator(recipe, fresh=True)
    wall = time.perf_counter() - t0
    images, seconds = logged_throughput(run, warmup_steps)
    import torch

    saved = load_model(run.model_dir, recipe.generator, ConditionSchema.load(run.condition_file), torch.device("cpu"))
    return {"images_per_s": round(images / seconds, 1), "measured_images": int(images),
            "seconds": round(seconds, 2), "wall_s_including_setup_and_snapshot": round(wall, 2),
            "parameters": parameter_count(saved), "flip": recipe.generator.flip}


def measure(name: str, kimg: float, warmup: int, device: str, work: Path, settings: list[str], repeats: int = 1) -> dict:
    """Both loops (and the U-Net alone) on one config, ``repeats`` times each, interleaved."""
    from synthaug.data import load_dataset
    from synthaug.conditions import schema_from_dataset
    from synthaug.recipe import load_recipe

    spec, resolution, batch, _, _ = CONFIGS[name]
    steps = warmup + math.ceil(kimg * 1000 / batch)
    log_every = batch * max(1, (steps - warmup) // 10) / 1000  # about ten log lines over the measured part
    overrides = [f"data.spec={spec}", f"data.resolution={resolution}", f"generator.batch_size={batch}",
                 f"generator.duration_kimg={steps * batch / 1000}", f"generator.log_every_kimg={log_every}",
                 f"generator.snapshot_every_kimg={10 * steps * batch / 1000}", "generator.grid_every_kimg=0",
                 f"run_dir={work / name}", *settings]
    recipe = load_recipe(RECIPES / "digits.toml", overrides)
    t0 = time.perf_counter()
    dataset = load_dataset(recipe.data)
    cold_s = time.perf_counter() - t0
    schema = schema_from_dataset(dataset.split("train"), "auto")
    files = reference_files(dataset, work / f"{name}-files")
    print(f"[{name}] {len(files)} training images, {resolution} px, batch {batch}, {steps} steps ({warmup} warm-up), "
          f"flip {recipe.generator.flip}, {repeats} interleaved repeats")
    runs = {"synthaug": [], "reference": [], "unet_only": []}
    for r in range(repeats):
        runs["synthaug"].append(synthaug_throughput(recipe, warmup))
        runs["reference"].append(reference_throughput(files, schema, recipe, steps, warmup, device))
        runs["unet_only"].append(unet_only_throughput(schema, recipe, min(steps, warmup + 20), warmup, device))
        print(f"[{name}] repeat {r + 1}/{repeats}: synthaug {runs['synthaug'][-1]['images_per_s']:.1f}, reference "
              f"{runs['reference'][-1]['images_per_s']:.1f} ({runs['reference'][-1]['data_loading_share']:.0%} loading data), "
              f"U-Net alone {runs['unet_only'][-1]['images_per_s']:.1f} images/s")
    sides = {side: {"images_per_s": spread([m["images_per_s"] for m in ms]), "runs": ms} for side, ms in runs.items()}
    ours, ref, ceiling = (sides[k]["images_per_s"]["median"] for k in ("synthaug", "reference", "unet_only"))
    params = {side: ms[0]["parameters"] for side, ms in runs.items()}
    if len(set(params.values())) != 1:
        raise RuntimeError(f"the loops trained U-Nets of different sizes: {params}")
    return {"config": name, "data": spec.split(":")[0], "resolution": resolution, "batch_size": batch,
            "train_images": len(files), "preset": recipe.generator.preset, "settings": settings, "flip": recipe.generator.flip,
            "parameters": params["synthaug"], "steps": steps, "warmup_steps": warmup, "repeats": repeats,
            "cold_cache_decode_s": round(cold_s, 2), **sides,
            "reference_data_loading_share": spread([m["data_loading_share"] for m in runs["reference"]]),
            "synthaug_share_of_unet_only": round(ours / ceiling, 3), "ceiling_over_reference": round(ceiling / ref, 2),
            "speedup": round(ours / ref, 2),
            "speedup_range": [round(min(a["images_per_s"] / b["images_per_s"] for a, b in zip(runs["synthaug"], runs["reference"])), 2),
                              round(max(a["images_per_s"] / b["images_per_s"] for a, b in zip(runs["synthaug"], runs["reference"])), 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="fewer images per measurement (a few minutes on 2 CPU cores)")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--repeats", type=int, default=0, help="runs of each side, interleaved (default 5, quick 3)")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        help="recipe overrides, e.g. generator.preset=small; the model, batch and flip settings apply to both loops")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step sets the loops up)")
    import torch

    private_cache()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    repeats = args.repeats or (3 if args.quick else 5)
    rows = []
    with tempfile.TemporaryDirectory(prefix="synthaug-bench-train-") as work:
        for name in args.config:
            if CONFIGS[name][0].startswith("cub:") and not (SHARED_DATA / "cub100").is_dir():
                print(f"[{name}] skipped: {SHARED_DATA / 'cub100'} is absent")
                continue
            kimg = CONFIGS[name][4 if args.quick else 3]
            rows.append(measure(name, kimg, args.warmup, device, Path(work), args.settings, repeats))
            row = rows[-1]
            print(f"[{name}] medians: synthaug {row['synthaug']['images_per_s']['median']:.1f}, reference "
                  f"{row['reference']['images_per_s']['median']:.1f} images/s; speedup {row['speedup']:.2f}x "
                  f"(per repeat {row['speedup_range'][0]:.2f}-{row['speedup_range'][1]:.2f}x)")
    write_result("train" + ("_quick" if args.quick else ""), {"device": device, "rows": rows}, args.out)
    print(machine())


if __name__ == "__main__":
    main()
