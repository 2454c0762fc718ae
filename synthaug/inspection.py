"""What `synthaug inspect` and `synthaug classes` show: class searches and sample grids of a dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synthaug.data import ImageSet
from synthaug.cache import cache_root
from synthaug.data.catalog import Catalog, ClassGroup
from synthaug.data.lookup import search_names, unknown_name_error
from synthaug.grids import label_rows, spread_classes, tile_images, upscale

if TYPE_CHECKING:
    from synthaug.data import DataConfig


@dataclass
class ClassSearch:
    """Classes and groups whose names match a search, with listed image counts per class."""

    classes: list[int]
    groups: list[ClassGroup]
    counts: np.ndarray
    group_of: dict[int, str] = field(default_factory=dict)  # class index -> "id name" of its group


def find_classes(catalog: Catalog, text: str = "", spec: str = "") -> ClassSearch:
    """Classes (and groups, e.g. NABirds species) whose names contain ``text``; all of them for "".

    A group that matches brings its member classes along. No match is an error naming the closest names, or the
    command that lists them all for ``spec`` (the dataset spec as the user wrote it; default: rebuilt from the catalog).
    """
    group_names = [g.name for g in catalog.groups]
    groups = [catalog.groups[i] for i in search_names(text, group_names)] if text else []
    classes = set(search_names(text, catalog.class_names))
    for g in groups:
        classes.update(g.members)
    if text and not classes and not groups:
        where = spec or (f"{catalog.format}:{catalog.location or catalog.root}" if catalog.root or catalog.location else catalog.format)
        raise unknown_name_error(text, catalog.class_names + group_names, where)
    group_of = {m: f"{g.id} {g.name}" for g in catalog.groups for m in g.members}
    counts = np.bincount(catalog.labels, minlength=len(catalog.class_names))
    return ClassSearch(sorted(classes), groups, counts, group_of)


def dataset_grid(ds: ImageSet, per_class: int = 8, max_rows: int = 12, seed: int = 0, min_side: int = 512) -> np.ndarray:
    """One row of ``per_class`` random images for each of up to ``max_rows`` evenly spread classes, with
    the class name at the left of each row, enlarged to at least ``min_side`` pixels.

    A dataset with a single class (e.g. CelebA-Dialog faces) fills every row with that class, unlabelled.
    """
    rng = np.random.default_rng(seed)
    classes = spread_classes(ds.num_classes, max_rows)
    if len(classes) == 1:
        rows = np.flatnonzero(ds.labels == classes[0])
        pick = rng.choice(rows, size=min(len(rows), per_class * max_rows), replace=False)
        return upscale(tile_images(ds.images[np.sort(pick)], per_class), min_side)
    tiles = []
    blank = np.full(ds.images.shape[1:], 255, dtype=np.uint8)
    for c in classes:
        rows = np.flatnonzero(ds.labels == c)
        pick = np.sort(rng.choice(rows, size=min(len(rows), per_class), replace=False)) if len(rows) else []
        tiles += [ds.images[i] for i in pick] + [blank] * (per_class - len(pick))
    grid = upscale(tile_images(np.stack(tiles), per_class), min_side)
    return label_rows(grid, [ds.class_names[c] for c in classes])


def default_grid_path(ds: ImageSet) -> Path:
    """Where `synthaug inspect` writes a dataset's sample grid: in its cache folder, or for a built-in
    dataset that has none (digits) under ``$SYNTHAUG_CACHE/grids/``."""
    if ds.cache_path:
        return Path(ds.cache_path) / "grid.png"
    return cache_root() / "grids" / f"{ds.name}-{ds.resolution}px.png"


def inspect_dataset(config: DataConfig, grid: str | Path | None = None) -> tuple[ImageSet, Path]:
    """Decode a dataset (or read it from its cache) and write its sample grid: what `synthaug inspect` shows.

    Args:
        config: the dataset and how to read it.
        grid: where to write the sample grid PNG, a file whose folder can be made (checked first); default:
            :func:`default_grid_path`.

    Returns:
        The dataset, and where its grid was written.
    """
    from synthaug.data import load_dataset
    from synthaug.files import check_output_path
    from synthaug.grids import save_png

    if grid is not None:
        check_output_path(Path(grid), "grid", folder=False)
    ds = load_dataset(config)
    path = Path(grid) if grid is not None else default_grid_path(ds)
    save_png(dataset_grid(ds), path)
    return ds, path
