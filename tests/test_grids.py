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


def test_accented_and_cjk_names_are_drawn_with_glyphs_not_boxes():
    from matplotlib import ft2font

    from synthaug.grids import label_font

    names = ["Café Ünïcode", "Ближний", "北京 鸟", "plain"]
    font, drawn = label_font(names)
    assert drawn[0] == "Café Ünïcode" and drawn[1] == "Ближний"  # DejaVu Sans has these
    have = frozenset(ft2font.FT2Font(font.path).get_charmap())
    for text in drawn:  # whatever font was chosen, it has every character it will draw (CJK: a CJK font, or \\u escapes)
        assert all(ord(c) in have or c.isspace() for c in text), text
    if not all(ord(c) in have for c in "北京鸟"):
        assert drawn[2] == "\\u5317\\u4eac \\u9e1f"
    labelled = label_rows(np.full((80, 20, 3), 200, dtype=np.uint8), names)
    assert labelled.shape[0] == 80
