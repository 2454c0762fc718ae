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


def save_png(image: np.ndarray, path: Path, min_side: int = 0) -> Path:
    """Write an (H, W, C) uint8 image as PNG atomically; upscale by an integer factor to ``min_side``."""
    from PIL import Image

    factor = max(1, -(-min_side // max(image.shape[:2]))) if min_side else 1
    if factor > 1:
        image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return write_bytes_atomic(Path(path), buffer.getvalue())
