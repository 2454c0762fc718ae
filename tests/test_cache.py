"""Caches: where they live ($SYNTHAUG_CACHE, the home folder, a private temporary folder when there is no home
folder), and a cache that cannot be written costing time, not results."""

from __future__ import annotations

import logging
import os
import tempfile
import types

import numpy as np
import pytest
import torch

from synthaug import cache as project_cache
from synthaug.data import load_dataset
from synthaug.cache import cache_root, write_cache_file
from synthaug.quality import features
from synthaug.weights import fid_inception as fi


def test_an_unwritable_cache_costs_time_not_results(imagefolder_tree, unwritable_cache, fake_inception, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
        assert len(ds) == 10 and ds.cache_path is None and "Could not write the dataset cache" in caplog.text
        images = np.zeros((3, 8, 8, 3), np.uint8)
        assert features(images, None, torch.device("cpu"), cache=True).shape == (3, fi.FEATURE_DIM)
        assert "Could not write the cache file" in caplog.text and "SYNTHAUG_CACHE" in caplog.text
        copy = write_cache_file(cache_root() / "weights" / "w.pth", b"weights", temporary_ok=True)
    assert copy.read_bytes() == b"weights" and tempfile.gettempdir() in str(copy)


# -- no home folder ------------------------------------------------------------------------------------

@pytest.fixture
def no_home(monkeypatch, tmp_path):
    """No $HOME and no passwd entry (as for a container's random uid); the system temp folder is tmp_path."""
    import pwd

    for name in ("SYNTHAUG_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    project_cache.temporary_root.cache_clear()
    yield tmp_path / "tmp" / f"synthaug-cache-{os.getuid()}"
    project_cache.temporary_root.cache_clear()


def test_without_a_home_folder_caches_go_to_a_private_temporary_folder(no_home, imagefolder_tree, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        assert cache_root() == no_home
    assert "No home folder is known" in caplog.text and no_home.stat().st_mode & 0o077 == 0
    monkeypatch.setenv("SYNTHAUG_CACHE", "~/caches")
    assert cache_root() == no_home
    monkeypatch.setenv("HOME", "")
    monkeypatch.delenv("SYNTHAUG_CACHE")
    assert cache_root() == no_home
    ds = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    assert ds.cache_path.is_relative_to(no_home)


def test_without_home_the_passwd_home_folder_is_used(monkeypatch, tmp_path):
    import pwd

    for name in ("SYNTHAUG_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: types.SimpleNamespace(pw_dir=str(tmp_path / "home")))
    assert cache_root() == tmp_path / "home" / ".cache" / "synthaug"
    monkeypatch.setenv("SYNTHAUG_CACHE", "~/elsewhere")
    assert cache_root() == tmp_path / "home" / "elsewhere"
