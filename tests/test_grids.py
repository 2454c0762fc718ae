"""Sample grids: the class names drawn beside their rows."""

from __future__ import annotations

import numpy as np

from synthaug.grids import label_rows, label_text


def test_label_text_escapes_control_characters_and_keeps_the_rest():
    assert label_text("two\nlines") == "two\\nlines"
    assert label_text("tab\there\r") == "tab\\there\\r"
    assert label_text("bell\x07 and \u2028") == "bell\\x07 and \\u2028"
    assert label_text("café ünï it's \"quoted\" x.y") == "café ünï it's \"quoted\" x.y"


def test_names_with_newlines_and_control_characters_are_drawn_on_one_line():
    image = np.full((60, 40, 3), 200, dtype=np.uint8)
    labelled = label_rows(image, ["two\nlines", "nul\x00\x1b[31m"])
    margin = labelled.shape[1] - 40
    assert labelled.shape[0] == 60 and np.array_equal(labelled[:, margin:], image)
    ink = (labelled[:, :margin] < 128).any(axis=(1, 2))
    assert ink[:30].any() and ink[30:].any()
