"""Scaling: how the cost of training and generation grows with resolution, classes and images.

Three sweeps, each changing one thing on real birds (the CUB subset in ../shared/data; the digits
when it is absent), everything else fixed (tiny U-Net, batch 32, DPM-Solver++ 20 steps, guidance 2):

- resolution 8, 16, 32, 64 px: training images/s and generation images/s;
- classes 10, 25, 50, 100 (class-per-folder trees linking the first k species): a cold decode of
  the dataset into the cache, U-Net parameters, training images/s, and seconds to generate 4 images
  of every class;
- images per class 10, 20, 40, all (trees linking the first m photos of each species): cold decode
  and training images/s.

Training images/s is read from the run's log after the first log line (warm-up excluded).

Usage: python benchmarks/bench_scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import RECIPES, SHARED_DATA, logged_throughput, private_cache, write_result

BATCH = 32


def class_tree(dataset, folder: Path, num_classes: int, per_class: int = 0) -> str:
    """An ``imagefolder:`` spec for the first ``num_classes`` classes and first ``per_class`` images
    of each (0: all), linking the dataset's own files (the digits, which have none, are written as PNGs)."""
    from PIL import Image

    for label in range(num_classes):
        rows = np.flatnonzero(dataset.labels == label)[: per_class or None]
        split_of = {"train": "train", "val": "train", "test": "test"}
        for i in rows:
            target = folder / split_of[dataset.splits[i]] / dataset.class_names[label].replace("/", "-")
            target.mkdir(parents=True, exist_ok=True)
            source = Path(dataset.sources[i])
            if source.is_file():
                (target / f"{i:06d}{source.suffix}").symlink_to(source.resolve())
            else:
                image = dataset.images[i]
                Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(target / f"{i:06d}.png")
    return f"imagefolder:{folder}"


def train_images_per_s(spec: str, resolution: int, steps: int, work: Path) -> tuple[float, object]:
    from synthaug.generator.train import train_generator
    from synthaug.recipe import load_recipe

    kimg = steps * BATCH / 1000
    recipe = load_recipe(RECIPES / "digits.toml", [
        f"data.spec={spec}", f"data.resolution={resolution}", f"generator.batch_size={BATCH}",
        f"generator.duration_kimg={kimg}", f"generator.log_every_kimg={kimg / 4}", "generator.grid_every_kimg=0",
        f"generator.snapshot_every_kimg={kimg * 10}", "generator.warmup_kimg=0", f"run_dir={work}"])
    run = train_generator(recipe, fresh=True)
    images, seconds = logged_throughput(run)
    return images / seconds, run


def generate_seconds(run, per_class: int, max_classes: int = 0) -> tuple[float, int]:
    import dataclasses

    from synthaug.generator import Generator
    from synthaug.generator.pipeline import plan_conditions

    gen = Generator.load(run.path, device="cpu")
    classes = gen.all_classes()[: max_classes or None]
    plan = plan_conditions(classes, [per_class] * len(classes), 0)
    sampling = dataclasses.replace(gen.sampling, batch_size=BATCH, network_batch=2 * BATCH)
    start = time.perf_counter()
    gen.sample_conditions([c for c, _, _ in plan], [s for _, _, s in plan], sampling)
    return time.perf_counter() - start, len(plan)


def cold_decode_seconds(spec: str, resolution: int) -> float:
    from synthaug import load_dataset

    private_cache()
    start = time.perf_counter()
    load_dataset(spec, resolution=resolution)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and fewer points per sweep")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    private_cache()
    from synthaug import load_dataset
    from synthaug.generator.model import Denoiser

    birds = (SHARED_DATA / "cub100").is_dir()
    spec = f"cub:{SHARED_DATA / 'cub100'}" if birds else "digits"
    base = load_dataset(spec, resolution=32)
    steps = 6 if args.quick else 16
    work = Path(tempfile.mkdtemp(prefix="synthaug-bench-scaling-"))
    result = {"data": "CUB subset (100 species)" if birds else "digits", "batch_size": BATCH, "train_steps": steps,
              "sampler": "dpm++2m, 20 steps, guidance 2", "resolution": [], "classes": [], "images_per_class": []}

    for res in ([8, 32] if args.quick else [8, 16, 32, 64]):
        ips, run = train_images_per_s(spec, res, steps, work / f"res{res}")
        seconds, n = generate_seconds(run, per_class=1, max_classes=BATCH)
        row = {"resolution": res, "train_images_per_s": round(ips, 1), "generate_images_per_s": round(n / seconds, 1)}
        result["resolution"].append(row)
        print(row)

    num_classes = len(base.class_names)
    class_counts = sorted({min(k, num_classes) for k in ([10, num_classes] if args.quick else [10, 25, 50, 100])})
    for k in class_counts:
        tree = class_tree(base, work / f"classes{k}", k)
        decode = cold_decode_seconds(tree, 32)
        ips, run = train_images_per_s(tree, 32, steps, work / f"classes{k}-run")
        seconds, n = generate_seconds(run, per_class=4)
        params = sum(p.numel() for p in Denoiser.from_pretrained(run.ema_dir).parameters())
        row = {"classes": k, "images": int(np.isin(base.labels, np.arange(k)).sum()), "cold_decode_s": round(decode, 2),
               "unet_parameters": params, "train_images_per_s": round(ips, 1), "generate_4_per_class_s": round(seconds, 2)}
        result["classes"].append(row)
        print(row)

    for m in ([10, 0] if args.quick else [10, 20, 40, 0]):
        tree = class_tree(base, work / f"images{m}", num_classes, m)
        decode = cold_decode_seconds(tree, 32)
        ips, _ = train_images_per_s(tree, 32, steps, work / f"images{m}-run")
        images = sum(1 for p in Path(tree.split(":", 1)[1]).rglob("*") if p.is_file() or p.is_symlink())
        row = {"images_per_class": m or "all", "images": images, "cold_decode_s": round(decode, 2),
               "train_images_per_s": round(ips, 1)}
        result["images_per_class"].append(row)
        print(row)
    write_result("scaling" + ("_quick" if args.quick else ""), result, args.out)


if __name__ == "__main__":
    main()
