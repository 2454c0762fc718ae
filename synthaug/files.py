"""Safe file writes: a file or folder appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it to read it would
    briefly give files created by other threads meanwhile no mask at all)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _nearest_existing(path: Path) -> Path:
    return next((p for p in (path, *path.parents) if p.exists()), Path("/"))


def as_os_error(error: BaseException, path: Path) -> OSError | None:
    """``error``, raised while writing ``path``, as the OSError it stands for, naming ``path``; None when it is not a
    failed write. An OSError without a file name (a failed ``write()``) gets ``path``; the writers that do not raise
    OSError (safetensors' SafetensorError 'I/O error: ... (os error 28)', torch.save's RuntimeError 'file write
    failed') get the errno in their message, else ENOSPC when the disk is full, else EIO."""
    if isinstance(error, OSError):
        if error.filename:
            return error
        return OSError(error.errno, error.strerror or str(error), str(path))
    text = str(error)
    if not (type(error).__name__ == "SafetensorError" or isinstance(error, RuntimeError)):
        return None
    code = re.search(r"os error (\d+)", text)
    if code:
        number = int(code.group(1))
    elif re.search(r"write failed|failed writing|I/O error|unexpected pos", text, re.IGNORECASE):
        try:
            full = shutil.disk_usage(_nearest_existing(Path(path))).free < 1 << 20
        except OSError:
            full = False
        number = errno.ENOSPC if full else errno.EIO
    else:
        return None
    return OSError(number, os.strerror(number), str(path))


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Inside the block, a failed write is an OSError naming ``path`` (see :func:`as_os_error`), so that the command
    line says which file could not be written and why (a full disk), instead of a writer's own exception."""
    try:
        yield
    except Exception as e:
        converted = as_os_error(e, path)
        if converted is None or converted is e:
            raise
        raise converted from e


def reserve_space(path: Path) -> None:
    """Allocate a (sparse) file's whole size on disk now, so that a full disk is an OSError naming it here rather
    than a SIGBUS killing the process when a memory-mapped write reaches the missing block (where the file system
    cannot allocate ahead, this does nothing)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with writing(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def folder_atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``path`` (the old one is removed).

    The swap is two renames (old aside, new in), so at every moment ``path`` is either the old
    complete folder, the new complete folder, or briefly absent with the old one at ``path.old``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    mask = _umask()
    try:
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; give the usual permissions, as mkdir would
        with writing(path):  # a writer that fails inside (torch.save, safetensors, a full disk) names the folder
            yield tmp
            for f in tmp.rglob("*"):
                if f.is_file():
                    # the usual file permissions too: safetensors writes its files 0600, whatever the umask
                    os.chmod(f, 0o666 & ~mask)
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
        fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files and folders (``.*.tmp``) a killed writer left in ``folder``.

    Call it only while holding the folder's lock, so no live writer's temporaries are removed.
    """
    for stale in Path(folder).glob(".*.tmp"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def recover_folder(path: Path) -> None:
    """Finish an interrupted :func:`folder_atomic` swap: if only ``path.old`` exists, restore it."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if old.exists() and not path.exists():
        os.rename(old, path)
    elif old.exists():
        shutil.rmtree(old, ignore_errors=True)


# How long taking a lock waits for a process that only tests it (lock_held holds it for microseconds).
LOCK_TEST_WAIT_S = 0.25


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file) or fail at once if another process holds it.

    The kernel drops the lock when its process dies, even by SIGKILL, so no stale lock remains.
    """
    import time

    from synthaug.errors import SynthaugError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        deadline = time.monotonic() + LOCK_TEST_WAIT_S
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:  # perhaps a process testing the lock: it lets go at once
                    time.sleep(0.01)
                    continue
                raise SynthaugError(
                    f"Another synthaug process is writing {what} (it holds {path}); wait for it to finish or use another folder."
                ) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def lock_held(path: Path) -> bool:
    """Whether a process holds :func:`exclusive_lock` on ``path`` now: tested without waiting, and without creating
    the lock file (taking its shared lock for an instant, which ``exclusive_lock`` waits out)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


CHECKSUMS = "checksums.json"


def write_checksums(folder: Path) -> dict[str, str]:
    """Record the sha256 of every file under ``folder`` in ``folder/checksums.json``."""
    import json

    folder = Path(folder)
    sums = {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS}
    (folder / CHECKSUMS).write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n")
    return sums


def verify_checksums(folder: Path) -> dict[str, str]:
    """Check every file ``checksums.json`` lists; a missing, truncated or modified file is an error naming it."""
    import json

    from synthaug.errors import SynthaugError

    folder = Path(folder)
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, ValueError):
        raise SynthaugError(f"{folder / CHECKSUMS} is missing or unreadable, so the weights in {folder} cannot be "
                            "trusted; run synthaug train again for this run to rewrite them from its training state.") from None
    for name, digest in sums.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            raise SynthaugError(f"{path} is damaged or missing (its sha256 does not match {CHECKSUMS}); "
                                "restore it, or run synthaug train again to rewrite it.")
    return sums


# -- paths a stage reads from or writes into, checked before any work ---------------------------------

def blocking_file(path: Path) -> Path | None:
    """The file that stands where ``path`` or one of the folders above it should be, if any."""
    return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)


def check_output_path(path: Path, argument: str, folder: bool = True) -> None:
    """Refuse, before any work, an output folder (or file) that cannot be made: a file where the folder
    or one above it should be, a folder where the file should be, or a parent that cannot be written.

    Args:
        path: the folder to write into (with ``folder=False``: the file to write).
        argument: the library argument (or recipe key) ``path`` came from; the sentence names it.
        folder: whether ``path`` is a folder.
    """
    from synthaug.errors import SynthaugError

    path = Path(path)
    name = f"{{{argument}}}"  # written as the caller spells the argument (SynthaugError.sentence)
    if path.exists() and path.is_dir() != folder:
        raise SynthaugError(f"{name} {path} is a file, not a folder; choose a folder (it may not exist yet)." if folder
                            else f"{name} {path} is a folder; give the path of the file to write.", arguments=(argument,))
    folder_path = path if folder else path.parent  # files are written atomically: their folder must be writable
    blocker = blocking_file(folder_path)
    if blocker is not None:
        raise SynthaugError(f"Could not write or read {path}: {blocker} is a file, not a folder; choose another {name} path.",
                            arguments=(argument,))
    nearest = next(p for p in (folder_path, *folder_path.parents) if p.exists())
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise SynthaugError(f"Could not write or read {path}: the folder {nearest} is read-only; choose a writable {name} path.",
                            arguments=(argument,))


def check_input_folder(path: Path, kind: str, remedy: str) -> None:
    """Refuse a missing path, or a file where a folder (``kind``) is expected; ``remedy`` says what to give instead."""
    from synthaug.errors import SynthaugError

    path = Path(path)
    if not path.exists():
        raise SynthaugError(f"{path} does not exist; {remedy}.")
    if not path.is_dir():
        raise SynthaugError(f"{path} is a file, not a {kind}; {remedy}.")
