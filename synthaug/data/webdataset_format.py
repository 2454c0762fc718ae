"""Real images in WebDataset shards: ``wds:PATTERN`` (e.g. ``wds:/data/train-{000000..000099}.tar``) -> a
:class:`~synthaug.data.catalog.Catalog` whose images are read straight from the tar members.

A shard is indexed once (member offsets, labels) and the index cached beside the decode cache, keyed by the
shard's size and mtime; the decode stage reads each image's bytes at its offset, in parallel.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthaug.data.catalog import Catalog
from synthaug.errors import SynthaugError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference when a sample has several
CLASS_NAME_FIELD = "class_name"
INDEX_VERSION = 1
SPLIT_NAMES = {1: ("",), 2: ("train", "test"), 3: ("train", "val", "test")}

LAYOUT = (
    "WebDataset tar shards matching PATTERN (brace ranges as in webdataset, e.g. train-{000000..000099}.tar; "
    "quote it in a shell); each sample an image (.jpg, .jpeg, .png or .webp) and its label: a class index in "
    ".cls, or a .json field named by data.label_key holding a class index or name; class names from classes.txt "
    "beside the shards (one per line, in index order), else from the JSON's class_name field; an official split "
    "by shard pattern: 'TRAIN_PATTERN|TEST_PATTERN' or 'TRAIN|VAL|TEST'"
)


@dataclass
class ShardSample:
    """One sample of a shard, as its index records it."""

    key: str
    image: str  # member name of the image
    offset: int  # where the image's bytes start in the tar file
    size: int
    cls: str | None  # the .cls member's text
    meta: str | None  # the .json member's text
    extensions: list[str]


def expand_pattern(pattern: str) -> list[Path]:
    """Shard paths of one pattern: brace ranges expanded (as webdataset does), then shell wildcards, in order.
    A pattern that matches no file, or names a shard that does not exist, is an error."""
    import braceexpand

    pattern = pattern.strip()
    if not pattern:
        raise SynthaugError(f"A wds: spec needs a shard pattern, e.g. wds:/data/train-{{000000..000099}}.tar (layout: {LAYOUT}).")
    shards: list[Path] = []
    for item in braceexpand.braceexpand(os.path.expanduser(pattern)):
        if glob.has_magic(item):
            shards += sorted(Path(p).resolve() for p in glob.glob(item))
        else:
            shards.append(Path(item).resolve())
    present = [p for p in shards if p.is_file()]
    if not present:
        raise SynthaugError(f"No shards match {pattern!r}; check the path and the brace range, e.g. train-{{000000..000099}}.tar.")
    if len(present) < len(shards):
        absent = next(p for p in shards if not p.is_file())
        raise SynthaugError(f"{len(shards) - len(present)} of the {len(shards)} shards named by {pattern!r} do not exist, "
                            f"the first {absent}; fix the brace range or restore the shards.")
    return shards


def scan_shard(path: Path) -> list[ShardSample]:
    """Every sample of one uncompressed tar shard: where its image lies, and the text of its .cls and .json."""
    from webdataset.tariterators import base_plus_ext

    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = base_plus_ext(member.name)
                if key is None or os.path.basename(member.name).startswith("."):
                    continue
                sample = samples.setdefault(key, {"members": {}})
                ext = ext.lower()
                sample["members"][ext] = member
                if ext in ("cls", "json"):
                    sample[ext] = tar.extractfile(member).read().decode("utf-8", errors="replace")
    except tarfile.CompressionError:
        raise SynthaugError(f"{path} is compressed; decompress the shards (e.g. gunzip) so images can be read in place.") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, tarfile.ReadError) and _is_compressed(path):
            raise SynthaugError(f"{path} is compressed; decompress the shards (e.g. gunzip) so images can be read in place.") from None
        raise SynthaugError(f"{path} is not a readable tar file ({e}); re-create it, or leave it out of the pattern.") from None
    out = []
    for key, sample in samples.items():
        members = sample["members"]
        ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
        if ext is None:
            found = ", ".join("." + e for e in sorted(members))
            raise SynthaugError(f"Sample {key!r} in {path} has no image (.jpg, .jpeg, .png or .webp), only {found}; "
                                "store each image under one of those extensions.")
        image = members[ext]
        out.append(ShardSample(key, image.name, image.offset_data, image.size, sample.get("cls"), sample.get("json"),
                               sorted(members)))
    return out


def _is_compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        magic = f.read(6)
    return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00" or magic[:4] == b"\x28\xb5\x2f\xfd"


def shard_index(path: Path) -> list[ShardSample]:
    """:func:`scan_shard`, cached on disk (sha256-checked) and keyed by the shard's path, size and mtime."""
    from synthaug.cache import cache_root, cache_file_is_intact, write_cache_file

    st = path.stat()
    tag = hashlib.sha256(json.dumps([INDEX_VERSION, str(path), st.st_size, st.st_mtime_ns, st.st_ino]).encode()).hexdigest()
    index_file = cache_root() / "wds-index" / f"{path.stem}-{tag[:24]}.json"
    if cache_file_is_intact(index_file):
        try:
            return [ShardSample(**s) for s in json.loads(index_file.read_text())]
        except (OSError, ValueError, TypeError):
            pass
    samples = scan_shard(path)
    write_cache_file(index_file, json.dumps([s.__dict__ for s in samples]).encode())
    return samples


class ShardReader:
    """``read(i) -> bytes`` of image i: a read at its offset in its shard (safe from many threads)."""

    def __init__(self, shards: list[Path], shard_of: np.ndarray, offsets: np.ndarray, sizes: np.ndarray):
        self.shards, self.shard_of, self.offsets, self.sizes = shards, shard_of, offsets, sizes

    def __call__(self, i: int) -> bytes:
        with open(self.shards[self.shard_of[i]], "rb") as f:
            data = os.pread(f.fileno(), int(self.sizes[i]), int(self.offsets[i]))
        if len(data) != self.sizes[i]:
            raise ValueError("the shard ends before the image does (truncated or changed since it was indexed)")
        return data


def read_label(sample: ShardSample, shard: Path, label_key: str) -> tuple[int | str, str | None]:
    """(label, class name from the JSON or None) of one sample."""
    sample_name = f"sample {sample.key!r} in {shard}"
    meta = None
    if sample.meta is not None:
        try:
            meta = json.loads(sample.meta)
        except ValueError:
            if label_key:
                raise SynthaugError(f"The .json of {sample_name} is not valid JSON; fix or re-create the shard.") from None
    name = meta.get(CLASS_NAME_FIELD) if isinstance(meta, dict) else None
    name = str(name) if name is not None else None
    if not label_key:
        if sample.cls is None:
            hint = "name the .json field that holds the label with data.label_key" if sample.meta is not None else \
                "give every sample its class index in a .cls member"
            members = ", ".join("." + e for e in sample.extensions)
            raise SynthaugError(f"Sample {sample.key!r} in {shard} has no .cls label (only {members}); {hint}.")
        try:
            return int(sample.cls.strip()), name
        except ValueError:
            raise SynthaugError(f"The .cls of {sample_name} holds {sample.cls.strip()[:40]!r} where a class index was expected; "
                                "fix the shard, or read labels from its .json with data.label_key.") from None
    if meta is None:
        raise SynthaugError(f"Sample {sample.key!r} in {shard} has no .json to read data.label_key {label_key!r} from; "
                            "give every sample a .json, or clear data.label_key to read .cls labels.")
    if not isinstance(meta, dict) or label_key not in meta:
        keys = ", ".join(sorted(meta)) if isinstance(meta, dict) else "none"
        raise SynthaugError(f"The .json of {sample_name} has no field {label_key!r} (its fields: {keys}); set data.label_key to "
                            "the field that holds the label.")
    value = meta[label_key]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SynthaugError(f"Field {label_key!r} of {sample_name} holds {value!r}; a label must be a class index or a class name.")
    return value, name


def read_class_file(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise SynthaugError(f"{path} is not a UTF-8 text file; write one class name per line.") from None
    if len(set(names)) < len(names):
        repeated = next(n for n in names if names.count(n) > 1)
        raise SynthaugError(f"{path} names the class {repeated!r} twice; each line must name a different class.")
    return names


def read_wds(spec: str, label_key: str = "") -> Catalog:
    """Read shards named by ``PATTERN``, ``TRAIN|TEST`` or ``TRAIN|VAL|TEST`` patterns into a catalog."""
    patterns = spec.split("|")
    if len(patterns) not in SPLIT_NAMES:
        raise SynthaugError(f"{spec!r} has {len(patterns)} '|'-separated patterns; write PATTERN, TRAIN|TEST or TRAIN|VAL|TEST.")
    shards, split_of_shard = [], []
    for pattern, split in zip(patterns, SPLIT_NAMES[len(patterns)]):
        found = expand_pattern(pattern)
        shards += found
        split_of_shard += [split] * len(found)
    seen: set[Path] = set()
    for shard in shards:
        if shard in seen:
            raise SynthaugError(f"{shard} is named twice in {spec!r}; a shard belongs to one split.")
        seen.add(shard)
    root = shards[0].parent
    class_file = read_class_file(root / "classes.txt")

    files, raw_labels, splits, shard_of, offsets, sizes = [], [], [], [], [], []
    json_names: dict[int | str, str] = {}
    for s, (shard, split) in enumerate(zip(shards, split_of_shard)):
        rel = os.path.relpath(shard, root)
        for sample in shard_index(shard):
            label, name = read_label(sample, shard, label_key)
            if name is not None and isinstance(label, int):
                if json_names.setdefault(label, name) != name:
                    raise SynthaugError(f"Class {label} is called both {json_names[label]!r} and {name!r} in the .json "
                                        f"{CLASS_NAME_FIELD} fields (sample {sample.key!r} in {shard}); give each class one name.")
            files.append(f"{rel}/{sample.image}")
            raw_labels.append(label)
            splits.append(split)
            shard_of.append(s)
            offsets.append(sample.offset)
            sizes.append(sample.size)
    if not files:
        raise SynthaugError(f"The shards of {spec!r} hold no samples; check that they are WebDataset tar files.")

    kinds = {type(v) for v in raw_labels}
    if len(kinds) > 1:
        raise SynthaugError(f"The labels in {spec!r} mix class indices and class names; use one kind throughout.")
    notes = []
    if str in kinds:  # class names as labels
        present = sorted(set(raw_labels))
        names = class_file if class_file is not None else present
        unknown = sorted(set(present) - set(names))
        if unknown:
            raise SynthaugError(f"Label {unknown[0]!r} is not a class in {root / 'classes.txt'}; add it there, or fix the label.")
        index = {n: i for i, n in enumerate(names)}
        labels = [index[v] for v in raw_labels]
        class_ids = list(range(len(names)))
    else:
        if min(raw_labels) < 0:
            raise SynthaugError(f"The labels in {spec!r} include {min(raw_labels)}; a class index is 0 or more.")
        if class_file is not None:
            if max(raw_labels) >= len(class_file):
                raise SynthaugError(f"Label {max(raw_labels)} is beyond the {len(class_file)} classes in {root / 'classes.txt'}; "
                                    "add the missing names, or fix the labels.")
            names, class_ids, labels = class_file, list(range(len(class_file))), raw_labels
        else:
            present = sorted(set(raw_labels))
            index = {c: i for i, c in enumerate(present)}
            names = [json_names.get(c, str(c)) for c in present]
            class_ids, labels = present, [index[v] for v in raw_labels]
            if not json_names:
                notes.append(f"No classes.txt beside the shards nor {CLASS_NAME_FIELD} in their .json, so classes are named "
                             "by their index.")
    fingerprint = json.dumps([[str(p), p.stat().st_size, p.stat().st_mtime_ns, split] for p, split in zip(shards, split_of_shard)])
    return Catalog(
        format="wds",
        root=root,
        class_names=list(names),
        class_ids=list(class_ids),
        labels=np.array(labels, dtype=np.int64),
        splits=np.array(splits),
        files=files,
        notes=notes,
        read_image=ShardReader(shards, np.array(shard_of), np.array(offsets, dtype=np.int64), np.array(sizes, dtype=np.int64)),
        fingerprint=fingerprint,
        location=spec,
    )

