"""Peak memory and cache-load time as a dataset grows from 2k to 20k to 200k images (issue 15).

Each size is an imagefolder of small generated PNGs (64x64, a class colour under 8x8 blocks of noise, 10
classes), written once into --work and reused. Every measurement runs in a fresh process, and its peak RSS
is that process's own high-water mark (``wait4``'s ``ru_maxrss``: resident memory, memory-mapped file
pages included):

  (a) cache:      load the dataset from its decode cache (built beforehand, in another process), then take
                  the three splits, a 10-shot subset and a subset of a subset; the load time, and the peak RSS.
  (b) train:      ``synthaug train`` (recipes/cub.toml's small preset at 64 px, --train-kimg kimg) on the set.
  (c) classifier: one classifier arm of the benchmark (``run_arm``, real training split only, one seed).

Targets: peak RSS grows by at most 0.5 GB from the smallest to the largest set, and the cache loads in under
1 s at 200k images. Results go to results/memory.json (memory_quick.json with --quick).

Usage: python benchmarks/bench_memory.py [--quick] [--sizes 2000,20000,200000] [--parts cache,train,classifier]
                                         [--work DIR] [--train-kimg 1] [--classifier-steps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from harness import RECIPES, write_result

NUM_CLASSES = 10
SIDE = 64
PARTS = ("cache", "train", "classifier")
GB = 1024**3


# -- the made-up datasets ----------------------------------------------------------------------------

def write_images(folder: str, start: int, stop: int) -> None:
    """Images start..stop-1 of a set: class i % 10, its colour under seeded 8x8 blocks of noise."""
    import numpy as np
    from PIL import Image

    for i in range(start, stop):
        c = i % NUM_CLASSES
        rng = np.random.default_rng(i)
        colour = np.array([(c * 70) % 256, (c * 130 + 60) % 256, (c * 200 + 120) % 256], dtype=np.int16)
        blocks = np.clip(colour + rng.integers(-40, 41, (8, 8, 3)), 0, 255).astype(np.uint8)
        pixels = blocks.repeat(SIDE // 8, 0).repeat(SIDE // 8, 1)
        Image.fromarray(pixels).save(Path(folder) / f"class{c}" / f"{i:07d}.png", compress_level=1)


def made_up_set(work: Path, n: int, workers: int) -> Path:
    """The imagefolder of ``n`` images under ``work`` (written once; a finished set has its ``complete`` marker)."""
    folder = work / f"imagefolder-{n}"
    if (folder / ".complete").is_file():
        return folder
    for c in range(NUM_CLASSES):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    step = 2000
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(write_images, [str(folder)] * len(range(0, n, step)), range(0, n, step),
                      [min(s + step, n) for s in range(0, n, step)]))
    (folder / ".complete").write_text(str(n))
    print(f"wrote {n} images into {folder} in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


# -- measurements, each in a process of its own -------------------------------------------------------

def child(argv: list[str]) -> dict:
    """Run ``argv`` in a new process; its JSON result line (if it prints one), exit status, and peak RSS."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # reaps it, with its own rusage (Popen.wait would not give it)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = {"wall_s": round(time.perf_counter() - start, 2)}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if lines:
        result.update(json.loads(lines[-1]))
    result["peak_rss_gb"] = round(usage.ru_maxrss * 1024 / GB, 3)  # Linux gives KiB
    result["exit_code"] = proc.returncode
    if proc.returncode != 0:
        result["error"] = (stderr.strip().splitlines() or ["?"])[-1][:300]
        print(stderr[-3000:], file=sys.stderr)
    return result


def measure_cache(spec: str) -> dict:
    """In this (fresh) process: load from the cache, take splits and subsets; times and peak RSS so far."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    from synthaug.data import DataConfig, load_dataset, read_catalog
    from synthaug.data.cache import cache_folder, load_cache, stat_sources

    config = DataConfig(spec=spec, resolution=SIDE, val_fraction=0.1)
    out = {}
    t0 = time.perf_counter()
    catalog = read_catalog(config)
    out["catalog_s"] = round(time.perf_counter() - t0, 3)  # imagefolder lists the class folders
    t0 = time.perf_counter()
    folder = cache_folder(catalog, SIDE, True, stat_sources(catalog)[0])
    out["source_check_s"] = round(time.perf_counter() - t0, 3)  # the cache key: every source file's size and mtime
    t0 = time.perf_counter()
    decoded = load_cache(folder, SIDE)
    out["cache_load_s"] = round(time.perf_counter() - t0, 3)  # meta.json, the damage check, the memory map
    assert decoded is not None, "the cache should have been built beforehand"
    t0 = time.perf_counter()
    ds = load_dataset(config)
    out["load_dataset_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    train, val, test = ds.split("train"), ds.split("val"), ds.split("test")
    nested = train.subset(np.arange(len(train)) % 2 == 0).subset(np.arange((len(train) + 1) // 2) % 3 == 0)
    out["views_s"] = round(time.perf_counter() - t0, 3)  # splits and a subset of a subset: views, no pixels read
    t0 = time.perf_counter()
    shots = load_dataset(config, shots_per_class=10)
    out["shots_load_s"] = round(time.perf_counter() - t0, 3)  # a second load_dataset, with a 10-shot subset
    first = train.images[0:64]  # a batch of consecutive rows, and a scattered one
    batch = train.images.gather(np.arange(0, len(train), max(1, len(train) // 64)))
    out.update(images=len(ds), train=len(train), val=len(val), test=len(test), shots=len(shots), nested=len(nested),
               cache_gb=round(ds.images.base.nbytes / GB, 3), read_bytes=int(first.nbytes + batch.nbytes),
               peak_rss_before_import_gb=round(before * 1024 / GB, 3),
               peak_rss_self_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 3))
    return out


def build_cache(spec: str) -> dict:
    from synthaug.data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(spec, resolution=SIDE)
    return {"built_s": round(time.perf_counter() - t0, 1), "from_cache": ds.from_cache, "images": len(ds)}


def measure_classifier(spec: str, steps: int) -> dict:
    """One arm of the benchmark on the real training split: what ``synthaug benchmark`` runs per arm and seed."""
    import torch

    from synthaug.benchmark.arms import Arm, Images, run_arm
    from synthaug.classifier import ClassifierConfig
    from synthaug.data import load_dataset
    from synthaug.device import default_device

    device = default_device()
    ds = load_dataset(spec, resolution=SIDE, val_fraction=0.1)
    train, test = ds.split("train"), ds.split("test")
    config = ClassifierConfig.from_benchmark(steps=steps, resolution=SIDE)
    t0 = time.perf_counter()
    real = Images.of(train.images, train.labels[:, None], config.resolution, device)
    evaluation = Images.of(test.images, test.labels[:, None], config.resolution, device)
    result = run_arm(Arm("real"), [ds.num_classes], config, [0], evaluation, real=real)
    return {"train_images": len(train), "top1": round(result["top1"]["mean"], 4), "steps": steps,
            "classifier": config.model, "arm_s": round(time.perf_counter() - t0, 2),
            "cuda_peak_gb": round(torch.cuda.max_memory_allocated() / GB, 3) if device.type == "cuda" else None}


def train_argv(spec: str, run_dir: Path, kimg: float) -> list[str]:
    sets = [f"data.spec={spec}", "data.resolution=64", f"run_dir={run_dir}", f"generator.duration_kimg={kimg}",
            "generator.batch_size=32", "generator.warmup_kimg=0", f"generator.snapshot_every_kimg={kimg}",
            "generator.grid_every_kimg=0", f"generator.log_every_kimg={kimg / 4}"]  # no sample grid: memory of training only
    return [sys.executable, "-m", "synthaug", "train", str(RECIPES / "cub.toml"), "--fresh",
            *[a for s in sets for a in ("--set", s)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k and 20k images only")
    parser.add_argument("--sizes", default="", help="comma-separated image counts (default 2000,20000,200000)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which of {', '.join(PARTS)} to run")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "synthaug-bench-memory",
                        help="where the generated images, their caches and runs live (reused between runs)")
    parser.add_argument("--train-kimg", type=float, default=1.0)
    parser.add_argument("--classifier-steps", type=int, default=50)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = parser.parse_args()
    if args.child:
        kind, spec, *rest = args.child
        result = {"cache": measure_cache, "build": build_cache,
                  "classifier": lambda s: measure_classifier(s, int(rest[0]))}[kind](spec)
        print(json.dumps(result), flush=True)
        return

    sizes = [int(s) for s in args.sizes.split(",") if s] or ([2000, 20000] if args.quick else [2000, 20000, 200000])
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part {sorted(unknown)[0]!r}; use {', '.join(PARTS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["SYNTHAUG_CACHE"] = str(args.work / "cache")
    script = [sys.executable, str(Path(__file__).resolve()), "--child"]
    rows = []
    for n in sizes:
        spec = f"imagefolder:{made_up_set(args.work, n, args.workers)}"
        row = {"images": n, "build": child(script + ["build", spec])}
        print(n, "build", row["build"], flush=True)
        if "cache" in parts:  # the first load after the build, and another one
            row["cache_first"] = child(script + ["cache", spec])
            row["cache"] = child(script + ["cache", spec])
            print(n, "cache", row["cache_first"], row["cache"], sep="\n", flush=True)
        if "train" in parts:
            row["train"] = child(train_argv(spec, args.work / "runs" / f"train-{n}", args.train_kimg))
            row["train"]["kimg"] = args.train_kimg
            print(n, "train", row["train"], flush=True)
        if "classifier" in parts:
            row["classifier"] = child(script + ["classifier", spec, str(args.classifier_steps)])
            print(n, "classifier", row["classifier"], flush=True)
        rows.append(row)

    summary = {}
    for part in parts:
        measured = [r for r in rows if r.get(part, {}).get("exit_code") == 0 and "peak_rss_gb" in r[part]]
        if len(measured) >= 2:
            growth = measured[-1][part]["peak_rss_gb"] - measured[0][part]["peak_rss_gb"]
            summary[part] = {"from_images": measured[0]["images"], "to_images": measured[-1]["images"],
                             "peak_rss_growth_gb": round(growth, 3), "target_gb": 0.5, "holds": growth <= 0.5}
    if "cache" in parts and rows and "cache_load_s" in rows[-1].get("cache", {}):
        load = rows[-1]["cache"]["cache_load_s"]
        summary["cache_load"] = {"images": rows[-1]["images"], "seconds": load, "target_s": 1.0, "holds": load < 1.0}
    print(json.dumps(summary, indent=1))
    name = "memory_quick" if args.quick else "memory"
    write_result(name, {"sizes": sizes, "parts": parts, "side": SIDE, "train_kimg": args.train_kimg,
                        "classifier_steps": args.classifier_steps, "rows": rows, "summary": summary}, args.out)


if __name__ == "__main__":
    main()
