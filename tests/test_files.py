"""Safe file writes: failed writes name their file; memory-mapped files take their disk space up front."""

from __future__ import annotations

import errno
import os

import pytest

from synthaug import files


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
