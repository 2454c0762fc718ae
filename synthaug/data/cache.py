"""Decode a catalog's images once, in parallel, into a uint8 array cached on disk.

The cache folder is keyed by the source, every decode setting, and each file's size and mtime, so
a changed source file makes a new cache; a damaged cache (size or sha256 mismatch) is rebuilt.
Unreadable files are skipped, counted, and listed in ``skipped.log`` beside the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthaug import progress
from synthaug.data.catalog import Catalog
from synthaug.data.decode import decode_image
from synthaug.files import sha256_file

log = logging.getLogger(__name__)

DECODE_VERSION = 1  # bump when decode_image's output for the same inputs changes


@dataclass
class Decoded:
    """The readable images of a catalog at one resolution."""

    images: np.ndarray  # (M, R, R, C) uint8
    kept: np.ndarray  # (M,) catalog indices of the rows of `images`
    skipped: list[tuple[int, str]]  # (catalog index, reason) for files that could not be read
    path: Path | None  # the cache folder, None for in-memory datasets
    from_cache: bool


def cache_root() -> Path:
    """Where caches live: $SYNTHAUG_CACHE, else $XDG_CACHE_HOME/synthaug, else ~/.cache/synthaug."""
    if os.environ.get("SYNTHAUG_CACHE"):
        return Path(os.environ["SYNTHAUG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "synthaug"


def resize_pixels(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """Antialiased bicubic resize of in-memory (N, H, W, C) uint8 images to a square resolution."""
    from PIL import Image

    if pixels.shape[1:3] == (resolution, resolution):
        return pixels.copy()
    out = np.empty((len(pixels), resolution, resolution, pixels.shape[3]), dtype=np.uint8)
    for i, p in enumerate(pixels):
        im = Image.fromarray(p[..., 0] if p.shape[2] == 1 else p)
        r = np.asarray(im.resize((resolution, resolution), Image.Resampling.BICUBIC))
        out[i] = r.reshape(resolution, resolution, -1)
    return out


def stat_sources(catalog: Catalog) -> tuple[list[tuple[str, int, int]], list[tuple[int, str]]]:
    """(file, size, mtime_ns) per catalog row, and (index, reason) for files that are absent."""
    rows, missing = [], []
    for i, rel in enumerate(catalog.files):
        try:
            st = os.stat(catalog.root / rel)
            rows.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            rows.append((rel, -1, -1))
            where = f" ({catalog.lines[i]})" if catalog.lines else ""
            missing.append((i, f"file not found{where}"))
    return rows, missing


def cache_key(catalog: Catalog, resolution: int, crop: bool, stats: list) -> str:
    digest = hashlib.sha256()
    head = {"version": DECODE_VERSION, "format": catalog.format, "root": str(catalog.root), "resolution": resolution, "crop": crop}
    digest.update(json.dumps(head, sort_keys=True).encode())
    boxes = catalog.boxes if crop and catalog.boxes is not None else None
    frames = catalog.frames if crop and catalog.frames is not None else None
    for i, row in enumerate(stats):
        digest.update(repr(row).encode())
        if boxes is not None:
            digest.update(boxes[i].tobytes())
        if frames is not None:
            digest.update(frames[i].tobytes())
    return digest.hexdigest()


def load_cache(folder: Path, resolution: int) -> Decoded | None:
    """Read a cache folder, or return None (and say why) when it is absent or damaged."""
    meta_path, images_path = folder / "meta.json", folder / "images.npy"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta["version"] != DECODE_VERSION or not images_path.exists():
            raise ValueError("incomplete")
        if images_path.stat().st_size != meta["bytes"] or sha256_file(images_path) != meta["sha256"]:
            raise ValueError("its images.npy does not match the checksum in meta.json")
        images = np.load(images_path)
        kept = np.asarray(meta["kept"], dtype=np.int64)
        if images.shape[0] != len(kept) or images.shape[1:3] != (resolution, resolution):
            raise ValueError("its shape does not match meta.json")
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        log.warning("Dataset cache %s is damaged (%s); rebuilding it.", folder, e)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    skipped = [(int(i), reason) for i, reason in meta["skipped"]]
    return Decoded(images, kept, skipped, folder, from_cache=True)


def write_cache(folder: Path, decoded: Decoded, catalog: Catalog, settings: dict) -> None:
    """Write the cache into a temporary folder, then rename it into place (atomic)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        np.save(tmp / "images.npy", decoded.images)
        meta = {
            "version": DECODE_VERSION,
            **settings,
            "shape": list(decoded.images.shape),
            "bytes": (tmp / "images.npy").stat().st_size,
            "sha256": sha256_file(tmp / "images.npy"),
            "kept": decoded.kept.tolist(),
            "skipped": [[i, reason] for i, reason in decoded.skipped],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        lines = [f"{catalog.source(i)}\t{reason}" for i, reason in decoded.skipped]
        (tmp / "skipped.log").write_text("".join(line + "\n" for line in lines))
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote the same cache first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Caches of older versions of the same source and settings are stale now.
    prefix = folder.name.rsplit("-", 1)[0] + "-"
    for old in folder.parent.glob(prefix + "*"):
        if old != folder and old.is_dir() and ".tmp-" not in old.name:
            shutil.rmtree(old, ignore_errors=True)


def decode_all(catalog: Catalog, resolution: int, crop: bool, missing: dict[int, str], workers: int) -> Decoded:
    """Decode every catalog file not already known ``missing``, with a thread pool (PIL releases the GIL)."""
    n = len(catalog)
    images = np.zeros((n, resolution, resolution, 3), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = dict(missing)

    def work(i: int) -> None:
        box = catalog.boxes[i] if crop and catalog.boxes is not None else None
        frame = catalog.frames[i] if catalog.frames is not None else None
        try:
            if os.path.getsize(catalog.root / catalog.files[i]) == 0:
                raise ValueError("zero-byte file")
            images[i] = decode_image(catalog.root / catalog.files[i], resolution, box, frame)
            ok[i] = True
        except Exception as e:  # any decode failure means this one file is unreadable
            reasons[i] = f"{type(e).__name__}: {e}".strip()

    todo = [i for i in range(n) if i not in missing]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in progress.track(pool.map(work, todo), f"decoding {catalog.format} at {resolution}px", total=len(todo)):
            pass
    kept = np.flatnonzero(ok)
    return Decoded(images if ok.all() else images[kept], kept, sorted(reasons.items()), None, from_cache=False)


def decode_catalog(catalog: Catalog, resolution: int, crop: bool = True, workers: int | None = None) -> Decoded:
    """Decoded images of a catalog at ``resolution``, from the cache when it is current.

    Args:
        catalog: what the annotation files list.
        resolution: output side in pixels.
        crop: crop to the bounding box where the catalog has one (else the centre square).
        workers: decode threads (default: the CPUs this process may use).
    """
    if catalog.pixels is not None:
        return Decoded(resize_pixels(catalog.pixels, resolution), np.arange(len(catalog)), [], None, False)
    stats, missing = stat_sources(catalog)
    key = cache_key(catalog, resolution, crop, stats)
    root_tag = hashlib.sha256(str(catalog.root).encode()).hexdigest()[:8]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in catalog.root.name)
    folder = cache_root() / "datasets" / f"{catalog.format}-{name}-{root_tag}-{resolution}px{'' if crop else '-nocrop'}-{key[:16]}"
    cached = load_cache(folder, resolution)
    if cached is not None:
        log.debug("Read %d images from the cache %s", len(cached.kept), folder)
        return cached
    workers = workers or max(1, min(16, len(os.sched_getaffinity(0))))
    decoded = decode_all(catalog, resolution, crop, dict(missing), workers)
    settings = {"format": catalog.format, "root": str(catalog.root), "resolution": resolution, "crop": crop}
    try:
        write_cache(folder, decoded, catalog, settings)
        decoded.path = folder
    except OSError as e:  # a cache we cannot write costs time later, not correctness now
        log.warning("Could not write the dataset cache %s (%s); the next load will decode again.", folder, e)
    return decoded
