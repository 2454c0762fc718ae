"""NABirds v1: read the official metadata into a catalog of leaf visual categories or of species.

The hierarchy makes each species (e.g. 228 "Allen's Hummingbird") a group of its leaf categories
("Allen's Hummingbird (Adult Male)", "Allen's Hummingbird (Female, immature)").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthaug.data.catalog import (
    Catalog,
    ClassGroup,
    parse_float,
    parse_int,
    read_keyed,
    read_rows,
    require_dir,
    require_file,
)
from synthaug.data.lookup import normalize_name
from synthaug.errors import SynthaugError

LAYOUT = (
    "images/NNNN/*.jpg, images.txt (uuid path), classes.txt (id name), hierarchy.txt (child parent), "
    "image_class_labels.txt (uuid class-id), train_test_split.txt (uuid 1=train/0=test), "
    "bounding_boxes.txt (uuid x y width height), sizes.txt (uuid width height)"
)
LEVELS = ("category", "species")


def species_of_leaves(names: dict[int, str], parent: dict[int, int], leaves: list[int]) -> dict[int, int]:
    """Map each leaf category to its species id.

    A leaf such as "Allen's Hummingbird (Adult Male)" is a sex/age variant of its parent species;
    a leaf without such a suffix (e.g. "Anhinga") is a species itself.
    """
    out = {}
    for leaf in leaves:
        up = parent.get(leaf)
        is_variant = (
            up is not None
            and "(" in names[leaf]
            and normalize_name(names[leaf]).startswith(normalize_name(names[up]))
        )
        out[leaf] = up if is_variant else leaf
    return out


def read_nabirds(root: Path, level: str = "category") -> Catalog:
    """Read a NABirds folder. ``level`` is "category" (555 leaf visual categories) or "species"."""
    if level not in LEVELS:
        raise SynthaugError(f"NABirds level {level!r} is not known; use one of {', '.join(LEVELS)}.")
    require_dir(root, LAYOUT)
    if not (root / "images.txt").exists() and (root / "nabirds" / "images.txt").exists():
        root = root / "nabirds"
    classes_path = require_file(root, "classes.txt", LAYOUT)
    hierarchy_path = require_file(root, "hierarchy.txt", LAYOUT)
    classes = read_keyed(classes_path, 2, rest=True)
    names = {parse_int(k, classes_path, line): v[0] for k, (line, v) in classes.items()}
    name_lines = {int(k): line for k, (line, _) in classes.items()}
    parent = {}
    for line, (child, up) in read_rows(hierarchy_path, 2):
        parent[parse_int(child, hierarchy_path, line)] = parse_int(up, hierarchy_path, line)
    for child, up in parent.items():
        for cid in (child, up):
            if cid not in names:
                raise SynthaugError(f"hierarchy.txt names class {cid}, which classes.txt does not list; fix hierarchy.txt.")
    parents = set(parent.values())
    leaves = sorted(c for c in names if c not in parents)
    species = species_of_leaves(names, parent, leaves)

    if level == "category":
        class_ids = leaves
        label_of_leaf = {leaf: i for i, leaf in enumerate(leaves)}
        members: dict[int, list[int]] = {}
        for leaf, sp in species.items():
            members.setdefault(sp, []).append(label_of_leaf[leaf])
        # A species with one plain leaf is that class already; only variant species become groups.
        groups = [
            ClassGroup(sp, names[sp], tuple(m)) for sp, m in sorted(members.items()) if sp not in label_of_leaf
        ]
    else:
        class_ids = sorted(set(species.values()))
        index = {sp: i for i, sp in enumerate(class_ids)}
        label_of_leaf = {leaf: index[sp] for leaf, sp in species.items()}
        groups = []

    images_path = require_file(root, "images.txt", LAYOUT)
    labels_path = require_file(root, "image_class_labels.txt", LAYOUT)
    split_path = require_file(root, "train_test_split.txt", LAYOUT)
    boxes_path = require_file(root, "bounding_boxes.txt", LAYOUT)
    sizes_path = root / "sizes.txt"
    images = read_keyed(images_path, 2)
    labels_of = read_keyed(labels_path, 2)
    split_of = read_keyed(split_path, 2)
    boxes_of = read_keyed(boxes_path, 5)
    sizes_of = read_keyed(sizes_path, 3) if sizes_path.exists() else {}

    files, lines, labels, splits, boxes, frames = [], [], [], [], [], []
    for uuid, (line, (rel,)) in images.items():
        for table, path in ((labels_of, labels_path), (split_of, split_path)):
            if uuid not in table:
                raise SynthaugError(
                    f"images.txt line {line} names image {uuid}, which {path.name} leaves out; add it or remove the line."
                )
        label_line, (cls,) = labels_of[uuid]
        cid = parse_int(cls, labels_path, label_line)
        if cid not in label_of_leaf:
            raise SynthaugError(
                f"image_class_labels.txt line {label_line} names class {cid}, which is not a leaf category in "
                "classes.txt and hierarchy.txt; fix that line."
            )
        split_line, (flag,) = split_of[uuid]
        if flag not in ("0", "1"):
            raise SynthaugError(f"train_test_split.txt line {split_line} has {flag!r} where 1 or 0 was expected; fix that line.")
        files.append(f"images/{rel}")
        lines.append(f"images.txt line {line}")
        labels.append(label_of_leaf[cid])
        splits.append("train" if flag == "1" else "test")
        if uuid in boxes_of:
            box_line, values = boxes_of[uuid]
            boxes.append([parse_float(v, boxes_path, box_line) for v in values])
        else:
            boxes.append([np.nan] * 4)
        if uuid in sizes_of:
            size_line, values = sizes_of[uuid]
            frames.append([parse_float(v, sizes_path, size_line) for v in values])
        else:
            frames.append([np.nan, np.nan])
    return Catalog(
        format="nabirds",
        root=root,
        class_names=[names[c] for c in class_ids],
        class_ids=class_ids,
        labels=np.array(labels),
        splits=np.array(splits),
        files=files,
        lines=lines,
        class_lines=[f"classes.txt line {name_lines[c]}" for c in class_ids],
        boxes=np.array(boxes, dtype=np.float64).reshape(-1, 4),
        frames=np.array(frames, dtype=np.float64).reshape(-1, 2),
        groups=groups,
        group_kind="species",
    )
