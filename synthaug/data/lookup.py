"""Class lookup used by every command: a name a user typed -> the class indices it means.

Exact match first, then a match that ignores case, spaces and punctuation; groups (NABirds species)
resolve to their member classes. An unknown name is an error that lists the closest names.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from synthaug.errors import SynthaugError


def normalize_name(name: str) -> str:
    """Case-, space- and punctuation-insensitive form: "Allen's Hummingbird" -> "allenshummingbird"."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


@dataclass(frozen=True)
class Match:
    """What a name resolved to: a class, or a group of classes."""

    name: str  # the canonical name that matched
    classes: tuple[int, ...]
    group: bool = False


def closest_names(query: str, names: Sequence[str], n: int = 3) -> list[str]:
    """The names most like ``query`` (compared in normalized form), best first."""
    by_norm: dict[str, str] = {}
    for name in names:
        by_norm.setdefault(normalize_name(name), name)
    hits = difflib.get_close_matches(normalize_name(query), list(by_norm), n=n, cutoff=0.5)
    return [by_norm[h] for h in hits]


def unknown_name_error(query: str, names: Sequence[str], where: str, kind: str = "class") -> SynthaugError:
    close = closest_names(query, names)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"run `synthaug classes {shlex.quote(where)}` to list them."
    return SynthaugError(f"No {kind} named {query!r} in {where}; {hint}")


def resolve_name(
    query: str,
    class_names: Sequence[str],
    groups: Sequence[tuple[str, Sequence[int]]] = (),
    where: str = "this dataset",
) -> Match:
    """Resolve one name to classes.

    Args:
        query: what the user typed, e.g. "allen's hummingbird".
        class_names: the dataset's class names (index = label).
        groups: (group name, member class indices) pairs, e.g. NABirds species.
        where: how to name the dataset in an error.

    Returns:
        The :class:`Match`; a group's empty membership (no images of it in this copy) is an error.

    >>> resolve_name("allen's HUMMINGBIRD", ["Allen's Hummingbird"]).classes
    (0,)
    """
    candidates: list[tuple[str, tuple[int, ...], bool]] = [(n, (i,), False) for i, n in enumerate(class_names)]
    candidates += [(g, tuple(m), True) for g, m in groups]
    for same in (lambda a, b: a == b, lambda a, b: normalize_name(a) == normalize_name(b)):
        for name, members, is_group in candidates:
            if same(name, query):
                if not members:
                    raise SynthaugError(f"{name!r} has no images in {where}; pick a class that has images.")
                return Match(name, members, is_group)
    raise unknown_name_error(query, [c[0] for c in candidates], where)


def search_names(text: str, names: Sequence[str]) -> list[int]:
    """Indices of the names that contain ``text``, ignoring case, spaces and punctuation."""
    needle = normalize_name(text)
    return [i for i, name in enumerate(names) if needle in normalize_name(name)]
