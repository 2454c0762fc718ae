"""What a generator is conditioned on: a class, or several attributes with discrete levels.

The schema is saved in every run folder (``condition.json``) so a run can be sampled and its
classes looked up without the real dataset at hand. Conditions are integer tensors: a class id
(B,) where id ``num_classes`` is the null condition, or attribute levels (B, A) where level
``levels[a]`` is attribute a's null.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from synthaug.data.lookup import Match, normalize_name, resolve_name, unknown_name_error
from synthaug.errors import SynthaugError
from synthaug.recipe import CONDITION_KINDS  # declared once, with the recipe key



@dataclass(frozen=True)
class ConditionSchema:
    """The condition space of one generator, in the real dataset's label space."""

    kind: str  # "class" or "attributes"
    class_names: tuple[str, ...]
    class_ids: tuple[int, ...]
    resolution: int
    channels: int
    dataset: str = ""  # the dataset spec the generator was trained on
    attribute_names: tuple[str, ...] = ()
    attribute_levels: tuple[int, ...] = ()
    label_attribute: int = -1  # attributes whose level is the class label (CelebA-Dialog target), or -1
    groups: tuple[tuple[int, str, tuple[int, ...]], ...] = ()
    group_kind: str = ""
    num_train_images: int = 0
    train_counts: tuple[int, ...] = field(default=())  # training images per class
    train_sources_sha256: str = ""  # the file names of the real images the generator saw (sorted)
    # what it saw in them, each image keyed by its file (see training_data_sha256); "" in runs written before
    train_pixels_sha256: str = ""  # the decoded uint8 pixels
    train_labels_sha256: str = ""  # the class (index and name) and attribute levels
    train_location: str = ""  # where they were read from (a relative spec read from another folder is other data)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_embeddings(self) -> int:
        """Rows of the embedding table: every class (or attribute level) plus the null rows."""
        if self.kind == "class":
            return self.num_classes + 1
        return sum(n + 1 for n in self.attribute_levels)

    def null(self, n: int, device=None) -> torch.Tensor:
        """The null (unconditional) condition for a batch of ``n``."""
        if self.kind == "class":
            return torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        return torch.tensor(self.attribute_levels, dtype=torch.long, device=device).expand(n, -1).clone()

    def resolve(self, name: str) -> Match:
        """Classes a user's name means (exact, normalized, groups such as NABirds species)."""
        return resolve_name(name, self.class_names, [(g[1], g[2]) for g in self.groups], self.dataset or "this run")

    def parse_attributes(self, text: str) -> tuple[int, ...]:
        """'bangs=3,smiling=5' -> a level per attribute, with the null level for those not named."""
        if self.kind != "attributes":
            raise SynthaugError("This run is class-conditional; use --class or --species instead of --attr.")
        levels = list(self.attribute_levels)  # null everywhere
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise SynthaugError(f"--attr item {part!r} is not NAME=LEVEL; write e.g. --attr bangs=3,smiling=5.")
            matches = [i for i, a in enumerate(self.attribute_names) if normalize_name(a) == normalize_name(key)]
            if not matches:
                raise unknown_name_error(key, self.attribute_names, self.dataset or "this run", kind="attribute")
            a = matches[0]
            try:
                level = int(value)
            except ValueError:
                level = -1
            if not 0 <= level < self.attribute_levels[a]:
                raise SynthaugError(
                    f"Level {value.strip()!r} for {self.attribute_names[a]} is out of range; use 0 to {self.attribute_levels[a] - 1}."
                )
            levels[a] = level
        if levels == list(self.attribute_levels):
            raise SynthaugError("--attr names no attribute; write e.g. --attr bangs=3,smiling=5.")
        return tuple(levels)

    def label_of_attributes(self, levels: tuple[int, ...]) -> int:
        """The class label of an attribute condition (-1 when the labelling attribute is unspecified)."""
        if self.label_attribute < 0:
            return 0 if self.num_classes == 1 else -1
        level = levels[self.label_attribute]
        return self.class_ids.index(level) if level in self.class_ids else -1

    def save(self, path: Path) -> None:
        from synthaug.files import write_text_atomic

        write_text_atomic(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> ConditionSchema:
        """The schema saved in a run's ``condition.json``; a damaged file is an error that names it."""
        try:
            data = json.loads(Path(path).read_text())
            for key in ("class_names", "class_ids", "attribute_names", "attribute_levels", "train_counts"):
                data[key] = tuple(data.get(key, ()))
            data["groups"] = tuple((g[0], g[1], tuple(g[2])) for g in data.get("groups", ()))
            return cls(**data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):  # not JSON, or not a schema's fields
            raise SynthaugError(f"{path} is damaged (it is not the condition schema synthaug wrote); restore it, or run "
                                "synthaug train for this run again to rewrite it.") from None


def resolve_kind(kind: str, ds) -> str:
    """What ``generator.condition`` means for a dataset: ``auto`` is attributes when the dataset has them and
    a single class (CelebA-Dialog faces), else the class. The benchmark's classifiers predict the same."""
    if kind == "auto":
        return "attributes" if ds.attributes is not None and ds.num_classes == 1 else "class"
    return kind


def schema_from_dataset(ds, kind: str = "auto") -> ConditionSchema:
    """The condition schema for training on an :class:`~synthaug.data.ImageSet`.

    ``auto`` conditions on attributes when the dataset has them and a single class (CelebA-Dialog
    faces), and on the class otherwise.
    """
    if kind not in CONDITION_KINDS:
        raise SynthaugError(f"generator.condition {kind!r} is not known; use one of {', '.join(CONDITION_KINDS)}.")
    kind = resolve_kind(kind, ds)
    if kind == "attributes" and ds.attributes is None:
        raise SynthaugError(f"{ds.config.spec} has no attributes; set generator.condition to class.")
    label_attribute = -1
    if kind == "attributes" and ds.config.target:
        names = [normalize_name(a) for a in ds.attribute_names]
        if normalize_name(ds.config.target) in names:
            label_attribute = names.index(normalize_name(ds.config.target))
    groups = tuple((g.id, g.name, tuple(g.members)) for g in ds.groups if g.members)
    pixels, labels = training_data_sha256(ds)
    return ConditionSchema(
        kind=kind,
        class_names=tuple(ds.class_names),
        class_ids=tuple(int(c) for c in ds.class_ids),
        resolution=ds.resolution,
        channels=ds.channels,
        dataset=ds.config.spec,
        attribute_names=tuple(ds.attribute_names) if kind == "attributes" else (),
        attribute_levels=tuple(int(n) for n in ds.attribute_levels) if kind == "attributes" else (),
        label_attribute=label_attribute,
        groups=groups,
        group_kind=ds.group_kind,
        num_train_images=len(ds),
        train_counts=tuple(int(n) for n in ds.class_counts()),
        train_sources_sha256=sources_sha256(ds.sources),
        train_pixels_sha256=pixels,
        train_labels_sha256=labels,
        train_location=ds.location,
    )


def sources_sha256(sources: list[str]) -> str:
    """sha256 of the sorted source files of a set of real images (the leakage check compares these)."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(sources)).encode()).hexdigest()


def training_data_sha256(ds) -> tuple[str, str]:
    """(pixels, labels): sha256s of what a generator trains on in an :class:`~synthaug.data.ImageSet`, each image
    keyed by its source file, so the order of the rows does not count: its decoded uint8 pixels (read once, in
    pieces), and its class index and name with its attribute levels."""
    import hashlib

    digests = np.empty((len(ds), 32), dtype=np.uint8)  # one sha256 per image
    row = 0
    for chunk in ds.images.iter_chunks(4096):
        for image in chunk:
            digests[row] = np.frombuffer(hashlib.sha256(np.ascontiguousarray(image)).digest(), dtype=np.uint8)
            row += 1
    pixels = hashlib.sha256(json.dumps(list(ds.images.shape[1:])).encode())
    labels = hashlib.sha256()
    attributes = None if ds.attributes is None else np.asarray(ds.attributes, dtype=np.int64)
    for i in sorted(range(len(ds)), key=ds.sources.__getitem__):
        source, label = ds.sources[i].encode() + b"\0", int(ds.labels[i])
        pixels.update(source + digests[i].tobytes())
        labels.update(source + f"{label}\t{ds.class_names[label]}\0".encode() + (b"" if attributes is None else attributes[i].tobytes()))
    return pixels.hexdigest(), labels.hexdigest()


def training_data_changes(old: ConditionSchema, new: ConditionSchema, location: bool = True) -> list[str]:
    """How the real training images ``new`` records differ from those of ``old``, in words (empty when they are the
    same); with ``location``, being read from another place counts too. A schema written before synthaug recorded
    pixels and labels is compared by its file names only."""
    changes = []
    if location and old.train_location and old.train_location != new.train_location:
        changes.append(f"{new.dataset} now resolves to {new.train_location}, not {old.train_location}")
    if old.train_sources_sha256 != new.train_sources_sha256:
        before, after = dict(zip(old.class_names, old.train_counts)), dict(zip(new.class_names, new.train_counts))
        counts = [f"{name!r} {before.get(name, 0)} -> {after.get(name, 0)} images" for name in [*before, *(n for n in after if n not in before)]
                  if before.get(name, 0) != after.get(name, 0)] if old.train_counts else []
        shown = ", ".join(counts[:3]) + (f" and {len(counts) - 3} more classes" if len(counts) > 3 else "")
        changes.append("files were added, removed or renamed" + (f" ({shown})" if counts else ""))
    else:
        if old.train_pixels_sha256 and old.train_pixels_sha256 != new.train_pixels_sha256:
            changes.append("the same files hold other pixels (edited or replaced in place)")
        if old.train_labels_sha256 and old.train_labels_sha256 != new.train_labels_sha256:
            changes.append("the same files have other labels")
    return changes


def encode_dataset(schema: ConditionSchema, ds) -> np.ndarray:
    """Each image's condition: its class (N,) or its attribute levels (N, A)."""
    if schema.kind == "class":
        return ds.labels.astype(np.int64)
    return ds.attributes.astype(np.int64)
