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

import numpy as np

from synthaug.data import load_dataset
from synthaug.grids import label_rows, save_png, spread_classes, tile_images, upscale
from synthaug.shards import held_classes, load_shard_set, map_labels


def pick(rng, labels: np.ndarray, c: int, k: int) -> list[int]:
    rows = np.flatnonzero(labels == c)
    return list(rng.choice(rows, size=min(k, len(rows)), replace=False)) if len(rows) else []


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
    sets = []
    for item in args.set:
        label, _, folder = item.partition("=")
        syn = load_shard_set(Path(folder))
        sets.append((label, syn, map_labels(syn.class_names, real.class_names, present=held_classes(syn))[syn.labels]))
    rng = np.random.default_rng(0)
    blank = np.full(real.images.shape[1:], 255, dtype=np.uint8)
    k = args.per_side
    tiles, names = [], []
    for c in spread_classes(real.num_classes, args.rows):
        row = [real.images[i] for i in pick(rng, real.labels, c, k)]
        row += [blank] * (k - len(row))
        for _, syn, labels in sets:
            chosen = [syn.images[i] for i in pick(rng, labels, c, k)]
            row += [blank] + chosen + [blank] * (k - len(chosen))
        tiles += row
        names.append(real.class_names[c])
    ncol = k * (1 + len(sets)) + len(sets)
    grid = tile_images(np.stack(tiles), ncol)
    grid = upscale(grid, 2 * max(grid.shape[:2]))  # 2x, nearest neighbour: small pixels stay visible
    grid = label_rows(grid, names)
    header = "columns: real | " + " | ".join(label for label, _, _ in sets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(grid, args.out)
    print(f"wrote {args.out} ({header})")
    return args.out


if __name__ == "__main__":
    main()
