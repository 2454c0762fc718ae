"""CUB-200-2011: read the official text files into a catalog (bounding boxes crop when present)."""

from __future__ import annotations

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


def read_cub(root: Path) -> Catalog:
    """Read a CUB-200-2011 folder (the folder holding images.txt, or its parent)."""
    require_dir(root, LAYOUT)
    if not (root / "images.txt").exists() and (root / "CUB_200_2011" / "images.txt").exists():
        root = root / "CUB_200_2011"
    images = read_keyed(require_file(root, "images.txt", LAYOUT), 2)
    classes = read_keyed(require_file(root, "classes.txt", LAYOUT), 2, rest=True)
    labels_path = require_file(root, "image_class_labels.txt", LAYOUT)
    split_path = require_file(root, "train_test_split.txt", LAYOUT)
    class_labels = read_keyed(labels_path, 2)
    is_train = read_keyed(split_path, 2)
    boxes_path = root / "bounding_boxes.txt"
    boxes = read_keyed(boxes_path, 5) if boxes_path.exists() else {}

    class_ids = sorted(parse_int(k, root / "classes.txt", line) for k, (line, _) in classes.items())
    index_of = {cid: i for i, cid in enumerate(class_ids)}
    class_names = [clean_class_name(classes[str(cid)][1][0]) for cid in class_ids]

    files, lines, labels, splits, box_rows = [], [], [], [], []
    for image_id, (line, (rel,)) in images.items():
        if image_id not in class_labels:
            raise SynthaugError(
                f"images.txt line {line} names image {image_id}, which image_class_labels.txt does not label; "
                "add its label or remove the line."
            )
        label_line, (cls,) = class_labels[image_id]
        cid = parse_int(cls, labels_path, label_line)
        if cid not in index_of:
            raise SynthaugError(
                f"image_class_labels.txt line {label_line} names class {cid}, which classes.txt does not list; "
                "fix that line."
            )
        if image_id not in is_train:
            raise SynthaugError(
                f"images.txt line {line} names image {image_id}, which train_test_split.txt leaves out; "
                "add it to the split file."
            )
        split_line, (flag,) = is_train[image_id]
        if flag not in ("0", "1"):
            raise SynthaugError(f"train_test_split.txt line {split_line} has {flag!r} where 1 or 0 was expected; fix that line.")
        files.append(f"images/{rel}")
        lines.append(f"images.txt line {line}")
        labels.append(index_of[cid])
        splits.append("train" if flag == "1" else "test")
        if image_id in boxes:
            box_line, values = boxes[image_id]
            box_rows.append([parse_float(v, boxes_path, box_line) for v in values])
        else:
            box_rows.append([np.nan] * 4)
    return Catalog(
        format="cub",
        root=root,
        class_names=class_names,
        class_ids=class_ids,
        labels=np.array(labels),
        splits=np.array(splits),
        files=files,
        lines=lines,
        class_lines=[f"classes.txt line {classes[str(cid)][0]}" for cid in class_ids],
        boxes=np.array(box_rows, dtype=np.float64).reshape(-1, 4) if boxes else None,
    )
