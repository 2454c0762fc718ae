"""The benchmark under faults: killed at random moments, then run again, it keeps what it finished and ends
with the report an uninterrupted run gives; two benchmarks on one folder are refused."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

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


def cli_benchmark(bars, run_dir, out, *extra):
    from typer.testing import CliRunner

    from synthaug.cli import app

    sets = [*TINY, f"data.spec=imagefolder:{bars}", "data.resolution=8", "generator.batch_size=8",
            "generator.duration_kimg=0.016", *TINY_BENCH, "benchmark.workers=1", f"run_dir={run_dir}", *extra]
    result = CliRunner().invoke(app, ["benchmark", *[a for item in sets for a in ("--set", item)], "--out", str(out), "--fresh"],
                                env={"COLUMNS": "200"})
    assert "Traceback" not in result.output, result.output
    return result


def error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and lines[-1].startswith("Error: "), result.output
    return lines[-1]


def finished_stages(out: Path) -> dict:
    """A benchmark folder's stages as a finished benchmark leaves them (a judge, a quality and a classifier stage);
    returns every file with its bytes."""
    from synthaug.benchmark.store import StageStore

    store = StageStore(out)
    store.save("classifiers", "a" * 24, {"arm": {"name": "real"}, "seed": 0, "split": "test", "score": {"top1": 0.5}})
    store.save("quality", "b" * 24, {"fid": 30.0})
    judge = store.folder("judge", "c" * 24)
    judge.mkdir(parents=True)
    (judge / "info.json").write_text("{}")
    return files_of(out)


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("bad, message", [
    ("data.spec=imagefolder:{tmp}/typo", "typo does not exist"),
    ("data.resolution=7", "Resolution 7 cannot be halved"),  # found only when the generator is built
])
def test_fresh_checks_the_recipe_and_data_before_deleting_any_stage(tmp_path, bad, message):
    bars = write_bars(tmp_path / "bars")
    out = tmp_path / "report"
    before = finished_stages(out)
    line = error_line(cli_benchmark(bars, tmp_path / "run", out, bad.format(tmp=tmp_path)))
    assert message in line, line
    assert files_of(out) == before  # every stage still there


@pytest.mark.parametrize("fresh", [True, False])
def test_a_stages_folder_synthaug_did_not_write_is_neither_deleted_nor_written_into(tmp_path, fresh):
    from synthaug import SynthaugError
    from synthaug.benchmark import run_benchmark

    bars = write_bars(tmp_path / "bars")
    out = tmp_path / "userproj"
    (out / "stages").mkdir(parents=True)
    (out / "stages" / "notes.txt").write_text("x")
    with pytest.raises(SynthaugError, match=r"userproj/stages holds files synthaug did not write \(notes.txt\).*choose another --out"):
        run_benchmark(bars_recipe(bars, tmp_path / "run"), out=out, fresh=fresh)
    assert (out / "stages" / "notes.txt").read_text() == "x" and sorted(p.name for p in (out / "stages").iterdir()) == ["notes.txt"]


def test_two_benchmarks_on_one_folder_are_refused(tmp_path):
    from synthaug import SynthaugError
    from synthaug.benchmark import run_benchmark

    bars = write_bars(tmp_path / "bars")
    out = tmp_path / "report"
    out.mkdir()
    with exclusive_lock(out / ".lock", "test"), pytest.raises(SynthaugError, match="Another synthaug process is writing the benchmark folder"):
        run_benchmark(bars_recipe(bars, tmp_path / "run"), out=out)


WORKERS_THEN_DIE = """
import os, signal, sys, time
from synthaug.benchmark.workers import WorkerPool
pool = WorkerPool(2)
futures = [pool.submit(time.sleep, 60) for _ in range(2)]
time.sleep(1.0)  # both workers have taken a run
print(" ".join(str(p) for p in pool.pids()), flush=True)
os.kill(os.getpid(), signal.SIG)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has died and waits to be reaped
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_classifier_workers_die_with_a_killed_benchmark(signal_name):
    """A benchmark stopped by SIGKILL (or SIGTERM outside the CLI) used to leave its workers training on."""
    import subprocess
    import time

    proc = subprocess.run([sys.executable, "-c", WORKERS_THEN_DIE.replace("signal.SIG)", f"signal.{signal_name})")],
                          capture_output=True, text=True, timeout=60)
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2, proc.stderr
    deadline = time.time() + 10
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_an_aborted_pool_stops_its_running_workers_at_once():
    import time

    from synthaug.benchmark.workers import WorkerPool

    pool = WorkerPool(2)
    futures = [pool.submit(time.sleep, 60) for _ in range(3)]
    time.sleep(1.0)
    pids = pool.pids()
    assert len(pids) == 2
    started = time.time()
    pool.stop(abort=True)
    while any(alive(p) for p in pids) and time.time() - started < 10:  # the pool's own thread may reap them
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)
    assert all(f.done() for f in futures)  # cancelled, or failed with the broken pool: none runs on
