"""Train/test splits: the dataset's own, or a seeded stratified one; and deterministic low-data subsets."""

from __future__ import annotations

import typing

import numpy as np

from synthaug.data.config import Split
from synthaug.errors import SynthaugError
from synthaug.seeds import numpy_rng

SPLIT_MODES = typing.get_args(Split)  # declared once, with the recipe key data.split


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Per class, a seeded random ``test_fraction`` of the images goes to "test", the rest to "train".

    Every class with two or more images keeps at least one of each; a class's draw depends only on
    (seed, class), so adding a class does not reshuffle the others.
    """
    splits = np.full(len(labels), "train", dtype="<U5")
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 2:
            continue
        n_test = min(max(int(round(len(rows) * test_fraction)), 1), len(rows) - 1)
        order = numpy_rng("split", seed, int(c)).permutation(rows)
        splits[order[:n_test]] = "test"
    return splits


def assign_splits(
    labels: np.ndarray,
    official: np.ndarray,
    num_classes: int,
    mode: str = "auto",
    test_fraction: float = 0.2,
    seed: int = 0,
    class_names: list[str] | None = None,
) -> tuple[np.ndarray, str | None]:
    """Choose each image's split. Returns (splits, a note for the user or None).

    ``auto`` keeps the official split when it gives every class a training image and a test set
    exists; otherwise (no official split, identity-disjoint partitions, no test labels) it uses a
    seeded stratified split and says why, naming any class too small to have a test image
    (``class_names`` gives the names; else the label numbers are named).
    """
    if mode not in SPLIT_MODES:
        raise SynthaugError(f"Split {mode!r} is not known; use one of {', '.join(SPLIT_MODES)}.")
    if not 0 < test_fraction < 1:
        raise SynthaugError(f"test_fraction must lie between 0 and 1, not {test_fraction}; use e.g. 0.2.")
    has_official = bool(np.any(official != ""))
    trained = np.unique(labels[official == "train"])
    lacking = num_classes - len(trained)
    problem = None
    if not has_official:
        problem = "The dataset has no official split"
    elif lacking:
        problem = f"The official split leaves {lacking} of {num_classes} classes without training images"
    elif not np.any(official == "test"):
        problem = "The official split has no test images"
    if mode == "official":
        if problem:
            raise SynthaugError(f"Cannot use the official split: {problem[0].lower() + problem[1:]}; use split=stratified.")
        return official.copy(), None
    if mode == "auto" and problem is None:
        return official.copy(), None
    note = f"seeded stratified split (seed {seed}, {test_fraction:.0%} test per class)"
    note = f"{problem}, so a {note} is used." if problem else f"A {note} is used."
    counts = np.bincount(labels, minlength=num_classes)
    single = [int(c) for c in np.flatnonzero(counts == 1)]
    if single:
        shown = name_classes(single, class_names)
        if len(single) == 1:
            note += f" Class {shown} has only one image, kept for training, so its test split is empty."
        else:
            note += f" {len(single)} classes have only one image each, kept for training, so their test splits are empty: {shown}."
    return stratified_split(labels, test_fraction, seed), note


def name_classes(classes, class_names: list[str] | None = None, most: int = 5) -> str:
    """"'cat', 'dog' and 3 more": the first ``most`` classes by name (by label number without ``class_names``)."""
    names = [repr(class_names[c]) if class_names is not None else str(c) for c in classes]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def too_small_to_hold_out(labels: np.ndarray, splits: np.ndarray) -> list[int]:
    """The classes with fewer than 2 training images: :func:`hold_out_validation` keeps those whole for training."""
    counts = np.bincount(labels[splits == "train"], minlength=int(labels.max(initial=-1)) + 1)
    return [int(c) for c in np.unique(labels) if counts[c] < 2]


def hold_out_validation(labels: np.ndarray, splits: np.ndarray, val_fraction: float, seed: int,
                        class_names: list[str] | None = None) -> tuple[np.ndarray, str | None]:
    """Move a seeded ``val_fraction`` of each class's training images to a "val" split (at least one, while the
    class keeps one for training), unless the dataset has its own validation split. Returns (splits, note); the
    note names the classes too small to hold an image out."""
    if not val_fraction or np.any(splits == "val"):
        return splits, None
    small = too_small_to_hold_out(labels, splits)
    splits = splits.copy()
    for c in np.unique(labels):
        rows = np.flatnonzero((labels == c) & (splits == "train"))
        if len(rows) < 2:
            continue
        n_val = min(max(int(round(len(rows) * val_fraction)), 1), len(rows) - 1)
        splits[numpy_rng("val", seed, int(c)).permutation(rows)[:n_val]] = "val"
    note = (f"{val_fraction:.0%} of each class's training images are held out as a validation split "
            f"(seed {seed}): no generator or classifier trains on them.")
    if len(small) == 1:
        note += f" Class {name_classes(small, class_names)} has fewer than 2 training images and keeps them all for training."
    elif small:
        note += (f" {len(small)} classes have fewer than 2 training images each and keep them all for training: "
                 f"{name_classes(small, class_names)}.")
    return splits, note


def missing_validation(labels: np.ndarray, splits: np.ndarray, val_fraction: float, class_names: list[str] | None = None) -> str:
    """Why a dataset loaded with ``val_fraction`` has no "val" split, and what to do: the end of a sentence."""
    if not val_fraction:
        return "set data.val_fraction (e.g. 0.1)"
    small = too_small_to_hold_out(labels, splits)
    return (f"data.val_fraction is {val_fraction:g}, but every class is too small to hold images out for validation "
            f"({name_classes(small, class_names)}: a class needs at least 2 training images to hold one out); add images "
            "until each class has at least 2 for training (3 where a stratified split takes one for testing)")


def select_shots(labels: np.ndarray, splits: np.ndarray, shots_per_class: int, seed: int) -> np.ndarray:
    """Boolean mask keeping ``shots_per_class`` training images per class (all of them for 0) and every
    non-training image. The draw is seeded per class and nested: the 5-shot subset lies inside the 10-shot one.
    """
    if shots_per_class < 0:
        raise SynthaugError(f"shots_per_class must be 0 (all) or positive, not {shots_per_class}.")
    keep = splits != "train"
    for c in np.unique(labels):
        rows = np.flatnonzero((labels == c) & (splits == "train"))
        order = numpy_rng("shots", seed, int(c)).permutation(rows)
        keep[order if shots_per_class == 0 else order[:shots_per_class]] = True
    return keep
