"""`accelerate launch` with two CPU processes: the same training trajectory and the same shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "synthaug"]


def launch(args, cwd, processes: bool):
    cmd = (LAUNCH if processes else [sys.executable, "-m", "synthaug"]) + args
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_two_processes_train_and_generate_like_one(tmp_path):
    sets = [a for item in TINY for a in ("--set", item)] + ["--set", "generator.batch_per_device=8"]
    launch(["train", *sets, "--set", "run_dir=runs/two"], tmp_path, processes=True)
    launch(["train", *sets, "--set", "run_dir=runs/one"], tmp_path, processes=False)

    def losses(name):
        return [json.loads(line)["loss"] for line in (tmp_path / "runs" / name / "log.jsonl").read_text().splitlines()]

    runs = {name: json.loads((tmp_path / "runs" / name / "run.json").read_text()) for name in ("one", "two")}
    assert (runs["two"]["processes"], runs["one"]["processes"]) == (2, 1)  # two processes really trained
    assert losses("two") == pytest.approx(losses("one"), rel=1e-4)
    request = ["--class", "3", "--class", "8", "--num", "7", "--shard-size", "2", "--run", "runs/one"]
    launch(["generate", *request, "--out", "two"], tmp_path, processes=True)
    launch(["generate", *request, "--out", "one"], tmp_path, processes=False)
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert two["num_samples"] == 7 and len(two["shards"]) == 4
    assert two["shards"] == one["shards"]  # byte-identical shards, whichever process wrote them


@pytest.mark.slow
def test_two_processes_benchmark_like_one(tmp_path, fid_weights):
    """`accelerate launch --num_processes 2 -m synthaug benchmark`: the processes share generation and split the
    classifier runs; one writes the report, which equals the single-process one. Both run single-threaded
    (OMP_NUM_THREADS=1), so that every number can be compared exactly; the generators are trained once, by the
    first run (several processes train a generator to float tolerance, not to the bit: see the test above)."""
    from test_benchmark import TINY_BENCH, write_bars

    bars = write_bars(tmp_path / "bars")
    sets = [a for item in [*TINY, f"data.spec=imagefolder:{bars}", "data.resolution=8", "generator.batch_size=8",
                           "generator.duration_kimg=0.016", *TINY_BENCH, "benchmark.workers=1", "run_dir=runs/bars"]
            for a in ("--set", item)]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}

    def run(cmd):
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads((tmp_path / cmd[-1] / "report.json").read_text())

    one = run([sys.executable, "-m", "synthaug", "benchmark", *sets, "--out", "one"])
    two = run([*LAUNCH, "benchmark", *sets, "--out", "two"])
    assert two["processes"] == 2 and one["processes"] == 1
    for a, b in zip(one["settings"], two["settings"]):
        assert a["arms"] == b["arms"] and a["validation"] == b["validation"] and a["choices"] == b["choices"]
        assert [s["quality"] for s in a["synthetic_sets"].values()] == [s["quality"] for s in b["synthetic_sets"].values()]
        assert a["summary"] == b["summary"]
    assert two["classifiers_trained_this_run"] < one["classifiers_trained_this_run"]  # the first process's share only
