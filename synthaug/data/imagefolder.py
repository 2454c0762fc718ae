"""Any class-per-folder tree: PATH/<class>/*.jpg, or the same under PATH/train/ and PATH/test/."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthaug.data.catalog import SPLITS, Catalog, require_dir
from synthaug.errors import SynthaugError
from synthaug.words import count

LAYOUT = "PATH/<class>/<image files>, or PATH/train/<class>/..., PATH/test/<class>/... (and optionally val/)"


@dataclass
class Passed:
    """Folders a walk of the tree passed over, as paths relative to the root, for the dataset's notes."""

    linked_classes: list[str] = field(default_factory=list)  # "train/loop -> ../tree2"
    linked_folders: list[str] = field(default_factory=list)  # symlinked sub-folders inside class folders
    hidden: list[str] = field(default_factory=list)  # folders whose names start with a dot ("...", ".cache")

    def notes(self) -> list[str]:
        notes = []
        for paths in (self.linked_classes, self.linked_folders, self.hidden):
            paths.sort()
        if self.linked_classes:
            n = len(self.linked_classes)
            notes.append(f"{count(n, 'class folder')} that {'is a symbolic link was' if n == 1 else 'are symbolic links were'} "
                         f"left out ({shown(self.linked_classes)}): a linked folder can put the same images in two classes "
                         "or splits; copy its images into the tree to use them.")
        if self.linked_folders:
            n = len(self.linked_folders)
            notes.append(f"{count(n, 'sub-folder')} of class folders that {'is a symbolic link was' if n == 1 else 'are symbolic links were'} "
                         f"not followed ({shown(self.linked_folders)}); copy the images into the class folder to use them.")
        if self.hidden:
            n = len(self.hidden)
            notes.append(f"{count(n, 'hidden folder')} {'was' if n == 1 else 'were'} left out ({shown(self.hidden)}); "
                         "rename a folder without its leading dot to use its images.")
        return notes


def shown(paths: list[str], most: int = 3) -> str:
    return ", ".join(paths[:most]) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def link_text(path: str, rel: str) -> str:
    """"rel -> target" for a symbolic link."""
    try:
        return f"{rel} -> {os.readlink(path)}"
    except OSError:
        return rel


def list_files(folder: Path, passed: Passed | None = None, root: Path | None = None) -> list[str]:
    """Every non-hidden file under a class folder, as a path relative to it, in path order (the order of
    ``sorted(folder.rglob("*"))``); files that are not images are skipped at decode. Symlinked folders are not
    followed; they and hidden folders are recorded in ``passed`` (paths relative to ``root``). os.scandir knows
    most entries' kinds without a stat per file, which rglob + is_file makes."""
    found: list[str] = []
    base = folder.relative_to(root).as_posix() + "/" if root is not None else ""

    def walk(path: str, prefix: str) -> None:
        try:
            entries = list(os.scandir(path))
        except PermissionError:  # as rglob does: an unreadable sub-folder is passed over
            return
        for entry in entries:
            if entry.name.startswith("."):
                if passed is not None and entry.is_dir():
                    passed.hidden.append(base + prefix + entry.name)
                continue
            if entry.is_dir(follow_symlinks=False):
                walk(entry.path, prefix + entry.name + "/")
            elif entry.is_symlink() and entry.is_dir():
                if passed is not None:
                    passed.linked_folders.append(link_text(entry.path, base + prefix + entry.name))
            elif entry.is_file():
                found.append(prefix + entry.name)

    walk(str(folder), "")
    return sorted(found, key=lambda rel: rel.split("/"))


def class_dirs(folder: Path, passed: Passed | None = None, root: Path | None = None, keep_links: tuple[str, ...] = ()) -> list[Path]:
    """The sub-folders of ``folder`` in name order, without hidden ones and symbolic links (except those named in
    ``keep_links``: split folders may be links), which are recorded in ``passed`` (paths relative to ``root``)."""
    kept = []
    for p in sorted(folder.iterdir()):
        if not p.is_dir():
            continue
        rel = p.relative_to(root).as_posix() if root is not None else p.name
        if p.name.startswith("."):
            if passed is not None:
                passed.hidden.append(rel)
        elif p.is_symlink() and p.name not in keep_links:
            if passed is not None:
                passed.linked_classes.append(link_text(str(p), rel))
        else:
            kept.append(p)
    return kept


def read_imagefolder(root: Path) -> Catalog:
    """Read a class-per-folder tree; sub-folders named train/val/test become the official split."""
    require_dir(root, LAYOUT)
    passed = Passed()
    top = class_dirs(root, passed, root, keep_links=SPLITS)  # a split folder may be a link; a class folder may not
    split_dirs = [d for d in top if d.name in SPLITS]
    if split_dirs:
        others = [d.name for d in top if d.name not in SPLITS]
        if others:
            raise SynthaugError(
                f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) with other folders "
                f"({', '.join(others[:3])}); put every class folder under train/ or test/."
            )
        sources = [(d.name, c) for d in split_dirs for c in class_dirs(d, passed, root)]
    else:
        sources = [("", c) for c in top]
    if not sources:
        left_out = passed.linked_classes + passed.hidden
        but = f" other than symbolic links and hidden folders, which are left out ({shown(left_out)})" if left_out else ""
        raise SynthaugError(f"{root} has no class folders{but}; expected the layout {LAYOUT}.")
    class_names = sorted({c.name for _, c in sources})
    index = {name: i for i, name in enumerate(class_names)}
    files, labels, splits, notes = [], [], [], []
    lines = []
    for split, folder in sources:
        found = list_files(folder, passed, root)
        if not found:
            notes.append(f"class folder {folder} is empty.")
        prefix = folder.relative_to(root).as_posix()
        line = f"folder {prefix}"
        for rel in found:
            files.append(f"{prefix}/{rel}")
            lines.append(line if "/" not in rel else f"folder {prefix}/{rel.rsplit('/', 1)[0]}")
        labels += [index[folder.name]] * len(found)
        splits += [split] * len(found)
    notes += passed.notes()
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
