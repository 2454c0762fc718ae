"""CelebA and CelebA-Dialog: aligned faces with identity, 40 binary attributes, or 5 graded attributes.

``celeba`` targets an identity or one of the 40 binary attributes; ``celeba-dialog`` reads
CelebA-Dialog's ``combined_annotation.txt`` (Bangs, Eyeglasses, No_Beard, Smiling, Young at levels 0-5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthaug.data.catalog import Catalog, parse_int, read_keyed, require_dir, require_file
from synthaug.data.lookup import normalize_name, unknown_name_error
from synthaug.errors import SynthaugError

IMAGES = "img_align_celeba"
LAYOUT = (
    f"{IMAGES}/NNNNNN.jpg, list_eval_partition.txt (file 0=train/1=val/2=test), "
    "identity_CelebA.txt (file identity), list_attr_celeba.txt (count, 40 names, then file and 40 values of 1/-1)"
)
DIALOG_FILE = "combined_annotation.txt"
DIALOG_LAYOUT = (
    f"{IMAGES}/NNNNNN.jpg, {DIALOG_FILE} (header 'img_name Bangs Eyeglasses No_Beard Smiling Young', "
    "then file and five levels 0-5) in the folder or its CelebA-Dialog/ sub-folder, optional list_eval_partition.txt"
)
DIALOG_LEVELS = 6
PARTITIONS = {"0": "train", "1": "val", "2": "test"}


def read_partition(path: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for name, (line, (code,)) in read_keyed(path, 2).items():
        if code not in PARTITIONS:
            raise SynthaugError(f"{path.name} line {line} has partition {code!r} where 0, 1 or 2 was expected; fix that line.")
        out[name] = (line, PARTITIONS[code])
    return out


def read_attribute_table(path: Path) -> tuple[list[str], dict[str, tuple[int, list[int]]], int | None]:
    """Read list_attr_celeba.txt: (attribute names, {file: (line, values of 0/1)}, header count)."""
    text = path.read_text(encoding="utf-8-sig").splitlines()
    if len(text) < 2:
        raise SynthaugError(f"{path.name} has no header; expected a count line, then the 40 attribute names.")
    count = text[0].strip()
    names = text[1].split()
    rows: dict[str, tuple[int, list[int]]] = {}
    for number, line in enumerate(text[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise SynthaugError(
                f"{path.name} line {number} has {len(fields) - 1} values for {len(names)} attributes; fix that line."
            )
        wrong = [v for v in fields[1:] if v not in ("1", "-1")]
        if wrong:
            raise SynthaugError(f"{path.name} line {number} has {wrong[0]!r} where 1 or -1 was expected; fix that line.")
        rows[fields[0]] = (number, [1 if v == "1" else 0 for v in fields[1:]])
    return names, rows, int(count) if count.isdigit() else None


def pick_attribute(query: str, names: list[str], where: str) -> int:
    for i, name in enumerate(names):
        if normalize_name(name) == normalize_name(query):
            return i
    raise unknown_name_error(query, names, where, kind="attribute")


def read_celeba(root: Path, target: str = "identity") -> Catalog:
    """Read aligned CelebA; ``target`` is "identity" or an attribute name such as "Smiling"."""
    require_dir(root, LAYOUT)
    partition = read_partition(require_file(root, "list_eval_partition.txt", LAYOUT))
    notes: list[str] = []
    attributes = None
    attribute_names: list[str] = []
    if normalize_name(target or "identity") == "identity":
        id_path = require_file(root, "identity_CelebA.txt", LAYOUT)
        identity = {name: (line, parse_int(v, id_path, line)) for name, (line, (v,)) in read_keyed(id_path, 2).items()}
        class_ids = sorted({ident for _, ident in identity.values()})
        index = {ident: i for i, ident in enumerate(class_ids)}
        class_names = [f"identity {c}" for c in class_ids]
        names = list(identity)
        labels = [index[identity[n][1]] for n in names]
        lines = [f"identity_CelebA.txt line {identity[n][0]}" for n in names]
    else:
        attr_path = require_file(root, "list_attr_celeba.txt", LAYOUT)
        attribute_names, rows, count = read_attribute_table(attr_path)
        column = pick_attribute(target, attribute_names, f"{attr_path}")
        if count is not None and count != len(rows):
            notes.append(f"{attr_path.name} says {count} rows but holds {len(rows)}.")
        listed = len(partition)
        if len(rows) < listed:
            notes.append(
                f"{attr_path.name} has attribute rows for {len(rows)} of the {listed} images in "
                "list_eval_partition.txt; only those are used for an attribute target."
            )
        attr = attribute_names[column]
        class_ids = [0, 1]
        class_names = [f"not {attr}", attr]
        names = list(rows)
        labels = [rows[n][1][column] for n in names]
        lines = [f"{attr_path.name} line {rows[n][0]}" for n in names]
        attributes = np.array([rows[n][1] for n in names], dtype=np.int16).reshape(-1, len(attribute_names))
    splits = []
    for n, where in zip(names, lines):
        if n not in partition:
            raise SynthaugError(f"{where} names {n}, which list_eval_partition.txt leaves out; add it there.")
        splits.append(partition[n][1])
    return Catalog(
        format="celeba",
        root=root,
        class_names=class_names,
        class_ids=class_ids,
        labels=np.array(labels),
        splits=np.array(splits),
        files=[f"{IMAGES}/{n}" for n in names],
        lines=lines,
        attributes=attributes,
        attribute_names=attribute_names,
        attribute_levels=[2] * len(attribute_names),
        notes=notes,
    )


def find_dialog_annotations(root: Path) -> Path:
    for folder in (root, root / "CelebA-Dialog"):
        if (folder / DIALOG_FILE).is_file():
            return folder / DIALOG_FILE
    raise SynthaugError(f"{root / DIALOG_FILE} is missing; expected the layout {DIALOG_LAYOUT}.")


def read_celeba_dialog(root: Path, target: str = "") -> Catalog:
    """Read CelebA images with CelebA-Dialog's graded attributes (5 attributes x 6 levels).

    The condition is the whole attribute vector. ``target`` optionally names one attribute whose
    level becomes the class label (e.g. "Smiling" gives classes "Smiling 0" .. "Smiling 5").
    """
    require_dir(root, DIALOG_LAYOUT)
    path = find_dialog_annotations(root)
    text = path.read_text(encoding="utf-8-sig").splitlines()
    header = text[0].split() if text else []
    if len(header) < 2 or header[0] != "img_name":
        raise SynthaugError(
            f"{path.name} line 1 should be the header 'img_name Bangs Eyeglasses No_Beard Smiling Young'; restore it."
        )
    attribute_names = header[1:]
    names, lines, rows = [], [], []
    for number, line in enumerate(text[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(header):
            raise SynthaugError(f"{path.name} line {number} has {len(fields) - 1} levels for {len(attribute_names)} attributes; fix that line.")
        levels = [parse_int(v, path, number) for v in fields[1:]]
        if any(not 0 <= v < DIALOG_LEVELS for v in levels):
            raise SynthaugError(f"{path.name} line {number} has a level outside 0-5; fix that line.")
        names.append(fields[0])
        lines.append(f"{path.name} line {number}")
        rows.append(levels)
    attributes = np.array(rows, dtype=np.int16).reshape(-1, len(attribute_names))
    if target:
        column = pick_attribute(target, attribute_names, str(path))
        class_names = [f"{attribute_names[column]} {level}" for level in range(DIALOG_LEVELS)]
        labels = attributes[:, column].astype(np.int64)
    else:
        class_names = ["face"]
        labels = np.zeros(len(names), dtype=np.int64)
    partition_path = root / "list_eval_partition.txt"
    if partition_path.exists():
        partition = read_partition(partition_path)
        splits = [partition[n][1] if n in partition else "" for n in names]
        if "" in splits:
            raise SynthaugError(
                f"list_eval_partition.txt leaves out {splits.count('')} images that {path.name} annotates "
                f"(first: {names[splits.index('')]}); add them or remove that file to use a seeded split."
            )
    else:
        splits = [""] * len(names)
    return Catalog(
        format="celeba-dialog",
        root=root,
        class_names=class_names,
        class_ids=list(range(len(class_names))),
        labels=labels,
        splits=np.array(splits),
        files=[f"{IMAGES}/{n}" for n in names],
        lines=lines,
        attributes=attributes,
        attribute_names=attribute_names,
        attribute_levels=[DIALOG_LEVELS] * len(attribute_names),
    )
