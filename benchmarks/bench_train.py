"""Generator training throughput: synthaug's training loop vs the stock diffusers way, same run.

The reference loop is written the way diffusers' ``examples/unconditional_image_generation/
train_unconditional.py`` trains: a ``DataLoader`` (its default ``num_workers=0``) over a dataset that
opens every image file with PIL each step and runs torchvision transforms (Resize, CenterCrop,
RandomHorizontalFlip, ToTensor, Normalize), ``noise_scheduler.add_noise``, MSE, ``torch.optim.AdamW``
with its defaults and a cosine schedule, gradient clipping, ``EMAModel`` and ``loss.detach().item()``
every step, all through ``accelerate``. It trains the same class-conditional U-Net (labels dropped to
the null class 10% of the time) on the same image files at the same resolution and batch size.

synthaug runs its own ``train_generator`` on the same recipe (its dataset cache already warm, as
after the first run; the cold decode is reported separately). Throughput is images per second over
the steady part of each run (after the first ``--warmup`` steps), and the headline is the ratio.

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

from harness import RECIPES, SHARED_DATA, logged_throughput, machine, private_cache, write_result

CONFIGS = {
    # name: (data spec, resolution, batch size, kimg measured, kimg measured in --quick)
    "digits8": ("digits", 8, 256, 20.0, 6.0),
    "cub32": (f"cub:{SHARED_DATA / 'cub100'}", 32, 64, 2.0, 0.8),
}


def image_files(dataset, folder: Path) -> list[tuple[str, int]]:
    """(file, label) of every training image as the reference reads it: the dataset's own files, or
    (for the in-memory digits) PNGs written once at their native size."""
    import numpy as np
    from PIL import Image

    train = dataset.split("train")
    if all(Path(s).is_file() for s in train.sources[:5]):
        return list(zip(train.sources, train.labels.tolist()))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (image, label) in enumerate(zip(train.images, train.labels.tolist())):
        path = folder / f"{i:05d}.png"
        Image.fromarray(np.asarray(image)[..., 0] if image.shape[2] == 1 else image).save(path)
        out.append((str(path), label))
    return out


def reference_throughput(files, schema, recipe, num_steps: int, warmup: int, device: str) -> dict:
    """The diffusers-example loop; returns images/s over the steps after ``warmup`` and where time went."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from PIL import Image
    from torchvision import transforms

    from synthaug.generator.model import build_denoiser
    from synthaug.generator.sampling import training_scheduler

    g = recipe.generator
    mode = "RGB" if schema.channels == 3 else "L"
    augmentations = transforms.Compose([
        transforms.Resize(schema.resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(schema.resolution),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            path, label = files[i]
            return {"input": augmentations(Image.open(path).convert(mode)), "label": label}

    precision = g.mixed_precision if g.mixed_precision != "auto" else "bf16" if device == "cuda" else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")  # the same precision as synthaug's
    torch.manual_seed(0)
    model = build_denoiser(schema, g.preset)
    noise_scheduler = training_scheduler(g.schedule, g.num_timesteps, g.prediction)
    optimizer = torch.optim.AdamW(model.parameters(), lr=g.lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    loader = torch.utils.data.DataLoader(Files(), batch_size=g.batch_size, shuffle=True, num_workers=0, drop_last=True)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=10, num_training_steps=num_steps)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema_model = EMAModel(accelerator.unwrap_model(model).parameters(), decay=0.9999, use_ema_warmup=True,
                         inv_gamma=1.0, power=3 / 4)
    null = schema.num_classes

    step, data_s, start, images = 0, 0.0, None, 0
    while step < num_steps:
        batches = iter(loader)
        while step < num_steps:
            t_data = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            if step >= warmup:
                data_s += time.perf_counter() - t_data
            if step == warmup:
                start = t_data
            clean = batch["input"]
            labels = torch.where(torch.rand(len(clean), device=clean.device) < 0.1, null, batch["label"])
            noise = torch.randn(clean.shape, device=clean.device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(clean),), device=clean.device)
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            with accelerator.accumulate(model):
                loss = F.mse_loss(model(noisy, timesteps, labels).float(), noise)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            ema_model.step(accelerator.unwrap_model(model).parameters())
            loss.detach().item()  # the example logs it every step
            step += 1
            if step > warmup:
                images += len(clean)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"images_per_s": round(images / elapsed, 1), "measured_images": images, "seconds": round(elapsed, 2),
            "data_loading_share": round(data_s / elapsed, 3), "precision": precision}


def unet_only_throughput(schema, recipe, num_steps: int, warmup: int) -> dict:
    """The ceiling of any training loop: the U-Net's forward, backward and a fused AdamW step on a batch
    already on the device, and nothing else (no data, noise schedule, EMA or logging)."""
    import torch

    from synthaug.generator.model import build_denoiser

    g = recipe.generator
    torch.manual_seed(0)
    model = build_denoiser(schema, g.preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=g.lr, fused=True)
    shape = (g.batch_size, schema.channels, schema.resolution, schema.resolution)
    x, noise = torch.randn(shape), torch.randn(shape)
    t, labels = torch.randint(0, 1000, (g.batch_size,)), torch.randint(0, schema.num_classes, (g.batch_size,))
    precision = torch.bfloat16 if g.mixed_precision == "bf16" else None
    for step in range(num_steps):
        if step == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=precision, enabled=precision is not None):
            loss = (model(x, t, labels).float() - noise).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - start
    return {"images_per_s": round((num_steps - warmup) * g.batch_size / elapsed, 1)}


def synthaug_throughput(recipe, warmup_steps: int) -> dict:
    """``train_generator`` on the recipe; images/s between the first log line after warm-up and the last."""
    from synthaug.generator.train import train_generator

    t0 = time.perf_counter()
    run = train_generator(recipe, fresh=True)
    wall = time.perf_counter() - t0
    images, seconds = logged_throughput(run, warmup_steps)
    return {"images_per_s": round(images / seconds, 1), "measured_images": int(images),
            "seconds": round(seconds, 2), "wall_s_including_setup_and_snapshot": round(wall, 2)}


def measure(name: str, kimg: float, warmup: int, device: str, work: Path, settings: list[str]) -> dict:
    from synthaug.data import load_dataset
    from synthaug.generator.conditions import schema_from_dataset
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
    files = image_files(dataset, work / f"{name}-files")
    print(f"[{name}] {len(files)} training images, {resolution} px, batch {batch}, {steps} steps ({warmup} warm-up)")
    ours = synthaug_throughput(recipe, warmup)
    print(f"[{name}] synthaug   {ours['images_per_s']:8.1f} images/s")
    ref = reference_throughput(files, schema, recipe, steps, warmup, device)
    print(f"[{name}] reference  {ref['images_per_s']:8.1f} images/s ({ref['data_loading_share']:.0%} of it loading data)")
    ceiling = unet_only_throughput(schema, recipe, min(steps, warmup + 20), warmup)
    print(f"[{name}] U-Net forward + backward + optimizer alone {ceiling['images_per_s']:8.1f} images/s")
    return {"config": name, "data": spec.split(":")[0], "resolution": resolution, "batch_size": batch,
            "train_images": len(files), "preset": recipe.generator.preset, "settings": settings,
            "steps": steps, "warmup_steps": warmup, "cold_cache_decode_s": round(cold_s, 2),
            "synthaug": ours, "reference": ref, "unet_only": ceiling,
            "synthaug_share_of_unet_only": round(ours["images_per_s"] / ceiling["images_per_s"], 3),
            "ceiling_over_reference": round(ceiling["images_per_s"] / ref["images_per_s"], 2), "speedup": round(ours["images_per_s"] / ref["images_per_s"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--quick", action="store_true", help="fewer images per measurement (a few minutes on 2 CPU cores)")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        help="synthaug recipe overrides, e.g. generator.preset=small (applied to both loops' model)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import torch

    private_cache()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory(prefix="synthaug-bench-train-") as work:
        for name in args.config:
            if CONFIGS[name][0].startswith("cub:") and not (SHARED_DATA / "cub100").is_dir():
                print(f"[{name}] skipped: {SHARED_DATA / 'cub100'} is absent")
                continue
            kimg = CONFIGS[name][4 if args.quick else 3]
            rows.append(measure(name, kimg, args.warmup, device, Path(work), args.settings))
            print(f"[{name}] speedup {rows[-1]['speedup']:.2f}x")
    write_result("train" + ("_quick" if args.quick else ""), {"device": device, "rows": rows}, args.out)
    print(machine())


if __name__ == "__main__":
    main()
