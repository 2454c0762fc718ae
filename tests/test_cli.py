"""The command line end to end through Typer's CliRunner: output, files, exit codes, error sentences."""

from __future__ import annotations

import errno
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, cli, error_line, one_sentence_error, write_image
from synthaug import __version__, progress
from synthaug.cli import count, os_error_sentence

COMMANDS = ["datasets", "inspect", "classes", "train", "generate", "verify", "evaluate", "benchmark"]


def test_version_and_help():
    assert cli("--version").output.strip() == f"synthaug {__version__}"
    result = cli("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
    assert cli("inspect", "--help").exit_code == 0


def test_synthaug_alone_prints_the_help_and_exits_0():
    result = cli()
    assert result.exit_code == 0 and "Usage: synthaug [OPTIONS] COMMAND" in result.output
    assert all(name in result.output for name in COMMANDS)
    assert cli("-q").exit_code == 0  # options but no command: the help too


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_shows_no_bool_type_for_flags(name):
    result = cli(*([name] if name else []), "--help")
    assert result.exit_code == 0 and "--help" in result.output
    assert "<bool>" not in result.output, result.output


def test_help_texts_keep_their_brackets_and_say_where_defaults_come_from():
    assert "Recipe whose [benchmark] section" in cli("evaluate", "--help").output
    out = cli("generate", "--help").output
    for option in ("--guidance", "--sampler", "--steps", "--seed", "--batch-size", "--shard-size"):
        line = next(line for line in out.splitlines() if f" {option} " in line)
        assert "(default: the run's recipe)" in line or "default:" in out.split(option, 1)[1].split("--", 1)[0], line
    assert "<ddpm|ddim|dpm++2m|unipc|euler>" in out  # the sampler's choices
    assert "<auto|official|stratified>" in cli("inspect", "--help").output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "No such option: --bogus"),
        (["bogus"], "No such command 'bogus'; see `synthaug --help`."),
        (["train", "--bogus"], "No such option: --bogus"),
        (["inspect"], "Missing argument"),
        (["inspect", "digits", "--limit", "many"], "Invalid value for '--limit'"),
        (["inspect", "digits", "--split", "sideways"], "'sideways' is not one of 'auto', 'official', 'stratified'"),
        (["generate", "--out", "o", "--class", "1", "--num", "1", "--sampler", "heun"], "'heun' is not one of 'ddpm'"),
        (["train", "--fresh=yes"], "Option '--fresh' does not take a value"),
    ],
)
def test_usage_mistakes_are_one_sentence_and_exit_1(args, message):
    line = one_sentence_error(cli(*args))
    command = "synthaug" if args[0].startswith("-") or args[0] == "bogus" else f"synthaug {args[0]}"
    assert message in line and line.endswith(f"; see `{command} --help`."), line


def test_ctrl_c_exits_130_and_says_what_is_kept(monkeypatch):
    import synthaug.data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthaug.data, "load_dataset", interrupted)
    result = cli("inspect", "digits")
    assert result.exit_code == 130 and "Error: Interrupted; files already written are kept" in result.output


def test_sigterm_exits_143_says_what_is_kept_and_restores_the_handler(monkeypatch):
    import os
    import signal
    import time

    import synthaug.data

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises in here
        raise AssertionError("SIGTERM did not stop the command")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(synthaug.data, "load_dataset", terminated)
    result = cli("inspect", "digits")
    assert result.exit_code == 143 and "Error: Stopped by SIGTERM; files already written are kept" in result.output
    assert signal.getsignal(signal.SIGTERM) == before


def test_datasets_lists_every_format():
    result = cli("datasets")
    assert result.exit_code == 0
    for name in ("digits", "imagefolder", "cub", "nabirds", "stanford-cars", "celeba", "celeba-dialog"):
        assert re.search(rf"\b{name}\b", result.output)


def test_inspect_digits_writes_a_grid(tmp_path):
    grid = tmp_path / "grid.png"
    result = cli("inspect", "digits", "--grid", str(grid))
    assert result.exit_code == 0, result.output
    assert "1797 images, 10 classes, 8x8 px, 1 channel;" in result.output
    assert "stratified" in result.output
    assert max(Image.open(grid).size) >= 512  # small images are upscaled to be seen


def test_inspect_writes_its_default_grid_under_the_cache_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SYNTHAUG_CACHE", str(tmp_path / "cache"))
    result = cli("inspect", "digits")
    assert result.exit_code == 0, result.output
    grid = tmp_path / "cache" / "grids" / "digits-8px.png"
    assert f"Sample grid: {grid}" in result.output and grid.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # nothing written into the current folder


def test_a_tilde_in_a_path_option_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = cli("inspect", "digits", "--grid=~/grid.png")  # no shell expands a tilde after "="
    assert result.exit_code == 0, result.output
    assert (tmp_path / "home" / "grid.png").is_file() and not (tmp_path / "~").exists()
    result = cli("train", "--out=~/runs/r", "--dry-run")
    assert f'run_dir = "{tmp_path / "home" / "runs" / "r"}"' in result.output


def test_grid_rows_are_labelled_with_their_class(tmp_path):
    from synthaug.grids import label_rows

    image = np.full((90, 60, 3), 200, dtype=np.uint8)
    labelled = label_rows(image, ["Laysan Albatross", "", "Anna Hummingbird"])
    margin = labelled.shape[1] - 60
    assert labelled.shape[0] == 90 and margin > 40 and np.array_equal(labelled[:, margin:], image)
    ink = (labelled[:, :margin] < 128).any(axis=(1, 2))  # rows of the margin with dark text pixels
    assert ink[:30].any() and not ink[30:60].any() and ink[60:].any()  # each label in its own row, the empty one blank
    narrow = label_rows(image, ["x" * 200], max_width=50)
    assert narrow.shape[1] - 60 <= 60  # a long name is shortened


def test_inspect_grid_of_a_class_per_folder_dataset_has_its_class_names_at_the_left(imagefolder_tree, tmp_path):
    grid = tmp_path / "g.png"
    assert cli("inspect", f"imagefolder:{imagefolder_tree}", "-r", "8", "--grid", str(grid)).exit_code == 0
    image = np.asarray(Image.open(grid).convert("RGB"))
    # tiles are solid colours: the labelled margin at the left is white paper with black text
    margin = image[:, :40]
    assert (margin < 60).all(axis=2).any() and (margin > 250).all(axis=2).mean() > 0.5


def test_inspect_draws_a_class_named_with_a_newline_escaped(tmp_path):
    for c, name in enumerate(("cat", "two\nlines")):
        for k in range(2):
            write_image(tmp_path / "odd" / name / f"{k}.png", COLOURS[c])
    grid = tmp_path / "g.png"
    result = cli("inspect", f"imagefolder:{tmp_path / 'odd'}", "-r", "8", "--grid", str(grid))
    assert result.exit_code == 0, result.output
    assert grid.is_file()


def test_inspect_with_an_unwritable_cache_says_not_cached(imagefolder_tree, tmp_path, monkeypatch):
    (tmp_path / "blocker").write_text("a file, not a folder")
    monkeypatch.setenv("SYNTHAUG_CACHE", str(tmp_path / "blocker" / "cache"))
    result = cli("inspect", f"imagefolder:{imagefolder_tree}", "-r", "8", "--grid", str(tmp_path / "g.png"))
    assert result.exit_code == 0, result.output
    assert "10 images, 2 classes, 8x8 px, 3 channels; decoded, not cached" in result.output
    assert "built in" not in result.output
    assert "built in, no files" in cli("inspect", "digits", "--grid", str(tmp_path / "d.png")).output


def test_inspect_uses_the_cache_the_second_time(cub_tree, tmp_path):
    first = cli("inspect", f"cub:{cub_tree}", "-r", "16", "--grid", str(tmp_path / "g.png"))
    assert first.exit_code == 0 and "decoded and cached" in first.output
    second = cli("inspect", f"cub:{cub_tree}", "-r", "16", "--grid", str(tmp_path / "g.png"))
    assert second.exit_code == 0 and "read from the cache" in second.output
    assert "Anna Hummingbird" in second.output and "12 images, 3 classes" in second.output


def test_inspect_shows_attribute_levels(dialog_tree, tmp_path):
    result = cli("inspect", f"celeba-dialog:{dialog_tree}", "-r", "8", "--grid", str(tmp_path / "g.png"))
    assert result.exit_code == 0, result.output
    assert "Smiling" in result.output and "No_Beard" in result.output


def test_inspect_reports_unreadable_files(imagefolder_tree, tmp_path):
    (imagefolder_tree / "train" / "BMW M3 Coupe 2012" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    result = cli("inspect", f"imagefolder:{imagefolder_tree}", "-r", "8", "--grid", str(tmp_path / "g.png"))
    assert result.exit_code == 0 and "Unreadable files skipped: 1" in result.output
    strict = cli("inspect", f"imagefolder:{imagefolder_tree}", "-r", "8", "--strict")
    assert "1 image file could not be read" in one_sentence_error(strict)


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "cub:/no/such/folder"], "/no/such/folder does not exist"),
        (["inspect", "bogus:/x"], "Unknown dataset format 'bogus'"),
        (["inspect", "digits", "--split", "official"], "no official split"),
        (["inspect", "digits", "-r", "0", "--shots-per-class", "-3"], "shots_per_class must be 0"),
        (["classes", "digits", "--search", "seventeen"], "No class named 'seventeen'"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_1(args, message):
    assert message in one_sentence_error(cli(*args))


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
def test_bad_values_in_any_command_are_one_sentence_and_exit_1(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert message in error_line(cli(*args))


@pytest.mark.parametrize("args, message", [
    (["train", "--set", "sampling.steps=0", "--dry-run"], "sampling.steps must be positive."),
    (["train", "--set", "sampling.images_per_shard=0", "--dry-run"], "sampling.images_per_shard must be positive."),
    (["generate", "--class", "3", "--num", "2", "--steps", "0"], "sampling.steps must be positive."),
    (["generate", "--class", "3", "--num", "2", "--shard-size", "0"], "sampling.images_per_shard must be positive."),
    (["generate", "--class", "3", "--num", "2", "--batch-size", "0"], "sampling.batch_size must be positive."),
])
def test_zero_steps_and_shard_sizes_are_one_sentence(digits_run, tmp_path, args, message):
    if args[0] == "generate":
        args = [*args, "--run", digits_run.path, "--out", tmp_path / "o"]
    assert error_line(cli(*args)) == f"Error: {message}"
    assert not (tmp_path / "o").exists()


def test_classes_lists_and_searches(cub_tree):
    result = cli("classes", f"cub:{cub_tree}")
    assert result.exit_code == 0 and "Laysan Albatross" in result.output and "3 of 3 classes" in result.output
    result = cli("classes", f"cub:{cub_tree}", "--search", "albatross")
    assert "2 of 3 classes" in result.output and "Anna" not in result.output


def test_classes_misspelt_suggests_the_right_one(cub_tree):
    line = one_sentence_error(cli("classes", f"cub:{cub_tree}", "--search", "Lysan Albatros"))
    assert "did you mean 'Laysan Albatross'" in line


def test_classes_without_a_match_suggests_a_command_that_works(cub_tree):
    spaced = cub_tree.rename(cub_tree.parent / "CUB 200")
    line = one_sentence_error(cli("classes", f"cub:{spaced}", "--search", "zzzz"))
    suggested = re.search(r"run `(.*?)` to list them", line).group(1)
    assert suggested == f"synthaug classes 'cub:{spaced}'"
    listed = cli(*shlex.split(suggested)[1:])
    assert listed.exit_code == 0 and "3 of 3 classes" in listed.output
    assert "run `synthaug classes digits`" in one_sentence_error(cli("classes", "digits", "--search", "zzzz"))


@pytest.mark.data
def test_inspect_real_cub(shared_data, tmp_path):
    grid = tmp_path / "cub.png"
    result = cli("inspect", f"cub:{shared_data / 'cub100'}", "--resolution", "64", "--grid", str(grid))
    assert result.exit_code == 0, result.output
    assert "5902 images, 100 classes, 64x64 px" in result.output
    assert grid.exists()
    assert "read from the cache" in cli("inspect", f"cub:{shared_data / 'cub100'}", "--resolution", "64",
                                         "--grid", str(grid)).output


@pytest.mark.data
def test_classes_real_nabirds_species(real_nabirds_tree):
    result = cli("classes", f"nabirds:{real_nabirds_tree}", "--search", "allen's hummingbird")
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"228\s.*Allen's Hummingbird", out)
    assert "380 Allen's Hummingbird (Adult Male)" in out and "679 Allen's Hummingbird (Female, immature)" in out
    line = one_sentence_error(cli("classes", f"nabirds:{real_nabirds_tree}", "--search", "Alens Humingbird"))
    assert "Allen's Hummingbird" in line


# -- recipes checked at load, through the command line -----------------------------------------

@pytest.mark.parametrize(
    "setting, message",
    [
        ("generator.preset=huge", "generator.preset 'huge' is not known; use one of tiny, small, base."),
        ("generator.prediction=x0", "generator.prediction 'x0' is not known; use one of epsilon, v."),
        ("generator.loss=l3", "generator.loss 'l3' is not known; use one of mse, l1."),
        ("generator.condition=bogus", "generator.condition 'bogus' is not known; use one of auto, class, attributes."),
        ("data.split=sideways", "data.split 'sideways' is not known; use one of auto, official, stratified."),
        ("data.level=genus", "data.level 'genus' is not known; use one of category, species."),
        ("genrator.lr=1e-3", "Unknown recipe key 'genrator'; did you mean 'generator'?"),
    ],
)
def test_train_dry_run_rejects_bad_recipe_values(setting, message):
    assert one_sentence_error(cli("train", "--set", setting, "--dry-run")) == f"Error: {message}"


def test_train_minutes_sets_the_time_budget_and_bad_budgets_are_one_sentence():
    result = cli("train", "--minutes", "2.5", "--dry-run")
    assert result.exit_code == 0 and "duration_minutes = 2.5" in result.output
    assert one_sentence_error(cli("train", "--minutes", "-1", "--dry-run")) == (
        "Error: generator.duration_minutes must be 0 (train for duration_kimg) or a positive number of minutes.")
    for bad in ("inf", "nan", "1e400"):
        assert one_sentence_error(cli("train", "--minutes", bad, "--dry-run")).startswith(
            "Error: generator.duration_minutes must be a finite number")


def test_train_dry_run_rejects_schedule_keys_for_sd_lora():
    line = one_sentence_error(cli("train", "--set", "generator.backend=sd-lora", "--set", "generator.base_model=/m",
                                  "--set", "generator.schedule=linear", "--dry-run"))
    assert line == ("Error: generator.schedule is not used by the sd-lora backend, which keeps its base model's noise "
                    "schedule; remove it.")


def test_train_fresh_with_a_bad_value_keeps_the_run(tmp_path):
    """A bad value is refused when the recipe is read, before --fresh deletes anything (issue 13, item 2)."""
    run_dir = tmp_path / "run"
    for name in ("log.jsonl", "model/weights.bin", "state/state.json", "grids/g.png"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("kept")
    line = one_sentence_error(cli("train", "--fresh", "--out", str(run_dir), "--set", "generator.preset=huge"))
    assert "generator.preset 'huge' is not known" in line
    assert all((run_dir / name).read_text() == "kept" for name in ("log.jsonl", "model/weights.bin", "state/state.json"))


def test_train_out_sets_the_run_folder_and_wins_over_set_run_dir(tmp_path):
    result = cli("train", "--set", f"run_dir={tmp_path / 'from-set'}", "--out", str(tmp_path / "from-out"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert f'run_dir = "{tmp_path / "from-out"}"' in result.output and "from-set" not in result.output
    assert not (tmp_path / "from-out").exists()  # a dry run writes nothing


# -- paths checked before any work --------------------------------------------------------------

@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


def test_paths_that_are_files_or_missing_name_the_real_problem(a_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        (["train", "--out", a_file], f"Error: --out {a_file} is a file, not a folder; choose a folder (it may not exist yet)."),
        (["train", "--out", a_file / "run"],
         f"Error: Could not write or read {a_file / 'run'}: {a_file} is a file, not a folder; choose another --out path."),
        (["train", "--set", f"run_dir={a_file}"], f"Error: run_dir {a_file} is a file, not a folder; choose a folder"),
        (["train", tmp_path], f"Error: {tmp_path} is a folder, not a recipe file; give a .toml path"),
        (["generate", "--out", a_file, "--class", "3", "--num", "2"], f"Error: --out {a_file} is a file, not a folder"),
        (["generate", "--out", a_file / "o", "--class", "3", "--num", "2"], f"{a_file} is a file, not a folder"),
        (["generate", "--out", "o", "--run", a_file, "--class", "3", "--num", "2"],
         f"Error: --run {a_file} is a file, not a run folder; give the folder that synthaug train wrote"),
        (["inspect", "digits", "--grid", a_file / "g.png"],
         f"Error: Could not write or read {a_file / 'g.png'}: {a_file} is a file, not a folder; choose another --grid path."),
        (["inspect", "digits", "--grid", tmp_path], f"Error: --grid {tmp_path} is a folder; give the path of the file to write."),
        (["verify", tmp_path / "missing"], f"Error: {tmp_path / 'missing'} does not exist; give a folder written by synthaug generate."),
        (["verify", a_file], f"Error: {a_file} is a file, not a folder; give a folder written by synthaug generate."),
        (["evaluate", "--synthetic", a_file], f"Error: {a_file} is a file, not a folder; give a folder written by synthaug generate."),
        (["evaluate", "--synthetic", tmp_path / "missing"], f"Error: {tmp_path / 'missing'} does not exist;"),
    ]
    for args, message in cases:
        line = one_sentence_error(cli(*[str(a) for a in args]))
        assert message in line, (args, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing was created


def test_a_read_only_output_folder_is_refused_before_training(tmp_path, monkeypatch):
    import synthaug.cli

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    # root may write anywhere, so the test plays a user without write permission on the folder
    monkeypatch.setattr(synthaug.cli.os, "access", lambda path, mode: Path(path) != read_only)
    line = one_sentence_error(cli("train", "--out", str(read_only / "run")))
    assert line == (f"Error: Could not write or read {read_only / 'run'}: the folder {read_only} is read-only; "
                    "choose a writable --out path.")
    assert list(read_only.iterdir()) == []


def test_a_library_error_names_its_arguments_and_the_command_line_its_flags():
    from synthaug import SynthaugError
    from synthaug.cli import FLAGS, flag_names

    e = SynthaugError("{num} and {per_class} must be positive; see {classes} and {other}.", arguments=("num", "per_class", "classes"))
    assert str(e) == "num and per_class must be positive; see classes and {other}."  # only the arguments it names
    assert e.sentence(FLAGS["generate"]) == "--num and --per-class must be positive; see --class and {other}."
    assert e.sentence(FLAGS["inspect"]) == str(e)  # a command without such flags prints the library's names
    assert SynthaugError("{num} is a word here").sentence(FLAGS["generate"]) == "{num} is a word here"
    # train's run folder is --out only when --out was given; else the recipe key run_dir (from the recipe or --set)
    assert flag_names("train", {"out": Path("r")}) == {"run_dir": "--out"} and flag_names("train", {"out": None}) == {}


def test_the_library_refuses_the_same_paths_itself_naming_its_arguments(a_file, tmp_path, digits_run, monkeypatch):
    """The checks the commands rely on belong to the library functions they protect: a library caller gets them too,
    in sentences that name the library's arguments (the commands print their flags: see the test above this one)."""
    from synthaug import SynthaugError
    from synthaug.benchmark import evaluate_synthetic, run_benchmark
    from synthaug.data import DataConfig
    from synthaug.generator.train import train_generator
    from synthaug.inspection import inspect_dataset
    from synthaug.recipe import load_recipe
    from synthaug.shards import verify_shards
    from synthaug.synthesis import write_shards

    give = "give a folder written by synthaug generate"
    cases = [
        (lambda: train_generator(load_recipe(None, [f"run_dir={a_file}"])),
         f"run_dir {a_file} is a file, not a folder; choose a folder (it may not exist yet)."),
        (lambda: train_generator(load_recipe(None, [f"run_dir={a_file / 'run'}"])),
         f"Could not write or read {a_file / 'run'}: {a_file} is a file, not a folder; choose another run_dir path."),
        (lambda: run_benchmark(load_recipe(None, [f"run_dir={tmp_path / 'r'}"]), out=a_file),
         f"out {a_file} is a file, not a folder; choose a folder (it may not exist yet)."),
        (lambda: write_shards(digits_run.path, a_file, ["3"], num=2), f"out {a_file} is a file, not a folder;"),
        (lambda: write_shards(a_file, tmp_path / "o", ["3"], num=2),
         f"generator {a_file} is a file, not a run folder; give the folder that synthaug train wrote (e.g. runs/digits)."),
        (lambda: inspect_dataset(DataConfig(spec="digits"), grid=tmp_path), f"grid {tmp_path} is a folder; give the path of the file to write."),
        (lambda: inspect_dataset(DataConfig(spec="digits"), grid=a_file / "g.png"),
         f"Could not write or read {a_file / 'g.png'}: {a_file} is a file, not a folder; choose another grid path."),
        (lambda: verify_shards(tmp_path / "missing"), f"{tmp_path / 'missing'} does not exist; {give}."),
        (lambda: verify_shards(a_file), f"{a_file} is a file, not a folder; {give}."),
        (lambda: evaluate_synthetic(a_file), f"{a_file} is a file, not a folder; {give}."),
    ]
    for call, message in cases:
        with pytest.raises(SynthaugError) as e:
            call()
        assert str(e.value).startswith(message), (message, str(e.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing was created
    # evaluate: a set it could not write its results into, refused before any work
    read_only = tmp_path / "s"
    read_only.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != read_only or not mode & os.W_OK)
    with pytest.raises(SynthaugError, match=f"^{re.escape(str(read_only))} is read-only, and evaluate writes evaluation.json"):
        evaluate_synthetic(read_only)


def test_evaluate_of_a_moved_dataset_names_data_in_the_library_and_data_flag_at_the_command_line(tmp_path):
    import json

    from synthaug import SynthaugError
    from synthaug.benchmark import evaluate_synthetic
    from synthaug.shards import MANIFEST_FORMAT

    gone = tmp_path / "cars"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "data": {"spec": f"imagefolder:{gone}"},
                                                              "schema": {"dataset": f"imagefolder:{gone}"}}))
    moved = f"The dataset {tmp_path / 's'} was drawn from, imagefolder:{gone}, is no longer at {gone}; pass "
    with pytest.raises(SynthaugError) as e:
        evaluate_synthetic(tmp_path / "s")
    assert str(e.value) == moved + "data imagefolder:PATH with its new place."
    assert one_sentence_error(cli("evaluate", "--synthetic", str(tmp_path / "s"))) == (
        f"Error: {moved}--data imagefolder:PATH with its new place.")


def test_unwritable_output_is_one_sentence(digits_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = cli("generate", "--run", digits_run.path, "--class", "4", "--num", "2", "--out", blocker / "out")
    line = error_line(result)
    assert "Could not write or read" in line and "a-file" in line


def test_a_read_only_out_folder_is_refused_by_generate_before_any_work(digits_run, tmp_path, monkeypatch):
    import synthaug.cli

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    monkeypatch.setattr(synthaug.cli.os, "access", lambda path, mode: Path(path) != read_only)  # root may write anywhere
    line = error_line(cli("generate", "--run", digits_run.path, "--class", "3", "--num", "2", "--out", read_only / "s"))
    assert line == f"Error: Could not write or read {read_only / 's'}: the folder {read_only} is read-only; choose a writable --out path."
    assert list(read_only.iterdir()) == []


def test_evaluate_of_a_read_only_set_is_refused_before_any_work(tmp_path, monkeypatch):
    import synthaug.benchmark.evaluate
    import synthaug.cli

    # evaluate_synthetic refuses it itself, before its first work (reading the set)
    monkeypatch.setattr(synthaug.benchmark.evaluate, "load_shard_set", lambda *a, **k: pytest.fail("refused before evaluating"))
    # root may write anywhere: the test plays a user who may read the folder but not write it
    monkeypatch.setattr(synthaug.cli.os, "access", lambda path, mode: Path(path) != tmp_path or not mode & os.W_OK)
    line = error_line(cli("evaluate", "--synthetic", tmp_path))
    assert line == (f"Error: {tmp_path} is read-only, and evaluate writes evaluation.json and memorization.png into it; make it "
                    "writable, or copy the set to a writable folder and evaluate the copy.")


def test_os_errors_keep_the_free_space_advice_only_where_it_helps():
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
        sentence = os_error_sentence(OSError(code, os.strerror(code), "/x/out"))
        assert sentence.startswith(f"Could not write or read /x/out: {os.strerror(code)}; free space or choose a writable folder")
    for code in (errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EIO):
        assert "free space" not in os_error_sentence(OSError(code, os.strerror(code), "/x/out"))


def test_an_os_error_inside_a_command_names_the_file_in_the_way(a_file, monkeypatch):
    import synthaug.data

    def not_a_directory(*args, **kwargs):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(a_file / "cache" / "x.npz"))

    monkeypatch.setattr(synthaug.data, "load_dataset", not_a_directory)
    line = one_sentence_error(cli("inspect", "digits"))
    assert line == f"Error: Could not write or read {a_file / 'cache' / 'x.npz'}: {a_file} is a file, not a folder; choose another path."


# -- output ---------------------------------------------------------------------------------------

def test_count_writes_the_noun_in_the_singular_for_one():
    assert [count(n, "class") for n in (0, 1, 2)] == ["0 classes", "1 class", "2 classes"]
    assert [count(n, "shard") for n in (1, 3)] == ["1 shard", "3 shards"]
    assert count(1, "synthetic image") == "1 synthetic image"


def test_generate_and_verify_say_1_image_in_1_shard(digits_run, tmp_path):
    result = cli("generate", "--run", str(digits_run.path), "--class", "3", "--num", "1", "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    assert f"1 image in 1 shard in {tmp_path / 's'}" in result.output
    assert "1 shard, 1 sample read." in cli("verify", str(tmp_path / "s")).output


def test_evaluate_output_starts_with_its_table_and_labels_the_judge_on_its_own(tmp_path, monkeypatch):
    import synthaug.benchmark

    def evaluated(folder, data=None, benchmark=None):
        for name in ("judge", "CAS seed 0", "CAS seed 1"):  # the transient bars a real evaluation draws
            with progress.task(name, 2, transient=True) as bar:
                bar.advance(2)
        return {"synthetic_images": 1, "dataset": "digits", "cas_top1": None,
                "quality": {"n": 20, "fid": 50.0, "floor_fid": 30.0, "kid": 0.01, "kid_std": 0.002, "floor_kid": 0.001,
                            "conditioning": {"accuracy": 0.875}},
                "judge": {"model": "test_resnet", "trained_on": "every real training image", "test_score": {"top1": 0.9612}}}

    monkeypatch.setattr(synthaug.benchmark, "evaluate_synthetic", evaluated)
    result = cli("evaluate", "--synthetic", str(tmp_path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].strip() == "1 synthetic image vs digits (n = 20 per side)", result.output
    conditioning = next(line for line in lines if "conditioning accuracy" in line)
    assert "87.5" in conditioning and "96.1" not in conditioning  # the judge's own score is not a floor
    assert ("Conditioning accuracy is judged by a test_resnet trained on every real training image; it scores 96.1% "
            "top-1 on the real test split.") in result.output


def test_evaluate_of_variations_names_the_half_judges_and_the_memorization_verdict(tmp_path, monkeypatch):
    import synthaug.benchmark

    def evaluated(folder, data=None, benchmark=None):
        judges = {"cross_fitted": 8, "full_judge": 0, "real_test_top1": 0.55, "half_judges_test_top1": [0.5, 0.6]}
        return {"synthetic_images": 8, "dataset": "digits", "cas_top1": None,
                "quality": {"n": 8, "fid": 50.0, "floor_fid": 30.0, "kid": 0.01, "kid_std": 0.002, "floor_kid": 0.001,
                            "conditioning": {"accuracy": 0.875, "judges": judges},
                            "memorization": {"verdict": "0.0% of the variations are closer [...]: no sign of copying."}},
                "judge": {"model": "test_resnet", "trained_on": "every real training image", "test_score": {"top1": 0.9612}}}

    monkeypatch.setattr(synthaug.benchmark, "evaluate_synthetic", evaluated)
    result = cli("evaluate", "--synthetic", str(tmp_path))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "The 8 real-guided variations are judged by two cross-fitted test_resnets" in text and "50.0% and 60.0%" in text
    assert "trained on every real training image" not in text  # no plain sample was scored by the full judge
    assert "Memorization: 0.0% of the variations are closer [...]: no sign of copying." in text
