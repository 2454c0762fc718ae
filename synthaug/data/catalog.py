"""What a dataset's annotation files say, before any image is decoded: files, labels, splits, boxes.

Every format module turns its published layout into a :class:`Catalog`; the shared decode stage
(:mod:`synthaug.data.cache`) turns a catalog into pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthaug.errors import SynthaugError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClassGroup:
    """A named set of classes one name can ask for, e.g. a NABirds species and its visual categories."""

    id: int
    name: str
    members: tuple[int, ...]  # indices into Catalog.class_names


@dataclass
class Catalog:
    """One dataset as its annotation files describe it. Arrays are aligned on the N images.

    ``splits`` holds "train", "val", "test", or "" where the layout has no official split.
    ``boxes`` holds x, y, width, height in source pixels (NaN where an image has none), measured on
    an image of size ``frames`` (width, height) when the layout lists sizes, so a resized copy of
    the dataset still crops the right region.
    In-memory datasets (digits) give ``pixels`` instead of ``files``. Images that are not files of their
    own (tar members, rows of a dataset file) come from ``read_image(i) -> bytes``; ``files`` then names each
    image for messages, and ``fingerprint`` identifies the sources for the decode cache (it changes when they do).
    ``location`` is the source as the spec wrote it where ``root`` alone does not name it (shard patterns).
    """

    format: str
    root: Path | None
    class_names: list[str]
    class_ids: list[int]
    labels: np.ndarray
    splits: np.ndarray
    files: list[str] | None = None
    lines: list[str] | None = None
    boxes: np.ndarray | None = None
    frames: np.ndarray | None = None
    pixels: np.ndarray | None = None
    attributes: np.ndarray | None = None
    attribute_names: list[str] = field(default_factory=list)
    attribute_levels: list[int] = field(default_factory=list)
    class_lines: list[str] | None = None  # where each class is declared, for messages
    groups: list[ClassGroup] = field(default_factory=list)
    group_kind: str = ""  # what a group is called, e.g. "species"
    notes: list[str] = field(default_factory=list)
    read_image: Callable[[int], bytes] | None = None
    fingerprint: str | None = None
    location: str | None = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.splits = np.asarray(self.splits, dtype="<U5")
        for name in ("files", "lines", "boxes", "frames", "pixels", "attributes"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"catalog {name} has {len(value)} rows for {n} labels")
        if len(self.class_ids) != len(self.class_names):
            raise ValueError("catalog class_ids and class_names differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def source(self, i: int) -> str:
        """The file an image came from, as a path relative to the dataset root (or an index)."""
        return self.files[i] if self.files is not None else f"{self.format}[{i}]"


def require_file(root: Path, name: str, layout: str) -> Path:
    """Return ``root/name``, or fail with a sentence naming the missing file and the layout."""
    path = root / name
    if not path.is_file():
        raise SynthaugError(f"{path} is missing; expected the layout {layout}.")
    return path


def require_dir(root: Path, layout: str) -> Path:
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise SynthaugError(f"{root} {what}; expected a folder with the layout {layout}.")
    return root


def read_rows(path: Path, num_fields: int, *, rest: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for each non-blank line of a whitespace-separated annotation file.

    With ``rest=True`` the last field takes the rest of the line (class names with spaces).
    A line with the wrong number of fields is an error naming the file and line.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise SynthaugError(f"{path} is not a UTF-8 text file; restore the original annotation file.") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(None, num_fields - 1) if rest else line.split()
        if len(fields) != num_fields:
            raise SynthaugError(
                f"{path.name} line {number} has {len(fields)} fields where {num_fields} were expected "
                f"({line.strip()[:60]!r}); fix or remove that line."
            )
        yield number, [f.strip() for f in fields]


def parse_int(value: str, path: Path, number: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise SynthaugError(
            f"{path.name} line {number} has {value!r} where a whole number was expected; fix that line."
        ) from None


def parse_float(value: str, path: Path, number: int) -> float:
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not math.isfinite(x):  # float() accepts "nan" and "inf"
        raise SynthaugError(f"{path.name} line {number} has {value!r} where a finite number was expected; fix that line.")
    return x


def read_keyed(path: Path, num_fields: int, *, rest: bool = False) -> dict[str, tuple[int, list[str]]]:
    """Read rows keyed by their first field into {key: (line number, other fields)}.

    A repeated key is an error naming both lines.
    """
    out: dict[str, tuple[int, list[str]]] = {}
    for number, fields in read_rows(path, num_fields, rest=rest):
        key = fields[0]
        if key in out:
            raise SynthaugError(f"{path.name} line {number} repeats {key!r} from line {out[key][0]}; remove one of them.")
        out[key] = (number, fields[1:])
    return out
