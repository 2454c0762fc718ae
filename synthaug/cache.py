"""synthaug's cache: where every cache lives (:func:`cache_root`), and cache files written with a sha256 record beside
them and read only when they match it (the decode cache, Inception and probe features, converted weights).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from synthaug.files import sha256_file, write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)


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
    return Path(home) / ".cache" / "synthaug" if home else temporary_root()


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
        return Path(home, value[2:]) if home else temporary_root()
    return Path(value).expanduser()


@functools.cache
def temporary_root() -> Path:
    """Where caches go when no home folder is known: a folder of this user's in the temporary folder (chosen once per
    process; ``temporary_root.cache_clear()`` chooses again)."""
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
