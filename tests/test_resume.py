"""Killed and run again: train, generate, evaluate and benchmark stopped by SIGKILL at random moments, then the
same command, end as an uninterrupted run does. A different kill moment every session: set SYNTHAUG_KILL_SEED
(printed with a failure) to replay one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SAMPLING, TINY
from synthaug.shards import read_manifest, verify_shards
from synthaug.synthesis import GenerateRequest, generate_shards
from test_benchmark import TINY_BENCH, write_bars


def run_until_killed(cmd, cwd, ready, timeout=120):
    """Start ``cmd``, wait until ``ready()`` is true (or the process ends), then SIGKILL it."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + timeout
    while proc.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return killed


def run_to_end(cmd, cwd, timeout=300):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# A different random kill moment every session (print it to replay: SYNTHAUG_KILL_SEED=...).
KILL_SEED = int(os.environ.get("SYNTHAUG_KILL_SEED", random.SystemRandom().randrange(2**31)))


KILLS = 5  # SIGKILLs in a row before the same command runs to the end


# -- train ---------------------------------------------------------------------------------------------

TRAIN = [sys.executable, "-m", "synthaug", "-q", "train", *[a for item in TINY for a in ("--set", item)],
         "--set", "generator.duration_kimg=0.512", "--set", "generator.snapshot_every_kimg=0.096",
         "--set", "generator.log_every_kimg=0.032"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The same tiny training, never interrupted: 16 steps, a snapshot every 3."""
    cwd = tmp_path_factory.mktemp("straight")
    run_to_end(TRAIN + ["--set", "run_dir=run"], cwd)
    return cwd / "run"


def weights(run: Path, folder: str) -> dict:
    return load_file(run / folder / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.slow
def test_train_killed_five_times_resumes_to_the_same_weights(straight_run, tmp_path):
    rng = random.Random(KILL_SEED)
    log = tmp_path / "run" / "log.jsonl"
    logged = 0
    for attempt in range(KILLS):
        target = min(15, logged + rng.randint(1, 4))  # kill once this many steps are logged (sometimes mid-snapshot)
        extra = rng.uniform(0, 0.15)

        def ready():
            return log.exists() and len(log.read_text().splitlines()) >= target and (time.sleep(extra) or True)

        if not run_until_killed(TRAIN + ["--set", "run_dir=run"], tmp_path, ready):
            break  # it finished before this kill
        logged = len(log.read_text().splitlines()) if log.exists() else 0
    run_to_end(TRAIN + ["--set", "run_dir=run"], tmp_path)
    for folder in ("model", "ema"):
        a, b = weights(straight_run, folder), weights(tmp_path / "run", folder)
        assert all(torch.equal(a[k], b[k]) for k in a), f"{folder} differs (SYNTHAUG_KILL_SEED={KILL_SEED})"
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, 17))  # every step logged exactly once
    assert not list((tmp_path / "run").glob(".*.tmp")) and not list((tmp_path / "run").glob("*.old"))
    info, straight = (json.loads((p / "run.json").read_text()) for p in (tmp_path / "run", straight_run))
    assert (info["step"], info["kimg"], info["finished"]) == (straight["step"], straight["kimg"], True) == (16, straight["kimg"], True)


# -- generate ------------------------------------------------------------------------------------------

VARIANTS = {
    "plain": [],
    "from-real": ["--from-real", "--strength", "0.3,0.6"],
    "min-confidence": ["--min-confidence", "0.2", "--max-draws", "3"],
}


@pytest.fixture(scope="module")
def generate_cmd(digits_run):
    return [sys.executable, "-m", "synthaug", "-q", "generate", "--run", str(digits_run.path), "--class", "0", "--class", "7",
            "--num", "40", "--shard-size", "4", "--steps", "3", "--batch-size", "4"]


@pytest.fixture(scope="module")
def straight_shards(generate_cmd, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("straight-shards")
    for name, extra in VARIANTS.items():
        run_to_end(generate_cmd + extra + ["--out", name], cwd)
    return cwd


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_generate_killed_five_times_completes_every_sample_once(variant, generate_cmd, straight_shards, tmp_path):
    rng = random.Random(KILL_SEED + 100 + list(VARIANTS).index(variant))
    out = tmp_path / "s"
    cmd = generate_cmd + VARIANTS[variant] + ["--out", "s"]
    for attempt in range(KILLS):
        done = len(list(out.glob("synth-*.tar"))) if out.exists() else 0
        target = min(9, done + rng.randint(0, 2))

        def ready():
            return out.exists() and len(list(out.glob("synth-*.tar"))) + len(list(out.glob(".*.partial"))) > target

        if not run_until_killed(cmd, tmp_path, ready):
            break
    run_to_end(cmd, tmp_path)
    result = verify_shards(out)
    assert result["ok"], (result["problems"], f"SYNTHAUG_KILL_SEED={KILL_SEED}")
    expected = read_manifest(straight_shards / variant)
    assert read_manifest(out)["shards"] == expected["shards"]  # byte-identical shards: every key exactly once
    if variant != "min-confidence":
        assert result["samples"] == 40 and result["per_class"] == {"0": 20, "7": 20}
    else:
        assert read_manifest(out)["filter"]["per_class"] == expected["filter"]["per_class"]


# -- evaluate ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_killed_leaves_no_half_written_evaluation(digits_run, tmp_path, fid_weights):
    out = tmp_path / "s"
    generate_shards(digits_run.path, GenerateRequest(classes=("2", "5"), num=12), out, SAMPLING)
    cmd = [sys.executable, "-m", "synthaug", "-q", "evaluate", "--synthetic", str(out), "--set", "benchmark.steps=20",
           "--set", "benchmark.judge_steps=20", "--set", "benchmark.fid_max_images=8"]
    rng = random.Random(KILL_SEED + 200)
    for attempt in range(KILLS):
        delay = rng.uniform(0.5, 8.0)
        started = time.time()
        run_until_killed(cmd, tmp_path, lambda: time.time() - started > delay)
        evaluation = out / "evaluation.json"
        assert not evaluation.exists() or json.loads(evaluation.read_text())["synthetic_images"] == 12
        assert not list(out.glob(".*.tmp"))
    run_to_end(cmd, tmp_path)
    assert json.loads((out / "evaluation.json").read_text())["quality"]["n"] == 8


# -- benchmark -----------------------------------------------------------------------------------------

def benchmark_cmd(bars, out):
    sets = [*TINY, f"data.spec=imagefolder:{bars}", "data.resolution=8", "generator.batch_size=8",
            "generator.duration_kimg=0.016", *TINY_BENCH, "benchmark.workers=1", "run_dir=runs/bars"]
    return [sys.executable, "-m", "synthaug", "-q", "benchmark", *[a for item in sets for a in ("--set", item)], "--out", out]


def numbers(report: dict) -> list:
    return [(s["generator"]["weights_sha256"], s["arms"], s["validation"], s["choices"],
             {k: v["quality"] for k, v in s["synthetic_sets"].items()}) for s in report["settings"]]


@pytest.mark.slow
def test_benchmark_killed_five_times_resumes_to_the_uninterrupted_report(tmp_path, fid_weights):
    bars = write_bars(tmp_path / "bars")
    straight = tmp_path / "straight"
    straight.mkdir()
    run_to_end(benchmark_cmd(bars, "report"), straight, timeout=600)
    expected = json.loads((straight / "report" / "report.json").read_text())
    work = tmp_path / "killed"
    work.mkdir()
    rng = random.Random(KILL_SEED + 300)
    stages = work / "report" / "stages"
    kept = 0
    for attempt in range(5):
        target = kept + rng.randint(1, 25)  # kill once this many stage files exist (mid-generation, mid-classifiers, ...)

        def ready():
            return stages.exists() and sum(1 for p in stages.rglob("*") if p.is_file()) >= target

        killed = run_until_killed(benchmark_cmd(bars, "report"), work, ready, timeout=600)
        now = sum(1 for p in stages.rglob("*.json")) if stages.exists() else 0
        assert now >= kept, f"finished stages were lost (SYNTHAUG_KILL_SEED={KILL_SEED})"
        kept = now
        if not killed:
            break
    run_to_end(benchmark_cmd(bars, "report"), work, timeout=600)
    got = json.loads((work / "report" / "report.json").read_text())
    assert numbers(got) == numbers(expected), f"SYNTHAUG_KILL_SEED={KILL_SEED}"
