"""`accelerate launch` with two CPU processes: the same training trajectory and the same shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
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

    assert losses("two") == pytest.approx(losses("one"), rel=1e-4)
    request = ["--class", "3", "--class", "8", "--num", "7", "--shard-size", "2", "--run", "runs/one"]
    launch(["generate", *request, "--out", "two"], tmp_path, processes=True)
    launch(["generate", *request, "--out", "one"], tmp_path, processes=False)
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    two = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert two["num_samples"] == 7 and len(two["shards"]) == 4
    assert two["shards"] == one["shards"]  # byte-identical shards, whichever process wrote them
