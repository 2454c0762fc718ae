"""Numbers with their nouns, for the sentences synthaug prints."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """A number with its noun: '1 class', '2 classes', '1 shard', '0 images', '3 image files'.

    >>> count(1, "class"), count(2, "class"), count(0, "image"), count(3, "image file")
    ('1 class', '2 classes', '0 images', '3 image files')
    """
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun}es" if noun.endswith(("s", "sh", "ch", "x")) else f"{n} {noun}s"
