"""Stanford Cars: read the devkit's MATLAB files into a catalog (bounding boxes crop each car)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthaug.data.catalog import Catalog, require_dir
from synthaug.errors import SynthaugError

LAYOUT = (
    "devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/*.jpg, and for test labels "
    "cars_test/*.jpg with cars_test_annos_withlabels.mat (the .mat files may also sit in the top folder)"
)
TEST_LABELS = "cars_test_annos_withlabels.mat"


def find_mat(root: Path, name: str) -> Path | None:
    for folder in (root / "devkit", root):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mat(path: Path, key: str) -> np.ndarray:
    import scipy.io

    try:
        content = scipy.io.loadmat(path, squeeze_me=True)
    except Exception as e:  # scipy raises several types for damaged files
        raise SynthaugError(f"{path} could not be read as a MATLAB file ({e}); restore it from the devkit.") from None
    if key not in content:
        raise SynthaugError(f"{path} has no {key!r} variable; restore it from the devkit.")
    return np.atleast_1d(content[key])


def read_annotations(path: Path, folder: str, num_classes: int):
    """Yield (file, line label, box x y w h, class index) for each row of an annotations .mat file."""
    rows = load_mat(path, "annotations")
    fields = rows.dtype.names or ()
    missing = {"bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"} - set(fields)
    if missing:
        raise SynthaugError(f"{path.name} lacks the field(s) {', '.join(sorted(missing))}; it needs class labels.")
    for number, row in enumerate(rows, start=1):
        cls = int(row["class"])
        if not 1 <= cls <= num_classes:
            raise SynthaugError(f"{path.name} row {number} has class {cls}, outside 1..{num_classes}; fix that row.")
        x1, y1, x2, y2 = (float(row[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
        # MATLAB corners are 1-based and inclusive; boxes here are 0-based x, y, width, height.
        yield f"{folder}/{row['fname']}", f"{path.name} row {number}", [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], cls - 1


def read_stanford_cars(root: Path) -> Catalog:
    """Read a Stanford Cars folder holding the devkit and the image folders."""
    require_dir(root, LAYOUT)
    meta_path, train_path = find_mat(root, "cars_meta.mat"), find_mat(root, "cars_train_annos.mat")
    for name, path in (("cars_meta.mat", meta_path), ("cars_train_annos.mat", train_path)):
        if path is None:
            raise SynthaugError(f"{root / 'devkit' / name} is missing; expected the layout {LAYOUT}.")
    class_names = [str(n).strip() for n in load_mat(meta_path, "class_names")]
    notes = []
    rows = list(read_annotations(train_path, "cars_train", len(class_names)))
    splits = ["train"] * len(rows)
    test_path = find_mat(root, TEST_LABELS)
    if test_path is not None:
        test_rows = list(read_annotations(test_path, "cars_test", len(class_names)))
        rows += test_rows
        splits += ["test"] * len(test_rows)
    else:
        notes.append(
            f"{TEST_LABELS} was not found, so the official test split is unavailable "
            "(its labels are not in the devkit); test images come from a split of cars_train."
        )
    for folder, split in (("cars_train", "train"), ("cars_test", "test")):
        listed = splits.count(split)
        if listed and not (root / folder).is_dir():
            raise SynthaugError(
                f"{root / folder} is missing, and the devkit lists {listed} {split} images in it; put the {folder}/ "
                f"image folder beside devkit/ (layout: {LAYOUT})."
            )
    return Catalog(
        format="stanford-cars",
        root=root,
        class_names=class_names,
        class_ids=list(range(1, len(class_names) + 1)),
        labels=np.array([r[3] for r in rows], dtype=np.int64),
        splits=np.array(splits),
        files=[r[0] for r in rows],
        lines=[r[1] for r in rows],
        boxes=np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4),
        notes=notes,
    )
