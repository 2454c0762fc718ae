"""Training reliability (issue 13), tried as a user would: data loss, wrong results, misleading repairs,
tracebacks, and a generate that reads a run while train writes it. Each test fails on the code before its fix."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import TINY, tiny_recipe, write_image
from synthaug import SynthaugError
from synthaug.cli import app
from synthaug.files import exclusive_lock, folder_atomic, sha256_file, write_checksums
from synthaug.generator import Generator
from synthaug.generator import train as train_module
from synthaug.conditions import ConditionSchema
from synthaug.generator.sampling import check_steps, sample_images, training_scheduler
from synthaug.generator.train import train_generator
from synthaug.runs import Run

runner = CliRunner()
TWO_STEPS = ("generator.duration_kimg=0.064", "generator.grid_every_kimg=0.064")  # a snapshot and a grid at the end
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert "Traceback" not in result.output, result.output
    return result


def error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and lines[-1].startswith("Error: "), result.output
    return lines[-1]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step digits run, trained under umask 022; tests work on copies of it."""
    old = os.umask(0o022)
    try:
        return train_generator(tiny_recipe(tmp_path_factory.mktemp("finished") / "run", *TWO_STEPS)).path
    finally:
        os.umask(old)


def copy_of(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


def snapshot(run: Path) -> dict:
    """Every file of a run folder with its sha256 (but the lock, and recipe.toml, which records the run_dir
    of the copy that last trained)."""
    return {p.relative_to(run).as_posix(): sha256_file(p) for p in sorted(run.rglob("*"))
            if p.is_file() and p.name not in (".lock", "recipe.toml")}


# -- data loss ---------------------------------------------------------------------------------

def test_a_run_whose_state_was_deleted_is_kept_not_retrained(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    shutil.rmtree(run / "state")
    before = snapshot(run)
    # the same recipe: the run has finished, nothing to train, nothing rewritten
    train_generator(tiny_recipe(run, *TWO_STEPS))
    assert snapshot(run) == before
    # a longer one cannot continue without the optimizer and EMA state: refused, nothing touched
    with pytest.raises(SynthaugError, match=r"state is missing, so .* \(trained 2 steps\) cannot continue exactly.*restore state/"):
        train_generator(tiny_recipe(run, "generator.duration_kimg=0.128"))
    assert snapshot(run) == before
    assert json.loads((run / "run.json").read_text())["finished"] is True


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


def test_a_data_error_creates_no_run_folder(tmp_path):
    line = error_line(cli("train", *[a for s in TINY for a in ("--set", s)], "--set", f"run_dir={tmp_path / 'new'}",
                          "--set", "data.spec=imagefolder:/nowhere/at/all"))
    assert "/nowhere/at/all" in line and not (tmp_path / "new").exists()


def test_a_file_as_the_run_folder_is_one_sentence(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SynthaugError, match="afile is a file, not a run folder; choose a folder"):
        train_generator(tiny_recipe(tmp_path / "afile"))


def test_the_grid_train_wrote_is_recorded_not_guessed(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "grids" / "zzz-mine.png").write_bytes(b"a user's png, sorted last")
    assert Run(run).latest_grid == run / "grids" / "grid-000000kimg.png"
    assert json.loads((run / "run.json").read_text())["grid"] == "grids/grid-000000kimg.png"


# -- wrong results -----------------------------------------------------------------------------

# 24 steps: a log line at steps 1, 4, 7, ..., 22 and 24, a snapshot every 6 steps, a grid every 8
SCHEDULES = ("generator.duration_kimg=0.768", "generator.log_every_kimg=0.096", "generator.snapshot_every_kimg=0.192",
             "generator.grid_every_kimg=0.256")


def test_a_killed_and_resumed_run_logs_and_draws_its_grids_as_an_uninterrupted_one(tmp_path, monkeypatch):
    grids = []

    def draw(denoiser, schema, scheduler_config, recipe, path, autocast):  # a grid: which weights it was drawn from
        weights = torch.cat([p.detach().flatten() for p in denoiser.trainable_parameters()]).numpy().tobytes()
        grids.append((path.parent.parent.name, hashlib.sha256(weights).hexdigest()))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")

    monkeypatch.setattr(train_module, "save_grid", draw)
    straight = train_generator(tiny_recipe(tmp_path / "a", *SCHEDULES))
    real_clock = train_module.clock
    readings = []

    def killed_in_step_14():  # read once before the loop, then once after each step
        readings.append(1)
        if len(readings) == 15:
            raise KeyboardInterrupt  # step 14 has trained, its log line at 13 is written; the last snapshot is at 12
        return real_clock()

    monkeypatch.setattr(train_module, "clock", killed_in_step_14)
    with pytest.raises(KeyboardInterrupt):
        train_generator(tiny_recipe(tmp_path / "b", *SCHEDULES))
    assert json.loads((tmp_path / "b" / "state" / "state.json").read_text())["step"] == 12
    monkeypatch.setattr(train_module, "clock", real_clock)
    resumed = train_generator(tiny_recipe(tmp_path / "b", *SCHEDULES))

    def logged(run):
        return [(e["step"], e["kimg"], e["loss"], e["lr"]) for e in map(json.loads, run.log_file.read_text().splitlines())]

    assert [line[0] for line in logged(straight)] == [1, 4, 7, 10, 13, 16, 19, 22, 24]
    assert logged(resumed) == logged(straight)  # the same lines, each the mean loss of the same steps
    drawn = {run: [w for r, w in grids if r == run] for run in ("a", "b")}
    assert len(drawn["a"]) == 3 and drawn["b"] == drawn["a"]  # at steps 8, 16 and 24, before the kill and after
    assert snapshot(resumed.path / "ema") == snapshot(straight.path / "ema")


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

def test_v_prediction_reaches_the_saved_schedule_and_the_loss(tmp_path, monkeypatch):
    used = []

    class Spy(train_module.DiffusionLoss):
        def __call__(self, *args):
            used.append(self.prediction)
            return super().__call__(*args)

    monkeypatch.setattr(train_module, "DiffusionLoss", Spy)
    run = train_generator(tiny_recipe(tmp_path / "v", "generator.prediction=v", "generator.duration_kimg=0.032"))
    config = json.loads((run.ema_dir / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction" and used == ["v"]


def test_a_shorter_duration_than_trained_is_refused(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    before = snapshot(run)
    with pytest.raises(SynthaugError, match=r"has already trained 0.064 kimg, more than generator.duration_kimg = 0.032 asks "
                                            r"for; set generator.duration_kimg to 0.064 or more"):
        train_generator(tiny_recipe(run, "generator.duration_kimg=0.032", "generator.grid_every_kimg=0.064"))
    assert snapshot(run) == before and "duration_kimg = 0.064" in (run / "recipe.toml").read_text()


def test_run_folders_get_the_usual_permissions(finished):
    for sub in ("ema", "model", "state"):
        folder = finished / sub
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, sub
        for p in folder.rglob("*"):
            assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p


def test_folder_atomic_respects_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        with folder_atomic(tmp_path / "ema") as tmp:
            (tmp / "unet").mkdir()
            save_file({"w": torch.zeros(2)}, tmp / "unet" / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ema").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "ema" / "unet" / "w.safetensors").stat().st_mode) == 0o600


# -- misleading repairs and tracebacks ----------------------------------------------------------

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


@pytest.mark.parametrize("sampler, steps, prediction, message", [
    ("ddpm", 1001, "epsilon", "The ddpm sampler can take at most 1000 steps on this run's 1000-step noise schedule; use steps 1000 or fewer."),
    ("ddim", 100000, "epsilon", "The ddim sampler can take at most 1000 steps"),
    # leading spacing divides the schedule into steps + 1 parts: at 1000 steps every timestep would be 0
    ("dpm++2m", 1000, "epsilon", "The dpm++2m sampler can take at most 999 steps"),
    ("unipc", 1001, "epsilon", "The unipc sampler can take at most 999 steps"),
    ("euler", 1001, "epsilon", "The euler sampler can take at most 1000 steps"),
    ("dpm++2m", 1001, "v", "The dpm++2m sampler can take at most 1000 steps"),
    # trailing spacing overshoots to timestep -1 at some counts below the schedule's length
    ("ddim", 61, "v", "The ddim sampler cannot take 61 steps on this run's 1000-step noise schedule (diffusers would "
                      "visit a timestep outside it); use steps 60 or 62."),
    ("ddim", 0, "epsilon", "The number of sampling steps must be positive"),
])
def test_steps_beyond_the_schedule_are_one_sentence(sampler, steps, prediction, message):
    config = dict(training_scheduler(prediction=prediction).config)
    with pytest.raises(SynthaugError) as e:
        check_steps(sampler, steps, config)
    assert message in str(e.value)


def test_steps_within_the_schedule_pass_and_sampling_checks_them(finished):
    config = dict(training_scheduler().config)
    for sampler, steps in [("ddpm", 1000), ("ddim", 1000), ("dpm++2m", 999), ("unipc", 20), ("euler", 1000)]:
        check_steps(sampler, steps, config)
    gen = Generator.load(finished, device="cpu")
    gen.check_sampling(gen.sampling.replace(steps=3))
    with pytest.raises(SynthaugError, match="can take at most 1000 steps"):
        gen.check_sampling(gen.sampling.replace(sampler="ddpm", steps=1001))
    with pytest.raises(SynthaugError, match="can take at most 1000 steps"):  # not diffusers' ValueError
        sample_images(gen.denoiser, torch.tensor([3]), gen.schema.null(1), [0], gen.scheduler_config,
                      gen.sampling.replace(sampler="ddim", steps=1001))


def test_damaged_state_json_is_one_sentence(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "state" / "state.json").write_text('{"step": 2, "sha')
    with pytest.raises(SynthaugError, match=r"state\.json is damaged .*restore it, or start over with --fresh\."):
        train_generator(tiny_recipe(run, *TWO_STEPS))


def test_damaged_condition_json_is_one_sentence_and_train_rewrites_it(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "condition.json").write_text('{"kind": "class", "class_na')
    line = error_line(cli("generate", "--run", run, "--class", "3", "--num", "1", "--out", tmp_path / "o"))
    assert "condition.json is damaged" in line and "run synthaug train for this run again" in line
    (run / "condition.json").write_text('{"kind": "class"}')  # valid JSON, not a schema
    with pytest.raises(SynthaugError, match="condition.json is damaged"):
        ConditionSchema.load(run / "condition.json")
    train_generator(tiny_recipe(run, *TWO_STEPS))
    assert ConditionSchema.load(run / "condition.json").class_names == tuple(str(d) for d in range(10))


def test_the_progress_label_names_the_dataset_not_the_recipe(finished, tmp_path, monkeypatch):
    labels = []
    real_task = train_module.progress.task
    monkeypatch.setattr(train_module.progress, "task", lambda label, **kw: labels.append(label) or real_task(label, **kw))
    run = copy_of(finished, tmp_path)
    train_generator(tiny_recipe(run, *TWO_STEPS, "name=birds"))  # a recipe named birds that trains on digits
    assert labels == ["training on digits"]
    assert train_module.dataset_label("cub:/data/CUB_200_2011") == "cub:CUB_200_2011"


# -- a generate reading a run that train is writing ---------------------------------------------

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



# -- resuming on other images -------------------------------------------------------------------

def small_tree(root: Path, colours=((220, 30, 30), (30, 200, 40)), per_class: int = 4) -> Path:
    """Two classes of solid-colour 8 px images, the same file names whatever the colours."""
    for c, name in enumerate(("red", "green")):
        for k in range(per_class):
            write_image(root / name / f"{k}.png", tuple(min(255, v + 3 * k) for v in colours[c]), size=(8, 8))
    return root


def small_recipe(run: Path, *extra):
    return tiny_recipe(run, "data.spec=imagefolder:data", "data.resolution=8", "generator.batch_size=8",
                       "generator.duration_kimg=0.016", "data.val_fraction=0", *extra)


def test_resuming_from_another_folder_on_a_relative_spec_is_refused_naming_both(tmp_path, monkeypatch):
    small_tree(tmp_path / "relA" / "data")
    small_tree(tmp_path / "relB" / "data", colours=((10, 10, 200), (200, 200, 10)))  # same names, other images
    run = tmp_path / "R"
    monkeypatch.chdir(tmp_path / "relA")
    train_generator(small_recipe(run))
    before = snapshot(run)
    assert ConditionSchema.load(run / "condition.json").train_location == str(tmp_path / "relA" / "data")
    monkeypatch.chdir(tmp_path / "relB")
    with pytest.raises(SynthaugError) as error:
        train_generator(small_recipe(run, "generator.duration_kimg=0.032"))
    message = str(error.value)
    assert f"imagefolder:data now resolves to {tmp_path / 'relB' / 'data'}, not {tmp_path / 'relA' / 'data'}" in message
    assert "the same files hold other pixels (edited or replaced in place)" in message and "--fresh" in message, message
    assert snapshot(run) == before  # nothing in the run folder was touched
    with pytest.raises(SynthaugError, match="the same files hold other pixels"):
        Run(run).training_images()  # generate --from-real and the filter: no image may leak
    # identical copies in another folder: still another dataset for a resumption, but no leak
    shutil.rmtree(tmp_path / "relB" / "data")
    shutil.copytree(tmp_path / "relA" / "data", tmp_path / "relB" / "data")
    with pytest.raises(SynthaugError, match="now resolves to") as error:
        train_generator(small_recipe(run, "generator.duration_kimg=0.032"))
    assert "changed" not in str(error.value).split("; use")[0].split("resolves to")[1]
    assert len(Run(run).training_images()) == 6
    monkeypatch.chdir(tmp_path / "relA")
    assert json.loads(train_generator(small_recipe(run, "generator.duration_kimg=0.032")).info_file.read_text())["step"] == 4


def test_images_replaced_in_place_or_added_are_named_and_refused(tmp_path, monkeypatch):
    data = small_tree(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "R"
    train_generator(small_recipe(run))
    write_image(data / "red" / "2.png", (0, 0, 0), size=(8, 8))  # the same name, other pixels
    with pytest.raises(SynthaugError, match=r"the same files hold other pixels \(edited or replaced in place\)"):
        train_generator(small_recipe(run, "generator.duration_kimg=0.032"))
    with pytest.raises(SynthaugError, match="the same files hold other pixels"):
        Run(run).training_images()
    write_image(data / "red" / "2.png", (226, 36, 36), size=(8, 8))  # back as it was (pixels, not file times, count)
    write_image(data / "green" / "9.png", (30, 200, 40), size=(8, 8))
    with pytest.raises(SynthaugError, match=r"files were added, removed or renamed \('green' 3 -> 4 images\)"):
        train_generator(small_recipe(run, "generator.duration_kimg=0.032"))
    (data / "green" / "9.png").unlink()
    assert json.loads(train_generator(small_recipe(run, "generator.duration_kimg=0.032")).info_file.read_text())["step"] == 4


def test_a_run_recorded_before_content_hashes_resumes_with_the_file_name_check(tmp_path, monkeypatch):
    small_tree(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "R"
    train_generator(small_recipe(run))
    schema = json.loads((run / "condition.json").read_text())
    old = {k: v for k, v in schema.items() if k not in ("train_location", "train_pixels_sha256", "train_labels_sha256")}
    (run / "condition.json").write_text(json.dumps(old))
    assert len(Run(run).training_images()) == 6
    assert json.loads(train_generator(small_recipe(run, "generator.duration_kimg=0.032")).info_file.read_text())["step"] == 4
    assert ConditionSchema.load(run / "condition.json").train_pixels_sha256  # recorded from now on


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


def test_generate_says_when_the_run_is_still_training(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    with exclusive_lock(run / ".lock", "the run folder"):  # as a training of the run holds it
        result = generate(run, tmp_path / "during")
    assert result.exit_code == 0, result.output
    assert f"{run} is still being trained" in " ".join(result.output.split()), result.output
    result = generate(run, tmp_path / "after")
    assert result.exit_code == 0 and "still being trained" not in result.output, result.output


def test_testing_the_lock_does_not_make_a_training_refuse(tmp_path):
    lock = tmp_path / ".lock"
    lock.write_text("")
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a generate testing whether training runs, caught in the act

    def done():
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    threading.Timer(0.05, done).start()
    with exclusive_lock(lock, "the run folder"):
        pass
