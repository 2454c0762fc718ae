"""Shard writing: webdataset's own TarWriter writes each shard, hashed on the way to disk, so a shard is
byte for byte what webdataset writes and its description needs no second read."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import webdataset as wds

from synthaug.files import sha256_file
from synthaug.shards import FIXED_MTIME, describe_shard, encode_png, encode_sample, partial_name, read_shard, write_shard


def samples(n: int, size: int = 4) -> list[dict]:
    rng = np.random.default_rng(n)
    return [encode_sample(f"c{i % 3}-{i:06d}", encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), i % 3,
                          {"class_name": f"class {i % 3}", "index": i}) for i in range(n)]


def webdataset_bytes(path, written: list[dict]) -> bytes:
    with wds.TarWriter(str(path), encoder=False, mtime=FIXED_MTIME) as writer:
        for sample in written:
            writer.write(sample)
    return path.read_bytes()


# 0 samples: only the tar's end blocks; 300 samples of 64 px: several MiB, more than the 1 MiB write buffer
@pytest.mark.parametrize("n, size", [(0, 4), (1, 4), (7, 4), (300, 64)])
def test_a_shard_is_byte_identical_to_what_webdataset_writes(tmp_path, n, size):
    written = samples(n, size)
    info = write_shard(tmp_path, 3, written)
    shard = tmp_path / "synth-000003.tar"
    assert shard.read_bytes() == webdataset_bytes(tmp_path / "reference.tar", written)
    assert info["bytes"] == shard.stat().st_size and info["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert info == describe_shard(shard)
    assert [s["__key__"] for s in read_shard(shard)] == [s["__key__"] for s in written]
    assert not (tmp_path / partial_name(3)).exists()


def test_a_sample_that_is_not_bytes_leaves_no_shard(tmp_path):
    bad = samples(2)
    bad[1] = {**bad[1], "cls": 1}  # an int, not encoded bytes
    with pytest.raises(ValueError, match="bytes"):
        write_shard(tmp_path, 0, bad)
    assert not list(tmp_path.iterdir())  # neither the shard nor its partial file


def test_writing_a_shard_again_gives_the_same_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_shard(tmp_path / "a", 0, samples(5))
    again = write_shard(tmp_path / "b", 0, samples(5), [f"class {i % 3}" for i in range(5)])
    assert first == again and sha256_file(tmp_path / "a" / "synth-000000.tar") == first["sha256"]
