"""Datasets larger than memory: the decode cache memory-mapped and checked without reading it whole, and
splits and subsets as views of it (RowView) instead of copies."""

from __future__ import annotations

import json
import logging
import os
import pickle
import tracemalloc

import numpy as np
import pytest

from conftest import COLOURS, mean_colour, write_image
from synthaug import load_dataset
from synthaug.data import DataConfig, ImageSet
from synthaug.data import cache as data_cache
from synthaug.data.imagefolder import list_files
from synthaug.data.rows import RowView


@pytest.fixture
def hashes(monkeypatch):
    """Paths whose whole content the dataset cache hashed, in order."""
    seen = []
    original = data_cache.sha256_file

    def counting(path, *args, **kwargs):
        seen.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(data_cache, "sha256_file", counting)
    return seen


def age(path, seconds: int = 3600) -> None:
    """Give ``path`` an mtime ``seconds`` in the past (its ctime becomes now)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


# -- the cache, memory-mapped and checked cheaply ----------------------------------------------------

def test_the_cache_is_memory_mapped_and_splits_and_subsets_are_views_of_it(imagefolder_tree):
    ds = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    again = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    for d in (ds, again):  # the first load decodes straight into the cache file and maps it too
        assert isinstance(d.images, RowView) and isinstance(d.images.base, np.memmap) and d.images.base.mode == "r"
    base = again.images.base
    train = again.split("train")
    picked = train.subset(np.arange(len(train)) % 2 == 0)  # a subset of a subset
    for view in (train, picked, again.subset([1, 2, 3])):
        assert view.images.base is base  # the same map, no copy
    np.testing.assert_array_equal(picked.images.rows, np.flatnonzero(again.splits == "train")[::2])
    np.testing.assert_array_equal(np.asarray(picked.images), np.asarray(again.images)[picked.images.rows])
    assert picked.labels.tolist() == again.labels[picked.images.rows].tolist()
    assert picked.sources == [again.sources[i] for i in picked.images.rows]
    # consecutive rows read as a view of the map itself
    contiguous = again.subset([1, 2, 3])
    assert np.shares_memory(contiguous.images[0:2], base) and np.shares_memory(np.asarray(contiguous.images), base)
    assert np.shares_memory(again.images[4], base)
    assert not again.images[0:2].flags.writeable  # nobody scribbles on the shared cache


def test_a_verified_cache_loads_without_hashing_and_a_write_into_it_is_caught(imagefolder_tree, hashes, caplog):
    spec = f"imagefolder:{imagefolder_tree}"
    first = load_dataset(spec, resolution=8)
    expected = np.array(first.images)
    images = first.cache_path / "images.npy"
    assert len(hashes) == 1  # written, and hashed once for meta.json
    hashes.clear()
    assert load_dataset(spec, resolution=8).from_cache and hashes == []  # the next load trusts the record made then
    age(images)  # the file's stat no longer matches its record: the next load checks the whole file
    hashes.clear()
    assert load_dataset(spec, resolution=8).from_cache and hashes == [images]  # checked once, whole
    for _ in range(2):
        assert load_dataset(spec, resolution=8).from_cache
    assert hashes == [images]  # then trusted: size, mtime, ctime and inode as recorded

    # a changed pixel with the mtime put back (only the ctime tells): still checked, and rebuilt
    st = images.stat()
    with open(images, "r+b") as f:
        f.seek(st.st_size - 7)
        byte = f.read(1)
        f.seek(st.st_size - 7)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns))
    with caplog.at_level(logging.WARNING):
        rebuilt = load_dataset(spec, resolution=8)
    assert not rebuilt.from_cache and f"Dataset cache {first.cache_path} is damaged" in caplog.text
    np.testing.assert_array_equal(np.asarray(rebuilt.images), expected)


def test_a_record_made_in_the_same_tick_as_a_write_is_not_trusted(imagefolder_tree, caplog):
    # A write in the same timestamp tick as the check leaves size, mtime and ctime as recorded (coarse clocks,
    # 1-2 s filesystems). A record made within RACY_NS of the file's mtime must not be trusted.
    spec = f"imagefolder:{imagefolder_tree}"
    first = load_dataset(spec, resolution=8)
    images = first.cache_path / "images.npy"
    data = bytearray(images.read_bytes())
    data[len(data) // 2] ^= 0xFF
    images.write_bytes(bytes(data))
    record = json.loads((first.cache_path / "verified.json").read_text())
    st = images.stat()
    record["file"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}
    record["checked_ns"] = st.st_mtime_ns + data_cache.RACY_NS // 2
    (first.cache_path / "verified.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        again = load_dataset(spec, resolution=8)
    assert not again.from_cache and "is damaged" in caplog.text


def test_a_cache_without_a_verified_record_is_checked_once_and_recorded(imagefolder_tree, hashes):
    spec = f"imagefolder:{imagefolder_tree}"
    first = load_dataset(spec, resolution=8)
    (first.cache_path / "verified.json").unlink()  # a cache written by an older synthaug
    age(first.cache_path / "images.npy")
    hashes.clear()
    assert load_dataset(spec, resolution=8).from_cache and len(hashes) == 1
    assert (first.cache_path / "verified.json").is_file()
    assert load_dataset(spec, resolution=8).from_cache and len(hashes) == 1


def test_skipped_files_leave_the_other_rows_in_place(tmp_path):
    # decoding writes every row at its catalog position, then copies the readable ones together
    for k, c in enumerate([0, 1, 0, 1, 0]):
        write_image(tmp_path / "set" / f"c{c}" / f"{k}.png", COLOURS[c])
    (tmp_path / "set" / "c0" / "1bad.png").write_bytes(b"not a png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'set'}", resolution=8)
    assert len(ds) == 5 and [s for s, _ in ds.skipped] == ["c0/1bad.png"]
    for i, label in enumerate(ds.labels):
        assert np.allclose(mean_colour(ds.images[i]), COLOURS[label], atol=3), ds.sources[i]


def test_imagefolder_lists_files_in_the_order_rglob_gave(tmp_path):
    # the listing (os.scandir, no stat per file) must keep the old order: it decides the rows, the cache key and
    # which images a seeded split puts in test
    for rel in ["a-b.png", "a/b.png", "a/z/q.png", "A.png", ".hidden.png", ".hd/x.png", "b c.png", "é.png", "a.b/c.png"]:
        (tmp_path / "c" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "c" / rel).write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "o.png").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", tmp_path / "c" / "linked-folder")
    os.symlink(tmp_path / "elsewhere" / "o.png", tmp_path / "c" / "linked.png")
    os.symlink(tmp_path / "nothing", tmp_path / "c" / "broken.png")
    folder = tmp_path / "c"
    before = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    assert list_files(folder) == [p.relative_to(folder).as_posix() for p in before]
    assert list_files(folder) == ["A.png", "a/b.png", "a/z/q.png", "a-b.png", "a.b/c.png", "b c.png", "linked.png", "é.png"]


# -- views instead of copies -------------------------------------------------------------------------

def made_up_set(n: int = 3000, side: int = 32) -> ImageSet:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10
    return ImageSet(name="made-up", config=DataConfig(), images=rng.integers(0, 255, (n, side, side, 3), dtype=np.uint8),
                    labels=labels, splits=np.where(np.arange(n) % 5 == 0, "test", "train"),
                    sources=[f"{i}.png" for i in range(n)], class_names=[str(c) for c in range(10)], class_ids=list(range(10)))


def test_peak_memory_does_not_grow_with_subsets():
    ds = made_up_set()  # 9 MB of pixels
    tracemalloc.start()
    try:
        views = []
        for seed in range(10):
            train = ds.split("train")
            views.append(train.subset(np.random.default_rng(seed).random(len(train)) < 0.5).split("train"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ten copies of half the training images would be 36 MB; the views hold row indices, labels and names
    assert peak < ds.images.nbytes / 4, peak
    assert all(v.images.base is ds.images.base for v in views)


def test_a_row_view_reads_like_the_array_it_stands_for():
    ds = made_up_set(40, 4)
    whole = np.asarray(ds.images)
    rows = np.array([3, 9, 4, 5, 6, 30, 2])
    view, expected = ds.images.select(rows), whole[rows]
    assert len(view) == 7 and view.shape == expected.shape and view.dtype == np.uint8 and view.ndim == 4
    keys = [0, -1, np.int64(2), slice(1, 5), slice(None, None, -2), slice(2, 5), [5, 0], np.array([True, False] * 3 + [True]),
            np.array([], dtype=np.int64), (slice(None), 0, 1), (2, Ellipsis, 0), (Ellipsis, 1)]
    for key in keys:
        got = view[key]
        assert isinstance(got, np.ndarray) and type(got) is np.ndarray
        np.testing.assert_array_equal(got, expected[key], err_msg=repr(key))
    np.testing.assert_array_equal(np.stack(list(view)), expected)
    np.testing.assert_array_equal(np.concatenate(list(view.iter_chunks(3))), expected)
    np.testing.assert_array_equal(view.gather([6, 0]), expected[[6, 0]])
    assert view.mean() == expected.mean() and view.reshape(7, -1).shape == (7, 48)  # other ndarray methods
    np.testing.assert_array_equal(np.asarray(view.select([1, 2]).select([1])), whole[[4]])  # rows 9, 4 -> 4
    with pytest.raises(IndexError):
        view[7]
    with pytest.raises(IndexError):
        view[[0, 7]]
    with pytest.raises(IndexError):
        view[np.array([True, False])]
    with pytest.raises(ValueError):
        np.asarray(view, copy=False)  # not consecutive: a copy is the only way


def test_a_memory_mapped_view_pickles_as_its_file_and_survives_release(imagefolder_tree):
    ds = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8).split("train")
    expected = np.array(ds.images)
    blob = pickle.dumps(ds.images)
    assert len(blob) < expected.nbytes  # the file name and rows travel, not the pixels
    back = pickle.loads(blob)
    assert isinstance(back.base, np.memmap) and back.base.filename == ds.images.base.filename
    np.testing.assert_array_equal(np.asarray(back), expected)
    ds.images.release()  # drops resident pages: the data are read back from the file on the next access
    np.testing.assert_array_equal(np.asarray(ds.images), expected)
    ds.images.release(ds.images.rows[1:3])  # only the pages holding some rows
    np.testing.assert_array_equal(np.concatenate(list(ds.images.iter_chunks(2))), expected)  # released as it goes


def test_an_image_set_given_an_array_wraps_it():
    ds = made_up_set(6, 2)
    assert isinstance(ds.images, RowView) and ds.resolution == 2 and ds.channels == 3
