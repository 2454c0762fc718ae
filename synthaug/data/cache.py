"""Decode a catalog's images once, in parallel, into a uint8 array cached on disk (under :func:`synthaug.cache.cache_root`).

The cache folder is keyed by the source, every decode setting, and each file's size and mtime, so
a changed source file makes a new cache. Images are decoded straight into the cache file and read back
memory-mapped; a damaged cache (size or sha256 mismatch, checked cheaply: see :func:`check_images_file`)
is rebuilt.
Unreadable files are skipped, counted, and listed in ``skipped.log`` beside the cache. A cache that
cannot be written costs time, not results: the data are decoded (or converted) again, with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthaug import progress
from synthaug.cache import cache_root
from synthaug.data.catalog import Catalog
from synthaug.data.decode import decode_image
from synthaug.files import sha256_file, write_text_atomic, writing

log = logging.getLogger(__name__)

DECODE_VERSION = 2  # bump when decode_image's output for the same inputs changes


@dataclass
class Decoded:
    """The readable images of a catalog at one resolution."""

    images: np.ndarray  # (M, R, R, C) uint8
    kept: np.ndarray  # (M,) catalog indices of the rows of `images`
    skipped: list[tuple[int, str]]  # (catalog index, reason) for files that could not be read
    path: Path | None  # the cache folder, None for in-memory datasets
    from_cache: bool


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
    """(file, size, mtime_ns) per catalog row, and (index, reason) for files that are absent.

    A catalog whose images are not files of their own (``read_image``: tar members, dataset rows) has no
    rows to stat: its ``fingerprint`` stands for its sources in the cache key.
    """
    if catalog.read_image is not None:
        return [], []
    rows, missing = [], []
    root = str(catalog.root)
    for i, rel in enumerate(catalog.files):
        try:
            st = os.stat(os.path.join(root, rel))  # strings, not Paths: a third of the time at 100k+ files
            rows.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            rows.append((rel, -1, -1))
            where = f" ({catalog.lines[i]})" if catalog.lines else ""
            missing.append((i, f"file not found{where}"))
    return rows, missing


def cache_key(catalog: Catalog, resolution: int, crop: bool, stats: list) -> str:
    digest = hashlib.sha256()
    head = {"version": DECODE_VERSION, "format": catalog.format, "root": str(catalog.root), "resolution": resolution, "crop": crop}
    if catalog.fingerprint is not None:
        head["fingerprint"] = catalog.fingerprint
    digest.update(json.dumps(head, sort_keys=True).encode())
    boxes = catalog.boxes if crop and catalog.boxes is not None else None
    frames = catalog.frames if crop and catalog.frames is not None else None
    parts = []  # one update of the joined parts: the same digest as an update per part, much faster at 100k+ rows
    for i, row in enumerate(stats):
        parts.append(repr(row).encode())
        if boxes is not None:
            parts.append(boxes[i].tobytes())
        if frames is not None:
            parts.append(frames[i].tobytes())
    digest.update(b"".join(parts))
    return digest.hexdigest()


# -- the dataset cache: images.npy (memory-mapped), meta.json, verified.json, skipped.log ---------------
#
# Loading must not read the whole images.npy: that is what makes it cost the same at 200k images as at
# 2k. Damage is still caught before use. meta.json records the file's size and sha256 when it was
# written; verified.json records the file's size, mtime, ctime and inode at the last time the whole
# file was found to match that sha256. Every load compares the file's stat with that record, and hashes
# the whole file again only when they differ (the file was written to, replaced or copied), or when the
# record is "racy": a file modified within RACY_NS before its check may have changed again in the same
# timestamp tick without a new mtime (git's racily-clean index entries), so such a record is not trusted.
# Damage that changes no timestamp (a failing disk) is not caught; a changed byte written by any program is.

VERIFIED_FILE = "verified.json"
RACY_NS = 3_000_000_000  # covers the coarsest common mtime resolutions (FAT 2 s, ext3 and HFS+ 1 s)


def _file_state(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _record_verified(folder: Path, sha256: str, st: os.stat_result, checked_ns: int) -> None:
    """Write verified.json: ``sha256`` was checked against the whole file in state ``st`` at ``checked_ns``."""
    record = {"sha256": sha256, "file": _file_state(st), "checked_ns": checked_ns}
    try:
        write_text_atomic(folder / VERIFIED_FILE, json.dumps(record))
    except OSError as e:  # a read-only cache still works, at the cost of a full check on every load
        log.warning("Could not record the check of the dataset cache %s (%s); every load will read the whole file to check it.",
                    folder, e)


def check_images_file(folder: Path, size: int, sha256: str) -> None:
    """Raise ValueError when ``folder/images.npy`` is not the file meta.json describes (size, then sha256).

    The sha256 is computed only when the file's stat differs from verified.json's record (see above).
    """
    path = folder / "images.npy"
    st = path.stat()
    if st.st_size != size:
        raise ValueError(f"its images.npy has {st.st_size} bytes where meta.json records {size}")
    try:
        record = json.loads((folder / VERIFIED_FILE).read_text())
        trusted = (record["sha256"] == sha256 and record["file"] == _file_state(st)
                   and record["checked_ns"] - st.st_mtime_ns > RACY_NS)
    except (OSError, ValueError, KeyError, TypeError):  # absent (older caches) or damaged: check the file
        trusted = False
    if trusted:
        return
    checked_ns = time.time_ns()
    if sha256_file(path) != sha256:
        raise ValueError("its images.npy does not match the checksum in meta.json")
    _record_verified(folder, sha256, st, checked_ns)


def open_images(path: Path) -> np.ndarray:
    """A cache's images.npy, memory-mapped read-only: (M, R, R, C) uint8, nothing read until used."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_cache(folder: Path, resolution: int) -> Decoded | None:
    """Read a cache folder, or return None (and say why) when it is absent or damaged."""
    meta_path, images_path = folder / "meta.json", folder / "images.npy"
    try:
        if not meta_path.is_file():
            return None
    except OSError:  # e.g. an unreadable cache folder: decode again
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta["version"] != DECODE_VERSION or not images_path.exists():
            raise ValueError("incomplete")
        check_images_file(folder, meta["bytes"], meta["sha256"])
        images = open_images(images_path)
        kept = np.asarray(meta["kept"], dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(kept) or images.shape[1:3] != (resolution, resolution):
            raise ValueError("its shape does not match meta.json")
    except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError) as e:
        log.warning("Dataset cache %s is damaged (%s); rebuilding it.", folder, e)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    skipped = [(int(i), reason) for i, reason in meta["skipped"]]
    return Decoded(images, kept, skipped, folder, from_cache=True)


class RowFile:
    """A new uint8 .npy file of a given shape, written row by row with ``pwrite`` from any thread: a large
    dataset is decoded straight to disk, never whole in memory, and (unlike writing through a memory map)
    without its pages piling up in the process's resident memory."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape = Path(path), shape
        header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": shape}
        with open(self.path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            self.offset = f.tell()
            self.row_bytes = int(np.prod(shape[1:], dtype=np.int64))
            f.truncate(self.offset + shape[0] * self.row_bytes)
        self.fd = os.open(self.path, os.O_RDWR)

    def __setitem__(self, i: int, row: np.ndarray) -> None:
        data = np.ascontiguousarray(row, dtype=np.uint8).tobytes()
        if len(data) != self.row_bytes:
            raise ValueError(f"row of {len(data)} bytes where {self.row_bytes} were expected")
        os.pwrite(self.fd, data, self.offset + i * self.row_bytes)

    def read(self, start: int, stop: int) -> np.ndarray:
        data = os.pread(self.fd, (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(stop - start, *self.shape[1:])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def decode_all(catalog: Catalog, resolution: int, crop: bool, missing: dict[int, str], workers: int, out) -> tuple[np.ndarray, list]:
    """Decode every catalog row not already known ``missing`` into ``out[i]`` (an array or a :class:`RowFile`),
    with a thread pool (PIL releases the GIL). Returns (catalog indices decoded, sorted (index, reason) skips)."""
    from PIL import Image

    n = len(catalog)
    ok = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = dict(missing)

    def work(i: int) -> None:
        box = catalog.boxes[i] if crop and catalog.boxes is not None else None
        frame = catalog.frames[i] if catalog.frames is not None else None
        try:
            if catalog.read_image is not None:
                data = catalog.read_image(i)
                if not data:
                    raise ValueError("zero-byte image")
                source = io.BytesIO(data)
            else:
                source = catalog.root / catalog.files[i]
                if os.path.getsize(source) == 0:
                    raise ValueError("zero-byte file")
            pixels = decode_image(source, resolution, box, frame)
        except Exception as e:  # any decode failure means this one image is unreadable
            reasons[i] = f"{type(e).__name__}: {e}".strip()
            return
        out[i] = pixels  # outside the try: a failed cache write is not an unreadable image
        ok[i] = True

    todo = [i for i in range(n) if i not in missing]

    def in_batches(pool):  # pool.map submits everything at once: a future per image, 1-2 kB each, at 100k+ images
        for start in range(0, len(todo), 4096):
            yield from pool.map(work, todo[start : start + 4096])

    # Pillow warns about images over its pixel limit; decode_image decides about those itself (and says why in
    # skipped.log), so the warning becomes an exception it catches. Filters are process-wide: set once, here.
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers) as pool:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for _ in progress.track(in_batches(pool), f"decoding {catalog.format} at {resolution}px", total=len(todo)):
            pass
    return np.flatnonzero(ok), sorted(reasons.items())


def write_cache(folder: Path, catalog: Catalog, resolution: int, missing: dict[int, str], workers: int,
                settings: dict) -> Decoded:
    """Decode into a temporary folder beside ``folder`` (straight to disk), then rename it into place (atomic)
    and return the cache memory-mapped."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        return _write_cache(folder, tmp, catalog, resolution, missing, workers, settings)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_cache(folder: Path, tmp: Path, catalog: Catalog, resolution: int, missing: dict[int, str], workers: int,
                 settings: dict) -> Decoded:
    with writing(folder / "images.npy"):  # a full disk (a failed write() carries no file name) names the cache file
        shape = (len(catalog), resolution, resolution, 3)
        rows = RowFile(tmp / "decoding.npy", shape)
        try:
            kept, skipped = decode_all(catalog, resolution, settings["crop"], missing, workers, rows)
            if len(kept) < len(catalog):  # copy the readable rows, in order, into a file of their own
                out = RowFile(tmp / "images.npy", (len(kept), *shape[1:]))
                try:
                    for j, i in enumerate(kept):
                        out[j] = rows.read(i, i + 1)
                finally:
                    out.close()
        finally:
            rows.close()
        if len(kept) < len(catalog):
            rows.path.unlink()
        else:
            rows.path.rename(tmp / "images.npy")
        images = tmp / "images.npy"
        meta = {
            "version": DECODE_VERSION,
            **settings,
            "shape": [len(kept), *shape[1:]],
            "bytes": images.stat().st_size,
            "sha256": sha256_file(images),
            "kept": kept.tolist(),
            "skipped": [[i, reason] for i, reason in skipped],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        # The file is complete and only this process can reach it until the rename below. Its mtime set well
        # before the record's time means no later write (which stamps its own time) can leave the stat as recorded,
        # and the record is not racy: the next load need not hash the whole file again.
        now = time.time_ns()
        os.utime(images, ns=(now, now - 2 * RACY_NS))
        _record_verified(tmp, meta["sha256"], images.stat(), now)
        lines = [f"{catalog.source(i)}\t{reason}" for i, reason in skipped]
        (tmp / "skipped.log").write_text("".join(line + "\n" for line in lines))
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote the same cache first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    # Caches of older versions of the same source and settings are stale now.
    prefix = folder.name.rsplit("-", 1)[0] + "-"
    for old in folder.parent.glob(prefix + "*"):
        if old != folder and old.is_dir() and ".tmp-" not in old.name:
            shutil.rmtree(old, ignore_errors=True)
    return Decoded(open_images(folder / "images.npy"), kept, skipped, folder, from_cache=False)


def decode_in_memory(catalog: Catalog, resolution: int, crop: bool, missing: dict[int, str], workers: int) -> Decoded:
    """Decode without a cache (it cannot be written): the readable images in one in-memory array."""
    images = np.zeros((len(catalog), resolution, resolution, 3), dtype=np.uint8)
    kept, skipped = decode_all(catalog, resolution, crop, missing, workers, images)
    return Decoded(images if len(kept) == len(catalog) else images[kept], kept, skipped, None, from_cache=False)


def cache_folder(catalog: Catalog, resolution: int, crop: bool, stats: list) -> Path:
    """Where the decoded images of ``catalog`` live: named by the source and settings, keyed by :func:`cache_key`."""
    key = cache_key(catalog, resolution, crop, stats)
    # a newer cache of the same source replaces the older ones with its prefix (see write_cache)
    source = str(catalog.root) if catalog.location is None else catalog.location
    root_tag = hashlib.sha256(source.encode()).hexdigest()[:8]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in catalog.root.name)
    return cache_root() / "datasets" / f"{catalog.format}-{name}-{root_tag}-{resolution}px{'' if crop else '-nocrop'}-{key[:16]}"


def decode_catalog(catalog: Catalog, resolution: int, crop: bool = True, workers: int | None = None) -> Decoded:
    """Decoded images of a catalog at ``resolution``, from the cache when it is current.

    Args:
        catalog: what the annotation files list.
        resolution: output side in pixels.
        crop: crop to the bounding box where the catalog has one (else the centre square).
        workers: decode threads (default: the CPUs this process may use).

    Returns:
        The :class:`Decoded` images; from a cache they are a read-only memory map, read only where used.
    """
    if catalog.pixels is not None:
        return Decoded(resize_pixels(catalog.pixels, resolution), np.arange(len(catalog)), [], None, False)
    stats, missing = stat_sources(catalog)
    folder = cache_folder(catalog, resolution, crop, stats)
    cached = load_cache(folder, resolution)
    if cached is not None:
        log.debug("Read %d images from the cache %s", len(cached.kept), folder)
        return cached
    workers = workers or max(1, min(16, len(os.sched_getaffinity(0))))
    settings = {"format": catalog.format, "root": str(catalog.root), "resolution": resolution, "crop": crop}
    try:
        return write_cache(folder, catalog, resolution, dict(missing), workers, settings)
    except OSError as e:  # a cache we cannot write costs time later, not correctness now
        log.warning("Could not write the dataset cache %s (%s); the next load will decode again (set SYNTHAUG_CACHE "
                    "to a writable folder to keep it).", folder, e)
    return decode_in_memory(catalog, resolution, crop, dict(missing), workers)
