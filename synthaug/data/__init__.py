"""Real datasets: a spec such as ``cub:/data/CUB_200_2011`` -> one :class:`ImageSet`, its images a view of
the memory-mapped decode cache.

Each published layout is one module behind the ``FORMATS`` registry; every one yields a
:class:`~synthaug.data.catalog.Catalog` that the shared, cached decode stage turns into pixels.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthaug.data import celeba, cub, digits, huggingface, imagefolder, nabirds, stanford_cars, webdataset_format
from synthaug.data.cache import decode_catalog
from synthaug.data.catalog import Catalog, ClassGroup
from synthaug.data.config import DataConfig
from synthaug.data.lookup import Match, resolve_name
from synthaug.data.rows import RowView
from synthaug.data.splits import assign_splits, hold_out_validation, select_shots
from synthaug.errors import SynthaugError
from synthaug.words import count


# strict mode is the --strict flag on the command line and data.strict in a recipe: name both ways out
SKIP_UNREADABLE = "turn strict mode off (drop --strict, or set data.strict = false in the recipe)"


@dataclass(frozen=True)
class DatasetFormat:
    """One published dataset layout and how to read it."""

    name: str
    summary: str
    layout: str
    read: Callable[[Path | str | None, DataConfig], Catalog]
    options: tuple[str, ...] = ()  # DataConfig fields beyond the common ones that this format reads
    default_resolution: int = 64
    raw_path: bool = False  # the reader gets the text after FORMAT: as written (shard patterns, hub ids), not a Path


FORMATS: dict[str, DatasetFormat] = {
    f.name: f
    for f in [
        DatasetFormat("digits", "sklearn's 1,797 real 8x8 handwritten digits, 10 classes; built in, no files",
                      "no path: write just `digits`", lambda root, cfg: digits.read_digits(), default_resolution=8),
        DatasetFormat("imagefolder", "any class-per-folder tree (e.g. Stanford Cars copies)", imagefolder.LAYOUT,
                      lambda root, cfg: imagefolder.read_imagefolder(root)),
        DatasetFormat("cub", "CUB-200-2011 birds", cub.LAYOUT, lambda root, cfg: cub.read_cub(root)),
        DatasetFormat("nabirds", "NABirds v1: 555 visual categories of 404 species", nabirds.LAYOUT,
                      lambda root, cfg: nabirds.read_nabirds(root, cfg.level), options=("level",)),
        DatasetFormat("stanford-cars", "Stanford Cars devkit, 196 classes", stanford_cars.LAYOUT,
                      lambda root, cfg: stanford_cars.read_stanford_cars(root)),
        DatasetFormat("celeba", "aligned CelebA faces: identity or one of 40 binary attributes", celeba.LAYOUT,
                      lambda root, cfg: celeba.read_celeba(root, cfg.target or "identity"), options=("target",)),
        DatasetFormat("celeba-dialog", "CelebA faces with CelebA-Dialog's 5 attributes x 6 levels",
                      celeba.DIALOG_LAYOUT, lambda root, cfg: celeba.read_celeba_dialog(root, cfg.target),
                      options=("target",)),
        DatasetFormat("wds", "real images in WebDataset tar shards, labels in .cls or .json", webdataset_format.LAYOUT,
                      lambda spec, cfg: webdataset_format.read_wds(spec, cfg.label_key), options=("label_key",), raw_path=True),
        DatasetFormat("hf", "a Hugging Face datasets folder (save_to_disk or parquet) or hub id; pip install 'synthaug[hf]'",
                      huggingface.LAYOUT, lambda location, cfg: huggingface.read_huggingface(location, cfg.label_key),
                      options=("label_key",), raw_path=True),
    ]
}
OPTIONS = ("target", "level", "label_key")  # the DataConfig fields only some formats read


def parse_spec(spec: str) -> tuple[DatasetFormat, Path | str | None]:
    """Split ``FORMAT:PATH`` into the format and an absolute path (for ``wds`` and ``hf``: the text as written).

    >>> parse_spec("digits")[0].name
    'digits'
    """
    name, colon, path = spec.partition(":")
    name = name.strip().lower()
    if name not in FORMATS:
        known = ", ".join(FORMATS)
        if not colon and Path(spec).expanduser().is_dir():
            raise SynthaugError(f"{spec!r} is a folder, not a dataset spec; write FORMAT:PATH, e.g. imagefolder:{spec} (formats: {known}).")
        raise SynthaugError(f"Unknown dataset format {name!r} in {spec!r}; use FORMAT:PATH with one of: {known}.")
    fmt = FORMATS[name]
    if fmt.name == "digits":
        if path.strip():
            raise SynthaugError("The digits dataset is built in and takes no path; write just `digits`.")
        return fmt, None
    if not path.strip():
        raise SynthaugError(f"The {name} format needs a path; write {name}:PATH (layout: {fmt.layout}).")
    if fmt.raw_path:
        return fmt, path.strip()
    return fmt, Path(path.strip()).expanduser().resolve()


def read_catalog(config: DataConfig) -> Catalog:
    """What the dataset's annotation files list, without decoding any image (fast)."""
    fmt, root = parse_spec(config.spec)
    defaults = DataConfig()
    for option in OPTIONS:
        if getattr(config, option) != getattr(defaults, option) and option not in fmt.options:
            raise SynthaugError(f"The {fmt.name} format has no {option!r} option; remove it.")
    return fmt.read(root, config)


@dataclass
class ImageSet:
    """A real dataset: uint8 images with labels, splits and provenance, aligned on N.

    ``images`` is a :class:`~synthaug.data.rows.RowView`: the rows of this set in the one memory-mapped
    decode cache, read only where used. It reads like an (N, H, W, C) uint8 array (``len``, ``shape``,
    indexing, iteration, ``np.asarray``); large sets are read in pieces with ``images.iter_chunks(size)``
    and ``images.gather(rows)``. :meth:`split` and :meth:`subset` make views, never copies.
    ``labels`` index ``class_names``; ``class_ids`` are the dataset's own ids for those classes.
    ``attributes`` (N, A) holds levels 0..attribute_levels[a]-1 where the dataset has attributes.
    """

    name: str
    config: DataConfig
    images: RowView  # (N, H, W, C) uint8; an ndarray given here is wrapped
    labels: np.ndarray  # (N,) int64
    splits: np.ndarray  # (N,) "train" / "val" / "test"
    sources: list[str]
    class_names: list[str]
    class_ids: list[int]
    attributes: np.ndarray | None = None
    attribute_names: list[str] = field(default_factory=list)
    attribute_levels: list[int] = field(default_factory=list)
    groups: list[ClassGroup] = field(default_factory=list)
    group_kind: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cache_path: Path | None = None
    from_cache: bool = False
    location: str = ""  # where the images were read from: see source_location()

    def __post_init__(self) -> None:
        if not isinstance(self.images, RowView):
            self.images = RowView(np.asarray(self.images))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, mask: np.ndarray) -> ImageSet:
        """The images where ``mask`` (boolean, or row indices) is true, with the same label space: a view of
        the same pixels, not a copy."""
        mask = np.asarray(mask)
        rows = np.flatnonzero(mask) if mask.dtype == bool else mask.astype(np.int64)
        return dataclasses.replace(
            self,
            images=self.images.select(rows),
            labels=self.labels[rows],
            splits=self.splits[rows],
            sources=[self.sources[i] for i in rows],
            attributes=None if self.attributes is None else self.attributes[rows],
        )

    def split(self, name: str) -> ImageSet:
        """The images of one split ("train", "val" or "test")."""
        return self.subset(self.splits == name)

    def class_counts(self, split: str | None = None) -> np.ndarray:
        labels = self.labels if split is None else self.labels[self.splits == split]
        return np.bincount(labels, minlength=self.num_classes)

    def attribute_counts(self, a: int) -> np.ndarray:
        """Images per level of attribute ``a``."""
        return np.bincount(self.attributes[:, a], minlength=self.attribute_levels[a])

    def resolve(self, name: str) -> Match:
        """The classes a user's name means (exact, then case/punctuation-insensitive; groups expand)."""
        return resolve_name(name, self.class_names, [(g.name, g.members) for g in self.groups], self.config.spec)


def source_location(catalog: Catalog) -> str:
    """Where a catalog's images are read from: the absolute folder, or shard patterns made absolute (a relative spec
    read from another folder names other files), else a hub id as written, or the format of a built-in dataset."""
    if catalog.location is not None:  # shard patterns, relative to the current folder as written
        return "|".join(os.path.abspath(part) for part in catalog.location.split("|"))
    return catalog.format if catalog.root is None else str(catalog.root)  # parse_spec made folders absolute


def shots_note(train_labels: np.ndarray, shots: int, class_names: list[str]) -> str | None:
    """A note when ``shots`` per class is more than some classes have for training: those keep all their images,
    so the low-data subset is not ``shots`` per class (None when every class has enough)."""
    counts = np.bincount(train_labels, minlength=len(class_names))
    short = np.flatnonzero(counts < shots)
    if not len(short):
        return None
    if len(short) == len(class_names):
        return (f"shots_per_class = {shots} is more than any class has for training (the most is {int(counts.max())}), so "
                "every training image is kept; use a smaller shots_per_class for a low-data subset.")
    fewest = int(short[np.argmin(counts[short])])
    one = len(short) == 1
    return (f"shots_per_class = {shots} is more than {len(short)} of the {len(class_names)} classes {'has' if one else 'have'} "
            f"for training (fewest: {class_names[fewest]!r} with {int(counts[fewest])}); {'it keeps all its' if one else 'those keep all their'} "
            "training images.")


def load_dataset(spec: str | DataConfig = "digits", **overrides) -> ImageSet:
    """Read a real dataset, decoding through the on-disk cache (memory-mapped: nothing is read until used).

    Args:
        spec: ``FORMAT:PATH`` or ``digits``, or a whole :class:`DataConfig`.
        **overrides: any :class:`DataConfig` field, e.g. ``resolution=64, shots_per_class=10``.

    Returns:
        The :class:`ImageSet`; classes without readable images are left out of its label space.

    >>> ds = load_dataset("digits", resolution=16)
    >>> ds.images.shape, ds.num_classes
    ((1797, 16, 16, 1), 10)
    """
    config = spec if isinstance(spec, DataConfig) else DataConfig(spec=spec)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(DataConfig)}
    if unknown:
        raise SynthaugError(f"Unknown dataset option {sorted(unknown)[0]!r}; the options are the DataConfig fields.")
    config = dataclasses.replace(config, **overrides)
    fmt, _ = parse_spec(config.spec)
    resolution = config.resolution or fmt.default_resolution
    catalog = read_catalog(config)
    if len(catalog) == 0:
        raise SynthaugError(f"{config.spec} lists no images; check the annotation files.")
    decoded = decode_catalog(catalog, resolution, crop=config.crop)
    skipped = [(catalog.source(i), reason) for i, reason in decoded.skipped]
    log_hint = f" (listed in {decoded.path / 'skipped.log'})" if decoded.path else ""
    if config.strict and skipped:
        source, reason = skipped[0]
        raise SynthaugError(
            f"{count(len(skipped), 'image file')} could not be read{log_hint}, the first {source}: {reason}; "
            f"fix or remove them, or {SKIP_UNREADABLE} to skip them."
        )
    if not len(decoded.kept):
        raise SynthaugError(f"None of the {len(catalog)} images listed in {config.spec} could be read{log_hint}; check the image folder.")
    notes = list(catalog.notes)
    if skipped:
        notes.append(f"{count(len(skipped), 'image file')} could not be read and were skipped{log_hint}.")

    kept = decoded.kept
    old_labels = catalog.labels[kept]
    present = np.unique(old_labels)
    empty = [
        f"{catalog.class_names[c]!r}" + (f" ({catalog.class_lines[c]})" if catalog.class_lines else "")
        for c in sorted(set(range(len(catalog.class_names))) - set(present.tolist()))
    ]
    if empty:
        if config.strict:
            raise SynthaugError(f"{count(len(empty), 'class')} {'has' if len(empty) == 1 else 'have'} no readable images (first: {empty[0]}); add images, or {SKIP_UNREADABLE} "
                                "to leave those classes out.")
        shown = ", ".join(empty[:3]) + (" ..." if len(empty) > 3 else "")
        notes.append(f"{count(len(empty), 'class')} {'has' if len(empty) == 1 else 'have'} no readable images and {'is' if len(empty) == 1 else 'are'} left out: {shown}.")
    new_index = np.full(len(catalog.class_names), -1, dtype=np.int64)
    new_index[present] = np.arange(len(present))
    labels = new_index[old_labels]
    groups = [
        ClassGroup(g.id, g.name, tuple(int(new_index[m]) for m in g.members if new_index[m] >= 0)) for g in catalog.groups
    ]

    splits, note = assign_splits(labels, catalog.splits[kept], len(present), config.split, config.test_fraction, config.seed,
                                 [catalog.class_names[c] for c in present])
    if note:
        notes.append(note)
    splits, note = hold_out_validation(labels, splits, config.val_fraction, config.seed, [catalog.class_names[c] for c in present])
    if note:
        notes.append(note)
    if config.shots_per_class:
        note = shots_note(labels[splits == "train"], config.shots_per_class, [catalog.class_names[c] for c in present])
        if note:
            notes.append(note)
    name = fmt.name if catalog.root is None else f"{fmt.name}-{catalog.root.name}"
    dataset = ImageSet(
        name=name,
        config=config,
        images=RowView(decoded.images),
        labels=labels,
        splits=splits,
        sources=[catalog.source(i) for i in kept],
        class_names=[catalog.class_names[c] for c in present],
        class_ids=[catalog.class_ids[c] for c in present],
        attributes=None if catalog.attributes is None else catalog.attributes[kept],
        attribute_names=list(catalog.attribute_names),
        attribute_levels=list(catalog.attribute_levels),
        groups=groups,
        group_kind=catalog.group_kind,
        skipped=skipped,
        notes=notes,
        cache_path=decoded.path,
        from_cache=decoded.from_cache,
        location=source_location(catalog),
    )
    if config.shots_per_class:
        dataset = dataset.subset(select_shots(labels, splits, config.shots_per_class, config.seed))
    return dataset


__all__ = ["FORMATS", "Catalog", "DataConfig", "DatasetFormat", "ImageSet", "load_dataset", "parse_spec", "read_catalog"]
