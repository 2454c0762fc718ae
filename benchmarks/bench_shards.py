"""Shard writing: synthaug generate's writing path vs the standard ``tarfile`` module, same bytes in.

Both sides get the same pre-encoded samples (PNG, class and JSON metadata, as ``synthaug generate``
makes them) cut into shards of 1,000. synthaug's side is what ``generate`` does once images are
encoded: ``write_shard`` (the bytes webdataset's TarWriter writes, under a temporary name, sha256
taken as they are written, fsync, rename) for every shard, then ``write_manifest``. The reference writes the same
members with ``tarfile.open(path, "w")`` and ``addfile``, nothing else (no fsync, no checksums, no
manifest). A third side repeats synthaug's with ``os.fsync`` made a no-op, to show what durability
costs. Each side runs ``--repeats`` times, alternating, into fresh folders; medians are reported.

Usage: python benchmarks/bench_shards.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import SHARED_DATA, private_cache, write_result


def encoded_samples(images: np.ndarray, labels: np.ndarray, names: list[str]) -> list[dict]:
    from synthaug.shards import encode_png, encode_sample

    samples = []
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
        meta = {"class_name": names[label], "class_id": label, "label": label, "condition": f"c{label}", "index": i,
                "seed": 1234567890123 + i, "sampler": "dpm++2m", "steps": 20, "guidance": 2.0, "run": "bench",
                "weights_sha256": "0" * 64}
        samples.append(encode_sample(f"c{label}-{i:06d}", encode_png(image), label, meta))
    return samples


def synthaug_write(folder: Path, shards: list[list[dict]], names: list[list[str]]) -> None:
    """``generate``'s path once images are encoded (it knows each sample's class name, as ``names`` gives)."""
    from synthaug.shards import write_manifest, write_shard

    infos = [write_shard(folder, k, samples, shard_names) for k, (samples, shard_names) in enumerate(zip(shards, names))]
    write_manifest(folder, infos, settings={"bench": True}, extra={})


def tarfile_write(folder: Path, shards: list[list[dict]], names=None) -> None:
    from synthaug.shards import FIXED_MTIME, shard_name

    for k, samples in enumerate(shards):
        with tarfile.open(folder / shard_name(k), "w") as tar:
            for sample in samples:
                for ext in ("cls", "json", "png"):
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size, info.mtime = len(sample[ext]), FIXED_MTIME
                    tar.addfile(info, io.BytesIO(sample[ext]))


def synthaug_write_without_fsync(folder: Path, shards, names) -> None:
    """The same, with fsync made a no-op: what durability costs, for the breakdown (not a mode synthaug has)."""
    from unittest import mock

    with mock.patch("os.fsync", lambda fd: None):
        synthaug_write(folder, shards, names)


def measure(label: str, samples: list[dict], repeats: int, per_shard: int = 1000) -> dict:
    shards = [samples[i : i + per_shard] for i in range(0, len(samples), per_shard)]
    names = [[json.loads(s["json"])["class_name"] for s in shard] for shard in shards]
    megabytes = sum(len(s["png"]) + len(s["json"]) + len(s["cls"]) for s in samples) / 1e6
    times = {"synthaug": [], "tarfile": [], "synthaug_without_fsync": []}
    with tempfile.TemporaryDirectory(prefix="synthaug-bench-shards-") as work:
        for r in range(repeats):
            for side, write in (("tarfile", tarfile_write), ("synthaug", synthaug_write),
                                ("synthaug_without_fsync", synthaug_write_without_fsync)):
                folder = Path(work) / f"{side}-{r}"
                folder.mkdir()
                t0 = time.perf_counter()
                write(folder, shards, names)
                times[side].append(time.perf_counter() - t0)
                shutil.rmtree(folder)
    ours, ref = statistics.median(times["synthaug"]), statistics.median(times["tarfile"])
    row = {"images": label, "samples": len(samples), "shards": len(shards), "payload_mb": round(megabytes, 2),
           "synthaug_s": round(ours, 3), "tarfile_s": round(ref, 3),
           "synthaug_samples_per_s": round(len(samples) / ours), "tarfile_samples_per_s": round(len(samples) / ref),
           "overhead": round(ours / ref - 1, 3),
           "overhead_without_fsync": round(statistics.median(times["synthaug_without_fsync"]) / ref - 1, 3), "all_times": {k: [round(t, 3) for t in v] for k, v in times.items()}}
    print(f"[{label}] synthaug {ours:.3f} s, tarfile {ref:.3f} s: overhead {row['overhead']:+.1%} "
          f"({row['overhead_without_fsync']:+.1%} without the fsync)")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 samples per set and 3 repeats")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    private_cache()
    from synthaug import load_dataset

    n = 5000 if args.quick else 20000
    repeats = args.repeats or (3 if args.quick else 5)
    rows = []
    digits = load_dataset("digits")
    pick = np.arange(n) % len(digits)
    rows.append(measure("digits 8x8 grey", encoded_samples(digits.images[pick], digits.labels[pick], digits.class_names), repeats))
    if (SHARED_DATA / "cub100").is_dir():
        birds = load_dataset(f"cub:{SHARED_DATA / 'cub100'}", resolution=64)
        pick = np.arange(n // 4) % len(birds)
        rows.append(measure("CUB 64x64 RGB", encoded_samples(birds.images[pick], birds.labels[pick], birds.class_names), repeats))
    write_result("shards" + ("_quick" if args.quick else ""), {"rows": rows}, args.out)


if __name__ == "__main__":
    main()
