"""Reliability: SIGKILL at a random moment then the same command again, planted faults that
`synthaug verify` must catch, damaged files, diverging losses, full disks, concurrent runs, fuzzing."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import TINY, tiny_recipe
from synthaug import SynthaugError
from synthaug.cli import app
from synthaug.files import exclusive_lock
from synthaug.generator import train as train_module
from synthaug.synthesis import GenerateRequest, generate_shards
from synthaug.generator.train import train_generator
from synthaug.recipe import SamplingConfig
from synthaug.shards import encode_sample, read_manifest, read_shard, verify_shards, write_shard

runner = CliRunner()
SAMPLING = SamplingConfig(steps=2, network_batch=8, batch_size=8, images_per_shard=4)


def cli(*args, env=None):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})
    assert "Traceback" not in result.output, result.output
    return result


def error_line(result) -> str:
    """The one error sentence: the last line of the output, and the only one that starts with Error:."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and lines[-1].startswith("Error: "), result.output
    assert sum(line.startswith("Error: ") for line in lines) == 1, result.output
    return lines[-1]


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


KILLS = 5  # SIGKILLs in a row before the same command runs to the end


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


@pytest.fixture
def shard_set(digits_run, tmp_path):
    out = tmp_path / "s"
    generate_shards(digits_run.path, GenerateRequest(classes=("2", "5"), num=12), out, SAMPLING)
    assert cli("verify", out).exit_code == 0
    return out


def rewrite(path: Path, change) -> None:
    """Rewrite one shard with ``change(samples)`` applied (keeping a valid tar)."""
    samples = change(read_shard(path))
    path.unlink()
    k = int(path.stem.split("-")[1])
    write_shard(path.parent, k, [encode_sample(s["__key__"], s["png"], int(s["cls"]), json.loads(s["json"])) for s in samples])


PLANTED = {
    "missing shard": (lambda out: (out / "synth-000001.tar").unlink(), "synth-000001.tar is missing"),
    "extra shard": (lambda out: shutil.copy(out / "synth-000000.tar", out / "synth-000009.tar"), "not in the manifest"),
    "partial shard": (lambda out: (out / ".synth-000002.tar.partial").write_bytes(b"half"), "partial shard"),
    "truncated shard": (lambda out: (out / "synth-000002.tar").write_bytes((out / "synth-000002.tar").read_bytes()[:1500]),
                        "synth-000002.tar"),
    "modified byte": (lambda out: flip_byte(out / "synth-000000.tar", 700), "does not match the sha256"),
    "duplicate sample": (lambda out: rewrite(out / "synth-000001.tar", lambda s: s[:3] + [s[0]]), "appears twice"),
    "unreadable png": (lambda out: rewrite(out / "synth-000001.tar", lambda s: [{**s[0], "png": b"\x89PNG garbage"}] + s[1:]),
                       "PNG that cannot be decoded"),
    "dropped sample": (lambda out: rewrite(out / "synth-000001.tar", lambda s: s[:3]), "planned samples are missing"),
}


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("fault", list(PLANTED))
def test_verify_catches_each_planted_fault_and_generate_repairs_it(fault, shard_set, digits_run):
    plant, message = PLANTED[fault]
    plant(shard_set)
    result = cli("verify", shard_set)
    error_line(result)
    assert message in result.output, result.output
    generate_shards(digits_run.path, GenerateRequest(classes=("2", "5"), num=12), shard_set, SAMPLING)
    assert verify_shards(shard_set)["ok"], verify_shards(shard_set)["problems"]


def test_verify_without_a_manifest_is_one_sentence(tmp_path):
    result = cli("verify", tmp_path)
    assert result.exit_code == 1 and "manifest.json is missing" in result.output


def test_damaged_weights_are_detected_before_use(digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run.path, run)
    weights_file = run / "ema" / "unet" / "diffusion_pytorch_model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:-100])
    result = cli("generate", "--run", run, "--class", "3", "--num", "2", "--out", tmp_path / "o")
    assert "diffusion_pytorch_model.safetensors is damaged" in error_line(result)


def test_diverging_loss_stops_with_the_step_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_call = train_module.DiffusionLoss.__call__

    def nan_from_step_3(self, *args):
        calls["n"] += 1
        loss = real_call(self, *args)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(train_module.DiffusionLoss, "__call__", nan_from_step_3)
    recipe = tiny_recipe(tmp_path / "run", "generator.snapshot_every_kimg=0.032", "generator.log_every_kimg=0.064")
    with pytest.raises(SynthaugError, match=r"loss became nan between step 2 and step 3; the last good state \(step 2"):
        train_generator(recipe)
    state = json.loads((tmp_path / "run" / "state" / "state.json").read_text())
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run", "model").values())


def test_a_full_disk_during_generate_keeps_what_was_written_and_the_next_run_completes(digits_run, tmp_path, monkeypatch):
    import synthaug.synthesis as generate_module

    real_write = generate_module.write_shard
    written = []

    def full_after_two(folder, k, samples, *names):
        if len(written) == 2:
            partial = Path(folder) / f".synth-{k:06d}.tar.partial"
            partial.write_bytes(b"x" * 10)  # what a writer leaves when the disk fills mid-shard
            raise OSError(errno.ENOSPC, "No space left on device", str(partial))
        written.append(k)
        return real_write(folder, k, samples, *names)

    monkeypatch.setattr(generate_module, "write_shard", full_after_two)
    out = tmp_path / "s"
    result = cli("generate", "--run", digits_run.path, "--class", "4", "--num", "16", "--shard-size", "4", "--steps", "2",
                 "--out", out)
    assert "No space left on device" in error_line(result)
    assert not (out / "manifest.json").exists() and sorted(p.name for p in out.glob("synth-*.tar")) == [
        "synth-000000.tar", "synth-000001.tar"]
    monkeypatch.setattr(generate_module, "write_shard", real_write)  # space freed
    assert cli("generate", "--run", digits_run.path, "--class", "4", "--num", "16", "--shard-size", "4", "--steps", "2",
               "--out", out).exit_code == 0
    result = verify_shards(out)
    assert result["ok"] and result["samples"] == 16 and not list(out.glob(".*.partial"))


def test_a_full_disk_during_a_snapshot_keeps_the_previous_state(tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path / "run", "generator.snapshot_every_kimg=0.064")
    real_save = torch.save
    saves = []

    def full_on_second(obj, f, *a, **k):
        saves.append(f)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(train_module.torch, "save", full_on_second)
    with pytest.raises(OSError, match="No space left"):
        train_generator(recipe)
    assert json.loads((tmp_path / "run" / "state" / "state.json").read_text())["step"] == 2  # the first snapshot, intact
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(train_module.torch, "save", real_save)
    run = train_generator(recipe)
    assert json.loads(run.info_file.read_text())["step"] == 4 and json.loads(run.info_file.read_text())["finished"]


def test_unwritable_output_is_one_sentence(digits_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli("generate", "--run", digits_run.path, "--class", "4", "--num", "2", "--out", blocker / "out")
    line = error_line(result)
    assert "Could not write or read" in line and "a-file" in line


def test_a_second_generate_into_the_same_folder_refuses(digits_run, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    with exclusive_lock(out / ".lock", "test"):
        result = cli("generate", "--run", digits_run.path, "--class", "4", "--num", "2", "--out", out)
    assert result.exit_code == 1 and "Another synthaug process is writing the folder" in result.output
    assert not (out / "manifest.json").exists() and not list(out.glob("synth-*"))


# -- bad input ----------------------------------------------------------------------------------
# (the hypothesis fuzzers of recipe files and command arguments are in test_fuzz.py)

@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--set", "generator.lrate=1", "--dry-run"], "Unknown recipe key 'generator.lrate'"),
        (["train", "--set", "generator.batch_size=many", "--dry-run"], "generator.batch_size must be a whole number"),
        (["train", "--set", "generator.batch_size=0", "--dry-run"], "generator.batch_size must be positive"),
        (["train", "--set", "sampling.steps=-2", "--dry-run"], "sampling.steps must be positive"),
        (["train", "--set", "sampling.guidance=-0.5", "--dry-run"], "guidance scale must be 0 or more"),
        (["train", "--set", "sampling.sampler=heun", "--dry-run"], "sampling.sampler 'heun' is not known"),
        (["train", "--set", "generator.preset=huge", "--dry-run"], "generator.preset 'huge' is not known; use one of tiny, small"),
        (["train", "--set", "generator.prediction=x0", "--dry-run"], "generator.prediction 'x0' is not known; use one of epsilon, v."),
        (["train", "--set", "generator.loss=l3", "--dry-run"], "generator.loss 'l3' is not known; use one of mse, l1."),
        (["train", "--set", "generator.condition=bogus", "--dry-run"], "generator.condition 'bogus' is not known"),
        (["train", "--set", "data.split=sideways", "--dry-run"], "data.split 'sideways' is not known"),
        (["train", "--set", "data.level=genus", "--dry-run"], "data.level 'genus' is not known; use one of category, species."),
        (["train", "--set", "genrator.lr=1", "--dry-run"], "Unknown recipe key 'genrator'; did you mean 'generator'?"),
        (["train", "."], ". is a folder, not a recipe file"),
        (["train", "--fresh", "--set", "generator.preset=huge"], "generator.preset 'huge' is not known"),
        (["verify", "no-such-folder"], "no-such-folder does not exist; give a folder written by synthaug generate."),
        (["evaluate", "--synthetic", "no-such-folder"], "no-such-folder does not exist"),
        (["train", "--set", "data.resolution=7"], "Resolution 7 cannot be halved 1 times by the tiny U-Net"),
        (["benchmark", "--set", "benchmark.classifier=resnet_9000", "--set", "benchmark.judge_steps=1"], "resnet_9000"),
        (["generate", "--class", "3", "--num", "0", "--out", "o"], "--num N or --per-class N"),
        (["generate", "--class", "3", "--per-class", "-4", "--out", "o"], "must be positive"),
        (["inspect", "digits", "--resolution", "-8"], "data.resolution -8 is out of range"),
        (["classes", "digits", "--search", "eleven"], "No class named 'eleven'"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_1(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in error_line(cli(*args))


@pytest.mark.parametrize("failure", ["torch", "safetensors", "bare"])
def test_a_full_disk_in_any_writer_is_one_sentence_naming_the_file(tmp_path, monkeypatch, failure):
    """torch.save raises RuntimeError and safetensors a SafetensorError when the disk fills, and a failed write() an
    OSError without a file name: each ends as the one sentence naming what could not be written."""
    import shutil

    import safetensors.torch

    if failure == "torch":
        def fail(*a, **k):
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 8388736 vs 8388624")

        monkeypatch.setattr(train_module.torch, "save", fail)
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 10 << 20, 0))  # full
        where = "state"
    elif failure == "safetensors":
        def fail(*a, **k):
            raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(safetensors.torch, "save_file", fail)
        where = "model"
    else:
        import synthaug.files as files

        def fail(fd, mode):
            os.close(fd)
            raise OSError(errno.ENOSPC, "No space left on device")  # as a failed f.write() raises it: no file name

        monkeypatch.setattr(files.os, "fdopen", fail)
        where = "run.json"  # the first file training writes
    run_dir = tmp_path / "run"
    result = cli("train", "--set", f"run_dir={run_dir}", *[a for s in TINY for a in ("--set", s)])
    line = error_line(result)
    assert f"Could not write or read {run_dir / where}" in line and "No space left on device" in line, line
