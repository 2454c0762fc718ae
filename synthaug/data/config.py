"""The ``[data]`` section of a recipe: which real dataset to read and how (:class:`DataConfig`); and the
check that every enumerated (``Literal``) field of a recipe section holds one of its allowed values."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass
from typing import Literal

from synthaug.errors import SynthaugError

Split = Literal["auto", "official", "stratified"]
Level = Literal["category", "species"]  # NABirds: leaf visual categories, or species


def check_choice(value, hint, key: str) -> str:
    """``value`` when it is one of the ``Literal`` ``hint``'s values, else an error naming ``key``."""
    allowed = typing.get_args(hint)
    if not (isinstance(value, str) and value in allowed):
        raise SynthaugError(f"{key} {value!r} is not known; use one of {', '.join(allowed)}.")
    return value


@functools.cache
def _choice_fields(cls) -> dict:
    return {name: hint for name, hint in typing.get_type_hints(cls).items() if typing.get_origin(hint) is Literal}


def check_choices(config, section: str) -> None:
    """Every ``Literal`` field of a recipe section (``config``) holds one of its values, so a section
    built in code is checked as strictly as one read from a file."""
    for name, hint in _choice_fields(type(config)).items():
        check_choice(getattr(config, name), hint, f"{section}.{name}")


MAX_SEED = 2**63 - 1


def bounded(default, low: float, high: float):
    """A numeric recipe field (or a tuple of numbers) whose every value must lie in [low, high]: declared once with
    the field, checked by :func:`check_bounds` when a section is built, in code or from a file, so an absurd value
    (a guidance of 1e308, a batch of 10^20 images) is one sentence at load instead of a hang or garbage later."""
    return dataclasses.field(default=default, metadata={"bounds": (low, high)})


def _number(x: float) -> str:
    """A bound as a person reads it: 65,536 or 1e+07 as 10,000,000; 0.99 as it is."""
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def check_bounds(config, section: str) -> None:
    """Every field declared with :func:`bounded` holds finite values within its bounds."""
    for f in dataclasses.fields(config):
        if "bounds" not in f.metadata:
            continue
        low, high = f.metadata["bounds"]
        value = getattr(config, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
                raise SynthaugError(f"{section}.{f.name} = {v!r} is out of range; use a value from {_number(low)} to "
                                    f"{_number(high)}.")


@dataclass(frozen=True)
class DataConfig:
    """Which real data to read and how. The ``[data]`` section of a recipe.

    Attributes:
        spec: ``FORMAT:PATH`` (e.g. ``cub:/data/CUB_200_2011``) or ``digits``.
        resolution: square side in pixels; 0 means the format's own default (digits 8, others 64).
        target: CelebA: ``identity`` or an attribute name; CelebA-Dialog: an attribute whose level
            becomes the class (empty: the 5 graded attributes are the condition, one class).
        level: NABirds: ``category`` (leaf visual categories) or ``species``.
        label_key: ``wds``: the ``.json`` field holding each sample's label (empty: the ``.cls`` member);
            ``hf``: the label feature, where the dataset has several ClassLabel features or a plain label column.
        crop: crop to the bounding box where the format has one (else the centre square).
        split: ``auto``, ``official`` or ``stratified``.
        test_fraction: share of each class held out by the stratified split.
        val_fraction: share of each class's training images held out as a validation split, which no
            generator or classifier trains on and the benchmark makes its choices on (0: none, or the
            dataset's own validation split when it has one).
        shots_per_class: keep this many training images per class (0 keeps all).
        seed: seeds the stratified split and the low-data subset.
        strict: unreadable files and empty classes are errors instead of being skipped.
    """

    spec: str = "digits"
    resolution: int = 0
    target: str = ""
    level: Level = "category"
    label_key: str = ""
    crop: bool = True
    split: Split = "auto"
    test_fraction: float = 0.2
    val_fraction: float = 0.0
    shots_per_class: int = bounded(0, 0, 10**6)
    seed: int = bounded(0, 0, MAX_SEED)
    strict: bool = False

    def __post_init__(self):
        check_choices(self, "data")
        if not 0 <= self.resolution <= 4096:
            raise SynthaugError(f"data.resolution {self.resolution} is out of range; use 0 (default) or a side up to 4096 pixels.")
        if self.shots_per_class < 0:
            raise SynthaugError(f"data.shots_per_class must be 0 (all) or positive, not {self.shots_per_class}.")
        if not 0 < self.test_fraction < 1:
            raise SynthaugError(f"data.test_fraction must lie between 0 and 1, not {self.test_fraction}; use e.g. 0.2.")
        if not 0 <= self.val_fraction < 1:
            raise SynthaugError(f"data.val_fraction must lie in [0, 1), not {self.val_fraction}; use e.g. 0.1, or 0 for no validation split.")
        check_bounds(self, "data")
