"""Dataset decode throughput: a cold decode into an empty cache vs a warm load from the cache.

Usage: python benchmarks/bench_data.py [--data ../shared/data] [--resolution 64] [--out benchmarks/results/data.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from harness import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data.json")
    args = parser.parse_args()
    os.environ["SYNTHAUG_CACHE"] = tempfile.mkdtemp(prefix="synthaug-bench-")
    from synthaug import load_dataset

    specs = ["digits", f"cub:{args.data / 'cub100'}", f"celeba:{args.data / 'celeba6k'}"]
    rows = []
    for spec in specs:
        t0 = time.perf_counter()
        ds = load_dataset(spec, resolution=args.resolution)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = load_dataset(spec, resolution=args.resolution)
        warm = time.perf_counter() - t0
        rows.append({"spec": spec.split(":")[0] + (":" + Path(spec.split(":", 1)[1]).name if ":" in spec else ""),
                     "images": len(ds), "resolution": args.resolution, "cold_s": round(cold, 3), "warm_s": round(warm, 3),
                     "cold_images_per_s": round(len(ds) / cold, 1), "warm_from_cache": again.from_cache})
        print(rows[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
