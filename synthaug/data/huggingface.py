"""Real images in a Hugging Face ``datasets`` dataset: ``hf:PATH`` (a folder written by ``save_to_disk``, or a
folder of parquet files) or ``hf:OWNER/NAME`` (the hub) -> a :class:`~synthaug.data.catalog.Catalog` whose
images are read from the dataset's (memory-mapped) Arrow tables. Needs ``pip install 'synthaug[hf]'``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import numpy as np

from synthaug.data.catalog import Catalog
from synthaug.errors import SynthaugError
from synthaug.words import count

LAYOUT = (
    "a folder written by datasets' save_to_disk (a Dataset, or a DatasetDict whose train/validation/test splits "
    "become the official split), a folder of .parquet files (split by file name, e.g. data/train-*.parquet), or a "
    "hub id OWNER/NAME; with an Image feature (the one named image where there are several) and a ClassLabel "
    "feature (data.label_key picks one of several, or names a plain integer or string label column)"
)
SPLIT_ALIASES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise SynthaugError("The hf: format needs the datasets package; install it with pip install 'synthaug[hf]'.") from None
    return datasets


@contextlib.contextmanager
def quiet(datasets):
    """datasets' own progress bars and log lines off (synthaug reports its own progress, and a failure as one
    sentence: datasets would print e.g. "Failed to read schema ..." before it), restored afterwards."""
    import logging

    was_disabled = datasets.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not was_disabled:
            datasets.enable_progress_bars()


def open_location(location: str):
    """(the Dataset or DatasetDict at ``location``, the root for cache and names)."""
    datasets = import_datasets()
    from synthaug.cache import cache_root

    path = Path(location).expanduser()
    with quiet(datasets):
        if path.is_dir():
            path = path.resolve()
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                try:
                    return datasets.load_from_disk(str(path)), path
                except Exception as e:  # a damaged save_to_disk folder raises many kinds of errors
                    raise SynthaugError(f"{path} could not be read as a saved dataset ({first_line(e)}); write it again with "
                                        "save_to_disk.") from None
            if not any(path.rglob("*.parquet")):
                raise SynthaugError(f"{path} holds neither a dataset written by save_to_disk nor .parquet files; "
                                    f"expected {LAYOUT}.")
            try:  # its Arrow copy goes into synthaug's cache, next to the decoded images
                return datasets.load_dataset(str(path), cache_dir=str(cache_root() / "huggingface")), path
            except Exception as e:
                raise SynthaugError(f"The parquet files in {path} could not be read ({first_line(e)}); check that they are "
                                    "a dataset's parquet files.") from None
        if path.exists():
            raise SynthaugError(f"{path} is a file; give the folder that holds the dataset (layout: {LAYOUT}).")
        if not HUB_ID.match(location) or location.startswith((".", "/", "~")):
            raise SynthaugError(f"{location} does not exist; give a dataset folder, or a hub id such as OWNER/NAME.")
        try:
            return datasets.load_dataset(location), Path(location)
        except Exception as e:  # network, authentication, unknown id ...
            raise SynthaugError(f"No folder {location!r} here, and the Hugging Face hub could not give a dataset of that name "
                                f"({first_line(e)}); check the path or id, and the network connection.") from None


def first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def named_splits(data) -> tuple[list[tuple[str, object]], list[str]]:
    """[(synthaug split name, Dataset)] and notes: a DatasetDict's train/validation/test splits, or one unsplit Dataset."""
    if not hasattr(data, "keys"):
        return [("", data)], []
    names = list(data.keys())
    known = [n for n in names if n.lower() in SPLIT_ALIASES]
    if not known:  # e.g. one split called "default": no official split
        return [("", data[n]) for n in names], []
    notes = []
    unknown = [n for n in names if n not in known]
    if unknown:
        notes.append(f"The dataset's splits {', '.join(repr(n) for n in unknown)} are not train, validation or test, "
                     "so they are left out.")
    return [(SPLIT_ALIASES[n.lower()], data[n]) for n in known], notes


def choose_features(features: dict, label_key: str, location: str) -> tuple[str, str]:
    """(image feature, label feature) of a dataset's features."""
    datasets = import_datasets()
    where = f"Dataset {location!r}"
    listed = ", ".join(features)
    images = [n for n, f in features.items() if isinstance(f, datasets.Image)]
    if not images:
        raise SynthaugError(f"{where} has no image feature (its features: {listed}); it needs a column of type datasets.Image.")
    if len(images) > 1 and "image" not in images:
        raise SynthaugError(f"{where} has several image features ({', '.join(images)}) and none named 'image'; rename the "
                            "one to read to image.")
    image = "image" if "image" in images else images[0]
    if label_key:
        if label_key not in features:
            raise SynthaugError(f"{where} has no feature {label_key!r} (its features: {listed}); set data.label_key to one of them.")
        f = features[label_key]
        plain = isinstance(f, datasets.Value) and (f.dtype.startswith(("int", "uint")) or f.dtype in ("string", "large_string"))
        if not (isinstance(f, datasets.ClassLabel) or plain):
            raise SynthaugError(f"Feature {label_key!r} of dataset {location!r} is {f!r}, not a label; data.label_key must name a ClassLabel, "
                                "integer or string feature.")
        return image, label_key
    labels = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if not labels:
        raise SynthaugError(f"{where} has no ClassLabel feature (its features: {listed}); name its label column with data.label_key.")
    if len(labels) > 1:
        raise SynthaugError(f"{where} has several ClassLabel features ({', '.join(labels)}); choose one with data.label_key.")
    return image, labels[0]


class RowReader:
    """``read(i) -> bytes`` of image i, from the split datasets' image columns (undecoded)."""

    def __init__(self, parts: list, starts: np.ndarray, rows: np.ndarray, image: str, root: Path | None):
        datasets = import_datasets()
        self.parts = [p.select_columns([image]).cast_column(image, datasets.Image(decode=False)) for p in parts]
        self.starts, self.rows, self.image, self.root = starts, rows, image, root

    def __call__(self, i: int) -> bytes:
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        value = self.parts[part][int(self.rows[i])][self.image] or {}  # None: no image in this row
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):  # an image stored by reference
            path = Path(value["path"])
            if not path.is_absolute() and self.root is not None:
                path = self.root / path
            return path.read_bytes()
        return b""


def read_huggingface(location: str, label_key: str = "") -> Catalog:
    """Read ``hf:`` data (folder, parquet folder or hub id) into a catalog; rows without a label (-1) are left out."""
    data, root = open_location(location)
    parts, notes = named_splits(data)
    image, label = choose_features(dict(parts[0][1].features), label_key, location)
    datasets = import_datasets()
    feature = parts[0][1].features[label]
    for name, part in parts[1:]:
        if label not in part.features or image not in part.features:
            raise SynthaugError(f"Split {name!r} of dataset {location!r} lacks the feature {label if label not in part.features else image!r} "
                                "the others have; give every split the same features.")

    raw = [part.with_format("numpy", columns=[label])[:][label] for _, part in parts]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        values = [np.asarray(v, dtype=np.int64) for v in raw]
    elif feature.dtype in ("string", "large_string"):
        names = sorted({str(v) for vs in raw for v in vs})
        index = {n: i for i, n in enumerate(names)}
        values = [np.array([index[str(v)] for v in vs], dtype=np.int64) for vs in raw]
    else:
        present = sorted({int(v) for vs in raw for v in vs if v >= 0})
        index = {c: i for i, c in enumerate(present)}
        names = [str(c) for c in present]
        values = [np.array([index.get(int(v), -1) for v in vs], dtype=np.int64) for vs in raw]
    labels, splits, part_rows, starts, kept_parts, files = [], [], [], [], [], []
    unlabelled = 0
    for (name, part), vs in zip(parts, values):
        keep = np.flatnonzero(vs >= 0)
        unlabelled += len(vs) - len(keep)
        if vs.size and vs.max() >= len(names):
            raise SynthaugError(f"Feature {label!r} of dataset {location!r} holds {int(vs.max())}, beyond its {len(names)} class names; "
                                "fix the dataset's labels.")
        if not len(keep):
            continue
        starts.append(sum(len(r) for r in part_rows))
        kept_parts.append(part)
        part_rows.append(keep)
        labels.append(vs[keep])
        splits += [name] * len(keep)
        files += [f"{name or 'rows'}[{j}]" for j in keep.tolist()]
    if unlabelled:
        notes.append(f"{count(unlabelled, 'image')} {'has' if unlabelled == 1 else 'have'} no label (-1) and {'is' if unlabelled == 1 else 'are'} left out.")
    if not files:
        raise SynthaugError(f"Dataset {location!r} has no labelled images; check feature {label!r}.")
    fingerprint = json.dumps([[name, part._fingerprint, len(part), image, label,
                               [[f["filename"], *stat_of(f["filename"])] for f in part.cache_files]] for name, part in parts])
    return Catalog(
        format="hf",
        root=root,
        class_names=names,
        class_ids=list(range(len(names))),
        labels=np.concatenate(labels),
        splits=np.array(splits),
        files=files,
        notes=notes,
        read_image=RowReader(kept_parts, np.array(starts, dtype=np.int64), np.concatenate(part_rows), image,
                             root if root.is_absolute() else None),
        fingerprint=fingerprint,
    )


def stat_of(filename: str) -> tuple[int, int]:
    try:
        st = os.stat(filename)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1
