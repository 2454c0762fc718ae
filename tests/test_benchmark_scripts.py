"""The performance benchmarks in benchmarks/ compare like with like (no timings are asserted here)."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def members(path: Path) -> list[tuple[str, bytes, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read(), m.mtime) for m in tar if m.isfile()]


def test_shard_benchmark_writes_the_same_members_on_both_sides(tmp_path):
    import bench_shards

    rng = np.random.default_rng(0)
    samples = bench_shards.encoded_samples(rng.integers(0, 255, (12, 8, 8, 1), dtype=np.uint8), np.arange(12) % 3,
                                           ["a", "b", "c"])
    shards = [samples[:5], samples[5:10], samples[10:]]
    (tmp_path / "ours").mkdir()
    (tmp_path / "ref").mkdir()
    bench_shards.synthaug_write(tmp_path / "ours", shards, [[json.loads(s["json"])["class_name"] for s in shard] for shard in shards])
    bench_shards.tarfile_write(tmp_path / "ref", shards)
    for k in range(3):
        name = f"synth-{k:06d}.tar"
        assert members(tmp_path / "ours" / name) == members(tmp_path / "ref" / name)
    assert (tmp_path / "ours" / "manifest.json").is_file()


@pytest.mark.slow
def test_training_benchmark_runs_both_loops_on_the_same_files(tmp_path, monkeypatch):
    import bench_train

    monkeypatch.setenv("SYNTHAUG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(bench_train.CONFIGS, "digits8", ("digits", 8, 32, 0.1, 0.1))
    row = bench_train.measure("digits8", 0.1, 1, "cpu", tmp_path, ["generator.base_channels=8"])
    assert row["train_images"] == len(list((tmp_path / "digits8-files").glob("*.png"))) > 1000
    assert row["synthaug"]["images_per_s"] > 0 and row["reference"]["images_per_s"] > 0
    assert row["reference"]["measured_images"] == (row["steps"] - 1) * 32
