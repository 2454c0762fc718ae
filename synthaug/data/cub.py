"""CUB-200-2011: read the official text files into a catalog (bounding boxes crop when present)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthaug.data.catalog import Catalog, parse_float, parse_int, read_keyed, require_dir, require_file
from synthaug.errors import SynthaugError

LAYOUT = (
    "images/NNN.Class_Name/*.jpg, images.txt (id path), classes.txt (id name), "
    "image_class_labels.txt (image-id class-id), train_test_split.txt (image-id 1=train/0=test), "
    "optional bounding_boxes.txt (image-id x y width height)"
)


def clean_class_name(raw: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black footed Albatross'."""
    head, dot, tail = raw.partition(".")
    name = tail if dot and head.isdigit() else raw
    return name.replace("_", " ").strip()


@dataclass
class ImageRows:
    """One row per image of a CUB-style layout (CUB-200-2011, and NABirds, which copied its files)."""

    files: list[str]
    lines: list[str]
    labels: np.ndarray
    splits: np.ndarray
    boxes: np.ndarray | None  # (N, 4) x, y, w, h; NaN where an image has none
    frames: np.ndarray | None  # (N, 2) the image size the boxes refer to (NABirds' sizes.txt)


def read_image_rows(root: Path, layout: str, label_of: dict[int, int], unknown_class: str,
                    boxes_required: bool = False, sizes: bool = False) -> ImageRows:
    """Read images.txt, image_class_labels.txt, train_test_split.txt, bounding_boxes.txt (and sizes.txt).

    Args:
        root: the dataset folder.
        layout: the expected layout, for missing-file errors.
        label_of: the dataset's class id -> label index.
        unknown_class: how to say that a class id is not in ``label_of`` (completes "... names class C, which ...").
        boxes_required: bounding_boxes.txt must exist (NABirds) rather than being optional (CUB).
        sizes: read the optional sizes.txt the boxes were measured on.
    """
    images = read_keyed(require_file(root, "images.txt", layout), 2)
    labels_path = require_file(root, "image_class_labels.txt", layout)
    split_path = require_file(root, "train_test_split.txt", layout)
    boxes_path = require_file(root, "bounding_boxes.txt", layout) if boxes_required else root / "bounding_boxes.txt"
    sizes_path = root / "sizes.txt"
    labels_of, split_of = read_keyed(labels_path, 2), read_keyed(split_path, 2)
    boxes_of = read_keyed(boxes_path, 5) if boxes_path.exists() else None
    sizes_of = read_keyed(sizes_path, 3) if sizes and sizes_path.exists() else None

    def numbers(table, key, path, width):
        if table is None or key not in table:
            return [np.nan] * width
        line, values = table[key]
        return [parse_float(v, path, line) for v in values]

    files, lines, labels, splits, boxes, frames = [], [], [], [], [], []
    for image_id, (line, (rel,)) in images.items():
        for table, path in ((labels_of, labels_path), (split_of, split_path)):
            if image_id not in table:
                raise SynthaugError(
                    f"images.txt line {line} names image {image_id}, which {path.name} leaves out; add it or remove the line."
                )
        label_line, (cls,) = labels_of[image_id]
        cid = parse_int(cls, labels_path, label_line)
        if cid not in label_of:
            raise SynthaugError(f"image_class_labels.txt line {label_line} names class {cid}, which {unknown_class}; fix that line.")
        split_line, (flag,) = split_of[image_id]
        if flag not in ("0", "1"):
            raise SynthaugError(f"train_test_split.txt line {split_line} has {flag!r} where 1 or 0 was expected; fix that line.")
        files.append(f"images/{rel}")
        lines.append(f"images.txt line {line}")
        labels.append(label_of[cid])
        splits.append("train" if flag == "1" else "test")
        boxes.append(numbers(boxes_of, image_id, boxes_path, 4))
        frames.append(numbers(sizes_of, image_id, sizes_path, 2))
    return ImageRows(
        files, lines, np.array(labels, dtype=np.int64), np.array(splits),
        np.array(boxes, dtype=np.float64).reshape(-1, 4) if boxes_of is not None else None,
        np.array(frames, dtype=np.float64).reshape(-1, 2) if sizes_of is not None else None,
    )


def read_cub(root: Path) -> Catalog:
    """Read a CUB-200-2011 folder (the folder holding images.txt, or its parent)."""
    require_dir(root, LAYOUT)
    if not (root / "images.txt").exists() and (root / "CUB_200_2011" / "images.txt").exists():
        root = root / "CUB_200_2011"
    classes = read_keyed(require_file(root, "classes.txt", LAYOUT), 2, rest=True)
    class_ids = sorted(parse_int(k, root / "classes.txt", line) for k, (line, _) in classes.items())
    rows = read_image_rows(root, LAYOUT, {cid: i for i, cid in enumerate(class_ids)}, "classes.txt does not list")
    return Catalog(
        format="cub",
        root=root,
        class_names=[clean_class_name(classes[str(cid)][1][0]) for cid in class_ids],
        class_ids=class_ids,
        labels=rows.labels,
        splits=rows.splits,
        files=rows.files,
        lines=rows.lines,
        class_lines=[f"classes.txt line {classes[str(cid)][0]}" for cid in class_ids],
        boxes=rows.boxes,
    )
