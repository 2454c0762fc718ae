"""Run folders: what train takes for one and leaves alone in it, what generate takes for a run, a run missing or
damaging one of its parts, and a generate reading a run that train is writing."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, TWO_STEPS, cli, copy_of, error_line, files_of, snapshot, tiny_recipe
from synthaug import SynthaugError
from synthaug.files import exclusive_lock, folder_atomic, write_checksums
from synthaug.generator import Generator
from synthaug.generator import train as train_module
from synthaug.generator.train import train_generator
from synthaug.runs import Run


WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


# -- what train takes for a run folder, and what it leaves alone there ---------------------------------

def user_folder(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "weights.bin").write_bytes(b"the user's own weights")
    (root / "log.jsonl").write_text('{"epoch": 1}\n')
    (root / "grids").mkdir()
    (root / "grids" / "mine.png").write_bytes(b"\x89PNG not ours")
    return root


@pytest.mark.parametrize("fresh", [False, True])
def test_train_refuses_a_folder_that_is_not_a_run(tmp_path, fresh):
    folder = user_folder(tmp_path / "mine")
    before = snapshot(folder)
    result = cli("train", *[a for s in TINY for a in ("--set", s)], "--set", f"run_dir={folder}", *(["--fresh"] if fresh else []))
    line = error_line(result)
    assert "is not a synthaug run folder" in line and "grids" in line and "choose an empty or new folder" in line
    assert snapshot(folder) == before and not (folder / ".lock").exists()


def home_like(root: Path) -> Path:
    (root / "Documents").mkdir(parents=True)
    (root / "Documents" / "letter.txt").write_text("dear")
    (root / ".bashrc").write_text("alias ll='ls -l'\n")
    return root


@pytest.mark.parametrize("fresh", [False, True])
def test_train_refuses_a_non_empty_folder_that_is_not_a_run(tmp_path, fresh):
    for folder in (home_like(tmp_path / "like-home"), tmp_path / "notes"):
        if folder.name == "notes":
            folder.mkdir()
            (folder / "notes.txt").write_text("x")
        before = snapshot(folder)
        result = cli("train", *[a for s in TINY for a in ("--set", s)], "--set", f"run_dir={folder}", *(["--fresh"] if fresh else []))
        line = error_line(result)
        assert f"{folder} is not a synthaug run folder" in line and "choose an empty or new folder" in line, line
        assert snapshot(folder) == before and not (folder / ".lock").exists()
        assert sorted(p.name for p in folder.iterdir()) == sorted(before_names(before))


def before_names(files: dict) -> set[str]:
    return {name.split("/")[0] for name in files}


def test_train_refuses_the_root_and_the_home_folder_and_expands_a_tilde(tmp_path, monkeypatch):
    home = home_like(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    before = snapshot(home)
    line = error_line(cli("train", *[a for s in TINY for a in ("--set", s)], "--set", "run_dir=~", "--fresh"))
    assert f"{home} is your home folder" in line and "--set run_dir=" in line
    assert snapshot(home) == before and not (tmp_path / "~").exists()
    with pytest.raises(SynthaugError, match="/ is the root folder"):
        Run(Path("/")).check_trainable()
    root_lock = Path("/.lock")
    existed = root_lock.exists()
    try:
        line = error_line(cli("train", *[a for s in TINY for a in ("--set", s)], "--set", "run_dir=/",
                              "--set", "data.spec=imagefolder:/nonexistent"))
        assert existed or not root_lock.exists()  # nothing written into / (not even the lock) before the error
    finally:
        if root_lock.exists() and not existed:
            root_lock.unlink()
    # a tilde in run_dir is the home folder, not a folder named ~ in the current one
    run = train_generator(tiny_recipe("~/runs/r", "generator.duration_kimg=0.032"))
    assert run.path == home / "runs" / "r" and run.trained and not (tmp_path / "~").exists()


def test_a_file_as_the_run_folder_is_one_sentence(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SynthaugError, match="^run_dir .*afile is a file, not a folder; choose a folder"):
        train_generator(tiny_recipe(tmp_path / "afile"))


def test_a_data_error_creates_no_run_folder(tmp_path):
    line = error_line(cli("train", *[a for s in TINY for a in ("--set", s)], "--set", f"run_dir={tmp_path / 'new'}",
                          "--set", "data.spec=imagefolder:/nowhere/at/all"))
    assert "/nowhere/at/all" in line and not (tmp_path / "new").exists()


def test_train_leaves_what_is_not_its_own_in_a_run_folder(tmp_path):
    (tmp_path / "run" / "shots-3").mkdir(parents=True)  # a benchmark's low-data run lives inside the full one
    (tmp_path / "run" / "benchmark" / "stages").mkdir(parents=True)  # and its report beside it
    train_generator(tiny_recipe(tmp_path / "run", "generator.duration_kimg=0.032"))
    (tmp_path / "run" / "notes.txt").write_text("mine")  # a user's notes in a folder that is a run
    train_generator(tiny_recipe(tmp_path / "run", "generator.duration_kimg=0.064"))
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine" and (tmp_path / "run" / "shots-3").is_dir()
    assert (tmp_path / "run" / "benchmark" / "stages").is_dir()
    assert Run(tmp_path / "run").trained and Run(tmp_path / "run").info()["step"] == 2


def test_a_benchmark_that_reports_into_the_run_folder_still_trains_there(tmp_path):
    run = tmp_path / "run"  # benchmark --out run: its lock and stage store come before the run's first file
    (run / "stages").mkdir(parents=True)
    (run / "stages" / "store.json").write_text('{"what": "benchmark stages"}')
    (run / ".lock").write_text("")
    train_generator(tiny_recipe(run, "generator.duration_kimg=0.032"))
    assert Run(run).trained
    (run / "stages" / "store.json").unlink()  # a stages/ folder that is not the benchmark's is the user's
    shutil.rmtree(run / "model")
    (run / "run.json").unlink()
    with pytest.raises(SynthaugError, match="is not a synthaug run folder"):
        Run(run).check_trainable()


@pytest.mark.parametrize("bad, message", [
    ("data.resolution=7", "Resolution 7 cannot be halved"),
    ("data.spec=imagefolder:/nowhere/at/all", "/nowhere/at/all"),
])
def test_fresh_checks_the_recipe_before_deleting_anything(finished, tmp_path, bad, message):
    run = copy_of(finished, tmp_path)
    before = snapshot(run)
    result = cli("train", "--fresh", "--set", f"run_dir={run}", *[a for s in TWO_STEPS for a in ("--set", s)], "--set", bad)
    assert message in error_line(result)
    assert snapshot(run) == before  # model/, ema/, state/, log.jsonl, grids/ all still there


def test_a_second_train_on_the_same_run_folder_is_refused(digits_run, tmp_path):
    run = shutil.copytree(digits_run.path, tmp_path / "run")
    before = files_of(run)
    with exclusive_lock(run / ".lock", "the run folder"):  # the first train, still running
        result = cli("train", *[a for s in TINY for a in ("--set", s)], "--set", "generator.duration_kimg=0.256",
                     "--out", run)
        line = error_line(result)
        fresh = error_line(cli("train", *[a for s in TINY for a in ("--set", s)], "--out", run, "--fresh"))
    assert f"Another synthaug process is writing the run folder {run}" in line and "wait for it to finish" in line
    assert "Another synthaug process is writing" in fresh
    assert files_of(run) == before  # --fresh deleted nothing either


def test_run_folders_get_the_usual_permissions(finished):
    for sub in ("ema", "model", "state"):
        folder = finished / sub
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, sub
        for p in folder.rglob("*"):
            assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p


# -- the sample grid a run records ---------------------------------------------------------------------

def test_the_grid_train_wrote_is_recorded_not_guessed(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "grids" / "zzz-mine.png").write_bytes(b"a user's png, sorted last")
    assert Run(run).latest_grid == run / "grids" / "grid-000000kimg.png"
    assert json.loads((run / "run.json").read_text())["grid"] == "grids/grid-000000kimg.png"


def test_the_sample_grid_line_names_only_a_grid_of_the_current_settings(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    assert Run(run).latest_grid is not None  # the finished run drew one
    args = ["train", *[a for s in TINY for a in ("--set", s)], "--out", run]
    for duration in ("0.064", "0.128"):  # nothing to train, then trained on: no grids now (grid_every_kimg = 0)
        result = cli(*args, "--set", f"generator.duration_kimg={duration}")
        assert result.exit_code == 0 and "Sample grid:" not in result.output, result.output
        assert Run(run).latest_grid is None
    result = cli(*args, "--set", "generator.duration_kimg=0.192", "--set", "generator.grid_every_kimg=0.064")
    assert f"Sample grid: {run / 'grids' / 'grid-000000kimg.png'}" in result.output, result.output


# -- what generate takes for a run, and a run missing or damaging one of its parts ---------------------

def test_generate_with_a_folder_that_is_not_a_run_says_so(digits_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's folder")
    (tmp_path / "empty").mkdir()
    for folder in (mine, tmp_path / "empty"):
        line = error_line(cli("generate", "--run", folder, "--class", "3", "--num", "2", "--out", tmp_path / "o"))
        assert line == (f"Error: {folder} is not a synthaug run folder (it has no run.json or recipe.toml); pass --run a "
                        "folder that synthaug train wrote (e.g. runs/digits).")
    run = shutil.copytree(digits_run.path, tmp_path / "run")
    shutil.rmtree(run / "ema")  # the advice names the command that rewrites it (test_train_rewrites_damaged_weights...)
    line = error_line(cli("generate", "--run", run, "--class", "3", "--num", "2", "--out", tmp_path / "o"))
    assert f"holds no usable generator (no ema/ folder); run `synthaug train {run}/recipe.toml --out {run}`" in line
    assert not (tmp_path / "o").exists()


def test_damaged_weights_are_detected_before_use(digits_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(digits_run.path, run)
    weights_file = run / "ema" / "unet" / "diffusion_pytorch_model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:-100])
    result = cli("generate", "--run", run, "--class", "3", "--num", "2", "--out", tmp_path / "o")
    assert "diffusion_pytorch_model.safetensors is damaged" in error_line(result)


def damage(run: Path, how: str) -> None:
    if how == "ema missing":
        shutil.rmtree(run / "ema")
    elif how == "ema weights truncated":
        f = run / "ema" / WEIGHTS
        f.write_bytes(f.read_bytes()[:-100])
    elif how == "model checksums missing":
        (run / "model" / "checksums.json").unlink()


@pytest.mark.parametrize("how", ["ema missing", "ema weights truncated", "model checksums missing"])
def test_train_rewrites_damaged_weights_and_then_generate_works(finished, tmp_path, how):
    run = copy_of(finished, tmp_path)
    damage(run, how)
    if how != "model checksums missing":  # generate reads ema/ only
        advice = error_line(cli("generate", "--run", run, "--class", "3", "--num", "1", "--steps", "2", "--out", tmp_path / "a"))
        assert "synthaug train" in advice
    train_generator(tiny_recipe(run, *TWO_STEPS))  # the advice, followed
    for sub in ("ema", "model"):
        assert (run / sub / "checksums.json").is_file()
        a, b = load_file(finished / sub / WEIGHTS), load_file(run / sub / WEIGHTS)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the finished weights, rewritten
    result = cli("generate", "--run", run, "--class", "3", "--num", "1", "--steps", "2", "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "log.jsonl").read_text().splitlines()[-1])["step"] == 2  # nothing retrained


def generate(run: Path, out: Path):
    return cli("generate", "--run", run, "--class", "3", "--num", "1", "--steps", "2", "--out", out)


def manifest_run(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["run"]


def test_a_snapshot_that_fails_after_its_weights_leaves_no_run_that_generate_misreports(finished, tmp_path, monkeypatch):
    run = copy_of(finished, tmp_path)
    longer = ("generator.duration_kimg=0.128", "generator.grid_every_kimg=0.064")

    def no_room(*args, **kwargs):  # the state of step 4 cannot be written (a full disk, a read-only state/)
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "state"))

    monkeypatch.setattr(train_module.torch, "save", no_room)
    with pytest.raises(OSError):
        train_generator(tiny_recipe(run, *longer))
    monkeypatch.undo()
    assert json.loads((run / "state" / "state.json").read_text())["step"] == 2  # the last state written
    line = error_line(generate(run, tmp_path / "mixed"))  # ema/ holds step 4's weights; run.json and state/ step 2's
    assert "ema holds the weights of 0.128 kimg" in line and "run.json records 0.064 kimg" in line and "synthaug train" in line
    assert not (tmp_path / "mixed" / "manifest.json").exists()
    # the advice, followed with the run's own recipe (now the longer one): trained on to step 4, all of it agrees
    other = copy_of(run, tmp_path / "other")
    train_generator(tiny_recipe(run, *longer))
    assert generate(run, tmp_path / "longer").exit_code == 0
    assert manifest_run(tmp_path / "longer")["kimg"] == 0.128
    assert manifest_run(tmp_path / "longer")["weights_sha256"] == Run(run).weights_sha256()
    # or with the duration the run had: the weights are rewritten from the state, the finished run's again
    train_generator(tiny_recipe(other, *TWO_STEPS))
    assert generate(other, tmp_path / "shorter").exit_code == 0
    assert manifest_run(tmp_path / "shorter")["kimg"] == 0.064
    assert manifest_run(tmp_path / "shorter")["weights_sha256"] == Run(finished).weights_sha256() == Run(other).weights_sha256()


def test_a_run_without_its_recipe_names_the_missing_file(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "recipe.toml").unlink()
    line = error_line(generate(run, tmp_path / "o"))
    assert f"{run / 'recipe.toml'}, the recipe {run} was trained with, is missing" in line and "give a .toml path" not in line
    with pytest.raises(SynthaugError, match=r"recipe.toml, the recipe .* was trained with, is missing; copy"):
        train_generator(tiny_recipe(run, *TWO_STEPS))


# -- a generate reading a run that train is writing ----------------------------------------------------

def test_generate_says_when_the_run_is_still_training(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    with exclusive_lock(run / ".lock", "the run folder"):  # as a training of the run holds it
        result = generate(run, tmp_path / "during")
    assert result.exit_code == 0, result.output
    assert f"{run} is still being trained" in " ".join(result.output.split()), result.output
    result = generate(run, tmp_path / "after")
    assert result.exit_code == 0 and "still being trained" not in result.output, result.output


def other_weights(run: Path, folder: Path) -> None:
    """``folder``: the run's ema/ with every weight changed (as the next snapshot would), checksums rewritten."""
    shutil.copytree(run / "ema", folder, dirs_exist_ok=True)
    weights = load_file(folder / WEIGHTS)
    save_file({k: v + 1 for k, v in weights.items()}, folder / WEIGHTS)
    (folder / "checksums.json").unlink()
    write_checksums(folder)


def assert_loaded(gen: Generator, run: Path) -> None:
    """``gen`` holds the weights now in ``run``'s ema/, and the sha256 it records (in every shard) is theirs."""
    assert gen.weights_sha256 == Run(run).weights_sha256()
    loaded = gen.denoiser.unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in load_file(run / "ema" / WEIGHTS).items())


def test_generate_waits_for_a_swap_of_ema_in_progress(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    new = tmp_path / "new-ema"
    other_weights(run, new)
    os.rename(run / "ema", run / "ema.old")  # train is between its two renames: ema/ is briefly absent

    def finish_swap():
        os.rename(new, run / "ema")
        shutil.rmtree(run / "ema.old")

    timer = threading.Timer(0.3, finish_swap)
    timer.start()
    try:
        gen = Generator.load(run, device="cpu")
    finally:
        timer.join()
    assert_loaded(gen, run)


def test_generate_reads_one_consistent_ema_when_it_is_replaced_mid_load(finished, tmp_path, monkeypatch):
    import synthaug.generator.backends as backends

    run = copy_of(finished, tmp_path)
    real_load = backends.load_model
    calls = []

    def swap_then_load(folder, *args):
        if not calls:  # the weights' sha256 is taken; now train replaces ema/ before the weights are read
            with folder_atomic(run / "ema") as tmp:
                other_weights(run, tmp)
        calls.append(folder)
        return real_load(folder, *args)

    monkeypatch.setattr(backends, "load_model", swap_then_load)
    gen = Generator.load(run, device="cpu")
    assert len(calls) == 2  # the first, mixed read was thrown away
    assert_loaded(gen, run)


def test_a_damaged_ema_is_reported_at_once_not_retried(finished, tmp_path, monkeypatch):
    import synthaug.generator.pipeline as pipeline

    run = copy_of(finished, tmp_path)
    damage(run, "ema weights truncated")
    monkeypatch.setattr(pipeline.time, "sleep", lambda s: pytest.fail("a damaged ema/ is no swap to wait for"))
    with pytest.raises(SynthaugError, match="diffusion_pytorch_model.safetensors is damaged"):
        Generator.load(run, device="cpu")
