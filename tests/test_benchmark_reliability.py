"""The benchmark under faults: killed at random moments, then run again, it keeps what it finished and ends
with the report an uninterrupted run gives; two benchmarks on one folder are refused."""

from __future__ import annotations

import json
import random
import sys

import pytest

from conftest import TINY
from synthaug.files import exclusive_lock
from test_benchmark import TINY_BENCH, bars_recipe, write_bars
from test_reliability import KILL_SEED, run_to_end, run_until_killed


def command(bars, out):
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
    run_to_end(command(bars, "report"), straight, timeout=600)
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

        killed = run_until_killed(command(bars, "report"), work, ready, timeout=600)
        now = sum(1 for p in stages.rglob("*.json")) if stages.exists() else 0
        assert now >= kept, f"finished stages were lost (SYNTHAUG_KILL_SEED={KILL_SEED})"
        kept = now
        if not killed:
            break
    run_to_end(command(bars, "report"), work, timeout=600)
    got = json.loads((work / "report" / "report.json").read_text())
    assert numbers(got) == numbers(expected), f"SYNTHAUG_KILL_SEED={KILL_SEED}"


def test_two_benchmarks_on_one_folder_are_refused(tmp_path):
    from synthaug import SynthaugError
    from synthaug.benchmark import run_benchmark

    bars = write_bars(tmp_path / "bars")
    out = tmp_path / "report"
    out.mkdir()
    with exclusive_lock(out / ".lock", "test"), pytest.raises(SynthaugError, match="Another synthaug process is writing the benchmark folder"):
        run_benchmark(bars_recipe(bars, tmp_path / "run"), out=out)
