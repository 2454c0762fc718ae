"""Decode a catalog's images once, in parallel, into a uint8 array cached on disk; and where every
synthaug cache lives (:func:`cache_root`), with the checked cache files the feature and weights caches use.

The cache folder is keyed by the source, every decode setting, and each file's size and mtime, so
a changed source file makes a new cache; a damaged cache (size or sha256 mismatch) is rebuilt.
Unreadable files are skipped, counted, and listed in ``skipped.log`` beside the cache. A cache that
cannot be written costs time, not results: the data are decoded (or converted) again, with a warning.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthaug import progress
from synthaug.data.catalog import Catalog
from synthaug.data.decode import decode_image
from synthaug.files import sha256_file, write_bytes_atomic, write_text_atomic

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


def cache_root() -> Path:
    """Where caches live: $SYNTHAUG_CACHE, else $XDG_CACHE_HOME/synthaug, else ~/.cache/synthaug.

    Without a home folder ($HOME unset or empty and no passwd entry, as in some containers) the
    caches go to a per-user folder in the system's temporary folder, with a warning.
    """
    if os.environ.get("SYNTHAUG_CACHE"):
        return _expand(os.environ["SYNTHAUG_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return _expand(os.environ["XDG_CACHE_HOME"]) / "synthaug"
    home = _home()
    return Path(home) / ".cache" / "synthaug" if home else _temporary_root()


def _home() -> str | None:
    """$HOME, else the passwd entry's home folder (as Python's expanduser does); None where neither is absolute."""
    home = os.environ.get("HOME")
    if not home:
        try:
            import pwd

            home = pwd.getpwuid(os.getuid()).pw_dir
        except (ImportError, KeyError):
            home = None
    return home if home and os.path.isabs(home) else None


def _expand(value: str) -> Path:
    """``Path(value).expanduser()`` with the home folder :func:`_home` finds (pathlib raises without one)."""
    if value == "~" or value.startswith("~/"):
        home = _home()
        return Path(home, value[2:]) if home else _temporary_root()
    return Path(value).expanduser()


@functools.cache
def _temporary_root() -> Path:
    root = Path(tempfile.gettempdir()) / f"synthaug-cache-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        if root.stat().st_uid != os.getuid():  # planted by another user: do not read caches from it
            raise PermissionError(f"{root} belongs to another user")
    except OSError:
        root = Path(tempfile.mkdtemp(prefix="synthaug-cache-"))
    log.warning("No home folder is known ($HOME is unset), so caches go to %s; set SYNTHAUG_CACHE to keep them elsewhere.", root)
    return root


def cache_file_is_intact(path: Path) -> bool | None:
    """Whether a cache file matches the sha256 recorded beside it (``path.sha256``, in sha256sum's format).

    Returns None when the file or its record is absent (nothing to check), False when they disagree
    (a truncated, bit-flipped or half-written file), True when they agree.
    """
    path = Path(path)
    record = path.with_name(path.name + ".sha256")
    try:
        expected = record.read_text().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return False if path.is_file() and record.exists() else None
    try:
        return sha256_file(path) == expected
    except OSError:
        return None if not path.exists() else False


def write_cache_file(path: Path, data: bytes, temporary_ok: bool = False) -> Path | None:
    """Write a cache file and the sha256 record that :func:`cache_file_is_intact` checks, each atomically.

    A cache that cannot be written costs time later, not correctness now: on an OSError this warns and
    returns None, or with ``temporary_ok`` writes the file into a temporary folder removed when the
    process exits (for callers that need a file on disk) and returns that path.
    """
    path = Path(path)
    try:
        write_bytes_atomic(path, data)
        write_text_atomic(path.with_name(path.name + ".sha256"), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
        return path
    except OSError as e:
        reason = f"Could not write the cache file {path} ({e})"
    if not temporary_ok:
        log.warning("%s; set SYNTHAUG_CACHE to a writable folder to keep it.", reason)
        return None
    folder = Path(tempfile.mkdtemp(prefix="synthaug-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    log.warning("%s; using a temporary copy in %s for this process (set SYNTHAUG_CACHE to a writable folder to keep it).",
                reason, folder)
    _temporary_copies[path] = write_bytes_atomic(folder / path.name, data)
    return _temporary_copies[path]


_temporary_copies: dict[Path, Path] = {}


def usable_cache_file(path: Path) -> Path | None:
    """``path`` when it matches its recorded sha256, else the temporary copy :func:`write_cache_file` made
    of it in this process (where it could not write ``path``), else None."""
    if cache_file_is_intact(path):
        return Path(path)
    copy = _temporary_copies.get(Path(path))
    return copy if copy is not None and copy.is_file() else None


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
    try:
        if not meta_path.is_file():
            return None
    except OSError:  # e.g. an unreadable cache folder: decode again
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
    from PIL import Image

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
    # Pillow warns about images over its pixel limit; decode_image decides about those itself (and says why in
    # skipped.log), so the warning becomes an exception it catches. Filters are process-wide: set once, here.
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=workers) as pool:
        warnings.simplefilter("error", Image.DecompressionBombWarning)
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
        log.warning("Could not write the dataset cache %s (%s); the next load will decode again (set SYNTHAUG_CACHE "
                    "to a writable folder to keep it).", folder, e)
    return decoded
