"""Safe file writes: failed writes name their file; memory-mapped files take their disk space up front; atomic
folders keep the umask; the lock a training holds."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading

import pytest
import torch
from safetensors.torch import save_file

from synthaug import files
from synthaug.files import exclusive_lock, folder_atomic


def test_writer_errors_become_the_os_error_they_stand_for(tmp_path, monkeypatch):
    import safetensors

    target = tmp_path / "model"
    e = files.as_os_error(safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
                          target)
    assert (e.errno, e.filename) == (errno.ENOSPC, str(target))
    e = files.as_os_error(OSError(errno.EIO, "Input/output error"), target)  # a failed write(): no file name
    assert (e.errno, e.filename) == (errno.EIO, str(target))
    named = OSError(errno.EACCES, "Permission denied", "/elsewhere")
    assert files.as_os_error(named, target) is named
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: files.shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    e = files.as_os_error(RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 512 vs 448"), target)
    assert e.errno == errno.ENOSPC  # torch.save on a full disk
    assert files.as_os_error(RuntimeError("CUDA out of memory"), target) is None  # not a write failure
    assert files.as_os_error(ValueError("bad"), target) is None
    with pytest.raises(OSError) as raised, files.writing(target):
        raise safetensors.SafetensorError("I/O error: Disk quota exceeded (os error 122)")
    assert raised.value.errno == errno.EDQUOT and raised.value.filename == str(target)


def test_a_memory_mapped_file_that_does_not_fit_is_an_error_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "big.npy.partial"
    with open(path, "wb") as f:
        f.truncate(1 << 20)  # sparse, as np.lib.format.open_memmap makes it

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "posix_fallocate", full)
    with pytest.raises(OSError) as e:
        files.reserve_space(path)
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(path))
    monkeypatch.setattr(files.os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "no")))
    files.reserve_space(path)  # a file system that cannot allocate ahead: nothing to do
    assert os.path.getsize(path) == 1 << 20


def test_folder_atomic_respects_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        with folder_atomic(tmp_path / "ema") as tmp:
            (tmp / "unet").mkdir()
            save_file({"w": torch.zeros(2)}, tmp / "unet" / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ema").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "ema" / "unet" / "w.safetensors").stat().st_mode) == 0o600


def test_testing_the_lock_does_not_make_a_training_refuse(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text("")
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a generate testing whether training runs, caught in the act

    def done():
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    threading.Timer(0.05, done).start()
    with exclusive_lock(lock, "the run folder"):
        pass
