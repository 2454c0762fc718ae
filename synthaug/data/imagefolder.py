"""Any class-per-folder tree: PATH/<class>/*.jpg, or the same under PATH/train/ and PATH/test/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from synthaug.data.catalog import SPLITS, Catalog, require_dir
from synthaug.errors import SynthaugError

LAYOUT = "PATH/<class>/<image files>, or PATH/train/<class>/..., PATH/test/<class>/... (and optionally val/)"


def list_files(folder: Path) -> list[str]:
    """Every non-hidden file under a class folder, as a path relative to it, in path order (the order of
    ``sorted(folder.rglob("*"))``); files that are not images are skipped at decode. Symlinked folders are not
    followed. os.scandir knows most entries' kinds without a stat per file, which rglob + is_file makes."""
    found: list[str] = []

    def walk(path: str, prefix: str) -> None:
        try:
            entries = list(os.scandir(path))
        except PermissionError:  # as rglob does: an unreadable sub-folder is passed over
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path, prefix + entry.name + "/")
            elif entry.is_file():
                found.append(prefix + entry.name)

    walk(str(folder), "")
    return sorted(found, key=lambda rel: rel.split("/"))


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
    lines = []
    for split, folder in sources:
        found = list_files(folder)
        if not found:
            notes.append(f"class folder {folder} is empty.")
        prefix = folder.relative_to(root).as_posix()
        line = f"folder {prefix}"
        for rel in found:
            files.append(f"{prefix}/{rel}")
            lines.append(line if "/" not in rel else f"folder {prefix}/{rel.rsplit('/', 1)[0]}")
        labels += [index[folder.name]] * len(found)
        splits += [split] * len(found)
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
        lines=lines,
        notes=notes,
    )
