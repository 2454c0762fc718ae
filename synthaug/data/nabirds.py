"""NABirds v1: read the official metadata into a catalog of leaf visual categories or of species.

The hierarchy makes each species (e.g. 228 "Allen's Hummingbird") a group of its leaf categories
("Allen's Hummingbird (Adult Male)", "Allen's Hummingbird (Female, immature)").
"""

from __future__ import annotations

import typing
from pathlib import Path


from synthaug.data.config import Level
from synthaug.data.catalog import Catalog, ClassGroup, parse_int, read_keyed, read_rows, require_dir, require_file
from synthaug.data.cub import read_image_rows
from synthaug.data.lookup import normalize_name
from synthaug.errors import SynthaugError

LAYOUT = (
    "images/NNNN/*.jpg, images.txt (uuid path), classes.txt (id name), hierarchy.txt (child parent), "
    "image_class_labels.txt (uuid class-id), train_test_split.txt (uuid 1=train/0=test), "
    "bounding_boxes.txt (uuid x y width height), sizes.txt (uuid width height)"
)
LEVELS = typing.get_args(Level)  # declared once, with the recipe key data.level


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

    rows = read_image_rows(root, LAYOUT, label_of_leaf, "is not a leaf category in classes.txt and hierarchy.txt",
                           boxes_required=True, sizes=True)
    return Catalog(
        format="nabirds",
        root=root,
        class_names=[names[c] for c in class_ids],
        class_ids=class_ids,
        labels=rows.labels,
        splits=rows.splits,
        files=rows.files,
        lines=rows.lines,
        class_lines=[f"classes.txt line {name_lines[c]}" for c in class_ids],
        boxes=rows.boxes,
        frames=rows.frames,
        groups=groups,
        group_kind="species",
    )
