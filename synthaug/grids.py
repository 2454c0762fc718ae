"""Sample grids: tile uint8 images into one PNG for a person to look at."""

from __future__ import annotations

import functools
import io
import unicodedata
from pathlib import Path

import numpy as np

from synthaug.files import write_bytes_atomic


def tile_images(images: np.ndarray, ncol: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images row by row into one (rows*(H+pad)+pad, ...) image."""
    n, h, w, c = images.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), fill, dtype=np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, ncol)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = image
    return out


def spread_classes(num_classes: int, max_rows: int) -> np.ndarray:
    """Up to ``max_rows`` class indices spread evenly from the first class to the last (the rows of a grid)."""
    return np.unique(np.linspace(0, num_classes - 1, min(max_rows, num_classes)).round().astype(int))


def upscale(image: np.ndarray, min_side: int) -> np.ndarray:
    """An (H, W, C) image enlarged by the smallest integer factor (nearest neighbour) that makes its
    longer side at least ``min_side``, so that 8-px images stay crisp pixels."""
    factor = max(1, -(-min_side // max(image.shape[:2]))) if min_side else 1
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image


def label_text(name: str) -> str:
    """A class name as it is drawn into an image: on one line, its control characters (newlines, tabs, escape
    codes) and line separators written out as Python writes them in a string, so a name cannot break the text
    layout or hide what it holds.

    >>> label_text("two\\nlines"), label_text("café")
    ('two\\\\nlines', 'café')
    """
    import unicodedata

    def shown(c: str) -> str:  # control, format and unassigned characters (C*), line and paragraph separators
        return repr(c)[1:-1] if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp") else c

    return "".join(map(shown, name))


@functools.cache
def _font_files() -> tuple[str, ...]:
    """DejaVu Sans (matplotlib ships it: Latin with accents, Greek, Cyrillic), then every font matplotlib finds on the
    system (a CJK font where one is installed)."""
    from matplotlib import font_manager

    first = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    return (first, *sorted({f.fname for f in font_manager.fontManager.ttflist} - {first}))


@functools.cache
def _coverage(path: str) -> frozenset[int]:
    """The code points a font file has glyphs for."""
    from matplotlib import ft2font

    try:
        return frozenset(ft2font.FT2Font(path).get_charmap())
    except (OSError, RuntimeError, ValueError):
        return frozenset()


def label_font(texts: list[str], size: int = 12):
    """A font that draws every character of ``texts`` (no empty boxes), and the texts as it draws them: the first
    of :func:`_font_files` that has them all; else DejaVu Sans with what it lacks transliterated (accents dropped by
    Unicode decomposition) or, failing that, written as its code point (``\\u5317``)."""
    from PIL import ImageFont

    needed = {ord(c) for t in texts for c in t if not c.isspace()}
    for path in _font_files():
        if needed <= _coverage(path):
            return ImageFont.truetype(path, size), list(texts)
    first = _font_files()[0]
    have = _coverage(first)

    def drawable(c: str) -> str:
        if ord(c) in have or c.isspace():
            return c
        base = "".join(b for b in unicodedata.normalize("NFKD", c) if ord(b) in have and not unicodedata.combining(b))
        return base or (f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")

    return ImageFont.truetype(first, size), ["".join(map(drawable, t)) for t in texts]


def label_rows(image: np.ndarray, labels: list[str], max_width: int = 200) -> np.ndarray:
    """``image`` (H, W, C) as RGB with a white margin at its left naming each of its ``len(labels)``
    equal-height rows (e.g. the class of each row of a sample grid), in a small font that has their characters
    (:func:`label_font`), each on one line (:func:`label_text`).

    Names wider than ``max_width`` pixels are shortened with "...".
    """
    from PIL import Image, ImageDraw

    font, labels = label_font([label_text(label) for label in labels])
    pen = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def fit(text: str) -> str:
        if pen.textlength(text, font=font) <= max_width:
            return text
        while len(text) > 1 and pen.textlength(text + "...", font=font) > max_width:
            text = text[:-1]
        return text + "..."

    fitted = [fit(label) for label in labels]
    margin = int(max(pen.textlength(t, font=font) for t in fitted)) + 8
    rgb = image if image.shape[2] == 3 else image.repeat(3, axis=2)
    canvas = Image.new("RGB", (margin + rgb.shape[1], rgb.shape[0]), "white")
    canvas.paste(Image.fromarray(rgb), (margin, 0))
    pen = ImageDraw.Draw(canvas)
    band = rgb.shape[0] / len(labels)
    for r, text in enumerate(fitted):
        _, top, _, bottom = pen.textbbox((0, 0), text, font=font)
        pen.text((4, (r + 0.5) * band - (top + bottom) / 2), text, fill="black", font=font)
    return np.asarray(canvas)


def save_png(image: np.ndarray, path: Path, min_side: int = 0) -> Path:
    """Write an (H, W, C) uint8 image as PNG atomically; upscale by an integer factor to ``min_side``."""
    from PIL import Image

    image = upscale(image, min_side)
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return write_bytes_atomic(Path(path), buffer.getvalue())
