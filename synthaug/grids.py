"""Sample grids: tile uint8 images into one PNG for a person to look at."""

from __future__ import annotations

import io
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


def label_rows(image: np.ndarray, labels: list[str], max_width: int = 200) -> np.ndarray:
    """``image`` (H, W, C) as RGB with a white margin at its left naming each of its ``len(labels)``
    equal-height rows (e.g. the class of each row of a sample grid), in PIL's small default font, each on one
    line (:func:`label_text`).

    Names wider than ``max_width`` pixels are shortened with "...".
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=12)
    pen = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def fit(text: str) -> str:
        if pen.textlength(text, font=font) <= max_width:
            return text
        while len(text) > 1 and pen.textlength(text + "...", font=font) > max_width:
            text = text[:-1]
        return text + "..."

    fitted = [fit(label_text(label)) for label in labels]
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
