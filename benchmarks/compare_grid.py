"""A small per-class grid for a person: real training images next to each synthetic set of a benchmark.

Each row is one class: ``--per-side`` real training images, then the same number from each synthetic set named
with ``--set LABEL=DIR`` (a folder written by ``synthaug generate`` or a benchmark's ``stages/synthetic/<key>``),
separated by blank tiles; rows are labelled by class name (the
columns are named in the command's output line).

    python benchmarks/compare_grid.py --data cub:../shared/data/cub100 --resolution 32 \\
        --set "synthetic=runs/cub-cpu/benchmark/stages/synthetic/<key>" \\
        --set "variations 0.3=runs/cub-cpu/benchmark/stages/synthetic/<key>" --out cub_grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthaug.data import load_dataset
from synthaug.grids import label_rows, save_png, upscale
from synthaug.report import sample_grid
from synthaug.shards import load_shard_set


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the real dataset's spec, e.g. cub:../shared/data/cub100")
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument("--set", action="append", default=[], metavar="LABEL=DIR", help="a synthetic set (repeatable)")
    ap.add_argument("--rows", type=int, default=8, help="classes shown, spread over the label space")
    ap.add_argument("--per-side", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    real = load_dataset(args.data, resolution=args.resolution).split("train")
    named = [item.partition("=") for item in args.set]
    grid, names = sample_grid(real, *(load_shard_set(Path(folder)) for _, _, folder in named),
                              per_side=args.per_side, max_rows=args.rows)
    grid = upscale(grid, 2 * max(grid.shape[:2]))  # 2x, nearest neighbour: small pixels stay visible
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(label_rows(grid, names), args.out)
    print(f"wrote {args.out} (columns: real | {' | '.join(label for label, _, _ in named)})")
    return args.out


if __name__ == "__main__":
    main()
