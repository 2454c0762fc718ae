"""Decode one image (a file, or its bytes in a file object) into a square uint8 array: any mode to RGB,
crop, antialiased resize."""

from __future__ import annotations

import math
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # left, top, right, bottom


def square_around(box: np.ndarray, width: int, height: int) -> Box:
    """The square (clamped inside the image) centred on an x, y, w, h box, as wide as its longer side."""
    x, y, w, h = (float(v) for v in box)
    side = min(max(w, h), width, height)
    left = min(max(x + w / 2 - side / 2, 0.0), width - side)
    top = min(max(y + h / 2 - side / 2, 0.0), height - side)
    return left, top, left + side, top + side


def centre_square(width: int, height: int) -> Box:
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert grayscale, palette, RGBA (over white), CMYK and 16-bit images to 8-bit RGB."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0  # 16-bit range onto 8-bit
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB") if im.mode != "RGB" else im


def open_image(path: Path | BinaryIO) -> Image.Image:
    """Open an image (a path, or a seekable binary file object) lazily. JPEGs open without Pillow's
    decompression-bomb check, which counts the full-size pixels: :func:`decode_image` lets libjpeg decode a
    large photo at 1/2 to 1/8 scale and checks the pixels it will actually decode. Other formats get
    Pillow's check as usual."""
    if hasattr(path, "read"):
        is_jpeg = path.read(3) == b"\xff\xd8\xff"
        path.seek(0)
    else:
        with open(path, "rb") as f:
            is_jpeg = f.read(3) == b"\xff\xd8\xff"
    if is_jpeg:
        from PIL import JpegImagePlugin

        return JpegImagePlugin.JpegImageFile(path)
    try:
        return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{e.args[0].split(' exceeds')[0]} is more than Pillow's limit for a non-JPEG image, which must be "
                         "decoded whole (a possible decompression bomb); downscale it or save it as JPEG") from None


def check_pixels(im: Image.Image, resolution: int) -> None:
    """Refuse to decode more pixels than Pillow's limit (``Image.MAX_IMAGE_PIXELS``; None lifts it)."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = im.size
    if limit is None or width * height <= limit:
        return
    if im.format == "JPEG":
        raise ValueError(f"decoding it at {resolution}px needs {width} x {height} pixels, more than Pillow's limit of "
                         f"{limit} (a possible decompression bomb); downscale the image")
    raise ValueError(f"{width} x {height} pixels is more than Pillow's limit of {limit} for a non-JPEG image, which "
                     "must be decoded whole (a possible decompression bomb); downscale it or save it as JPEG")


def decode_image(
    path: Path | BinaryIO, resolution: int, box: np.ndarray | None = None, frame: np.ndarray | None = None
) -> np.ndarray:
    """Decode ``path`` to a (resolution, resolution, 3) uint8 array.

    Args:
        path: the image file, or a seekable binary file object holding its bytes.
        resolution: output side in pixels.
        box: x, y, w, h of the object (NaN or None for none): the crop is the square around it;
            without a box, the centre square.
        frame: width, height of the image the box was measured on; a resized copy scales the box.

    Raises whatever PIL raises for unreadable files, and ValueError for an image too large to decode
    safely; the caller counts and skips those.
    """
    with open_image(path) as im:
        width, height = im.size
        if box is not None and np.all(np.isfinite(box)) and box[2] > 0 and box[3] > 0:
            box = np.asarray(box, dtype=np.float64)
            if frame is not None and np.all(np.isfinite(frame)) and tuple(frame) != (width, height):
                box = box * np.array([width / frame[0], height / frame[1]] * 2)
            crop = square_around(box, width, height)
        else:
            crop = centre_square(width, height)
        side = crop[2] - crop[0]
        if im.format == "JPEG" and side > 2 * resolution:
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the crop keeps >= 2x the output size,
            # so the final antialiased resize still has enough pixels; much faster for large photos.
            scale = 2 * resolution / side
            im.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
            sx, sy = im.size[0] / width, im.size[1] / height
            crop = (crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy)
        check_pixels(im, resolution)
        im = to_rgb(im)
        im = im.resize((resolution, resolution), Image.Resampling.BICUBIC, box=crop)
        return np.asarray(im, dtype=np.uint8)
