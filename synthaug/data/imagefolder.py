"""Any class-per-folder tree: PATH/<class>/*.jpg, or the same under PATH/train/ and PATH/test/."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthaug.data.catalog import SPLITS, Catalog, require_dir
from synthaug.errors import SynthaugError

LAYOUT = "PATH/<class>/<image files>, or PATH/train/<class>/..., PATH/test/<class>/... (and optionally val/)"


def list_files(folder: Path) -> list[Path]:
    """Every non-hidden file under a class folder; files that are not images are skipped at decode."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_imagefolder(root: Path) -> Catalog:
    """Read a class-per-folder tree; sub-folders named train/val/test become the official split."""
    require_dir(root, LAYOUT)
    top = class_dirs(root)
    split_dirs = [d for d in top if d.name in SPLITS]
    if split_dirs:
        others = [d.name for d in top if d.name not in SPLITS]
        if others:
            raise SynthaugError(
                f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) with other folders "
                f"({', '.join(others[:3])}); put every class folder under train/ or test/."
            )
        sources = [(d.name, c) for d in split_dirs for c in class_dirs(d)]
    else:
        sources = [("", c) for c in top]
    if not sources:
        raise SynthaugError(f"{root} has no class folders; expected the layout {LAYOUT}.")
    class_names = sorted({c.name for _, c in sources})
    index = {name: i for i, name in enumerate(class_names)}
    files, labels, splits, notes = [], [], [], []
    for split, folder in sources:
        found = list_files(folder)
        if not found:
            notes.append(f"class folder {folder} is empty.")
        for path in found:
            files.append(path.relative_to(root).as_posix())
            labels.append(index[folder.name])
            splits.append(split)
    if not files:
        raise SynthaugError(f"The {len(sources)} class folders under {root} hold no files; put the images in PATH/<class>/.")
    return Catalog(
        format="imagefolder",
        root=root,
        class_names=class_names,
        class_ids=list(range(len(class_names))),
        labels=np.array(labels, dtype=np.int64),
        splits=np.array(splits),
        files=files,
        lines=[f"folder {Path(f).parent}" for f in files],
        notes=notes,
    )
