"""The command line end to end through Typer's CliRunner: output, files, exit codes, error sentences."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from synthaug import __version__
from synthaug.cli import app

runner = CliRunner()


def run(*args):
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert "Traceback" not in result.output, result.output
    return result


def one_sentence_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_version_and_help():
    assert run("--version").output.strip() == f"synthaug {__version__}"
    result = run("--help")
    assert result.exit_code == 0
    for name in ("datasets", "inspect", "classes"):
        assert name in result.output
    assert run("inspect", "--help").exit_code == 0


def test_datasets_lists_every_format():
    result = run("datasets")
    assert result.exit_code == 0
    for name in ("digits", "imagefolder", "cub", "nabirds", "stanford-cars", "celeba", "celeba-dialog"):
        assert re.search(rf"\b{name}\b", result.output)


def test_inspect_digits_writes_a_grid(tmp_path):
    grid = tmp_path / "grid.png"
    result = run("inspect", "digits", "--grid", str(grid))
    assert result.exit_code == 0, result.output
    assert "1797 images, 10 classes, 8x8 px" in result.output
    assert "stratified" in result.output
    from PIL import Image

    assert max(Image.open(grid).size) >= 512  # small images are upscaled to be seen


def test_inspect_uses_the_cache_the_second_time(cub_tree, tmp_path):
    first = run("inspect", f"cub:{cub_tree}", "-r", "16", "--grid", str(tmp_path / "g.png"))
    assert first.exit_code == 0 and "decoded and cached" in first.output
    second = run("inspect", f"cub:{cub_tree}", "-r", "16", "--grid", str(tmp_path / "g.png"))
    assert second.exit_code == 0 and "read from the cache" in second.output
    assert "Anna Hummingbird" in second.output and "12 images, 3 classes" in second.output


def test_inspect_shows_attribute_levels(dialog_tree, tmp_path):
    result = run("inspect", f"celeba-dialog:{dialog_tree}", "-r", "8", "--grid", str(tmp_path / "g.png"))
    assert result.exit_code == 0, result.output
    assert "Smiling" in result.output and "No_Beard" in result.output


def test_inspect_reports_unreadable_files(imagefolder_tree, tmp_path):
    (imagefolder_tree / "train" / "BMW M3 Coupe 2012" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    result = run("inspect", f"imagefolder:{imagefolder_tree}", "-r", "8", "--grid", str(tmp_path / "g.png"))
    assert result.exit_code == 0 and "Unreadable files skipped: 1" in result.output
    strict = run("inspect", f"imagefolder:{imagefolder_tree}", "-r", "8", "--strict")
    assert "1 image files could not be read" in one_sentence_error(strict)


@pytest.mark.parametrize(
    "args, message",
    [
        (["inspect", "cub:/no/such/folder"], "/no/such/folder does not exist"),
        (["inspect", "bogus:/x"], "Unknown dataset format 'bogus'"),
        (["inspect", "digits", "--split", "sideways"], "Split 'sideways' is not known"),
        (["inspect", "digits", "--split", "official"], "no official split"),
        (["inspect", "digits", "-r", "0", "--shots-per-class", "-3"], "shots_per_class must be 0"),
        (["classes", "digits", "--search", "seventeen"], "No class named 'seventeen'"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_1(args, message):
    assert message in one_sentence_error(run(*args))


def test_classes_lists_and_searches(cub_tree):
    result = run("classes", f"cub:{cub_tree}")
    assert result.exit_code == 0 and "Laysan Albatross" in result.output and "3 of 3 classes" in result.output
    result = run("classes", f"cub:{cub_tree}", "--search", "albatross")
    assert "2 of 3 classes" in result.output and "Anna" not in result.output


def test_classes_misspelt_suggests_the_right_one(cub_tree):
    line = one_sentence_error(run("classes", f"cub:{cub_tree}", "--search", "Lysan Albatros"))
    assert "did you mean 'Laysan Albatross'" in line


@pytest.mark.data
def test_inspect_real_cub(shared_data, tmp_path):
    grid = tmp_path / "cub.png"
    result = run("inspect", f"cub:{shared_data / 'cub100'}", "--resolution", "64", "--grid", str(grid))
    assert result.exit_code == 0, result.output
    assert "5902 images, 100 classes, 64x64 px" in result.output
    assert grid.exists()
    assert "read from the cache" in run("inspect", f"cub:{shared_data / 'cub100'}", "--resolution", "64",
                                         "--grid", str(grid)).output


@pytest.mark.data
def test_classes_real_nabirds_species(real_nabirds_tree):
    result = run("classes", f"nabirds:{real_nabirds_tree}", "--search", "allen's hummingbird")
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"228\s.*Allen's Hummingbird", out)
    assert "380 Allen's Hummingbird (Adult Male)" in out and "679 Allen's Hummingbird (Female, immature)" in out
    line = one_sentence_error(run("classes", f"nabirds:{real_nabirds_tree}", "--search", "Alens Humingbird"))
    assert "Allen's Hummingbird" in line
