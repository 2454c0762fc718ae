"""Condition schemas (condition.json): a damaged one named and rewritten by train, and the training images a
schema records, against which a resumption on other images (another folder, files edited, added or removed) is
refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import TWO_STEPS, cli, copy_of, error_line, snapshot, tiny_recipe, write_image
from synthaug import SynthaugError
from synthaug.conditions import ConditionSchema
from synthaug.generator.train import train_generator
from synthaug.runs import Run


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


# -- resuming on other images --------------------------------------------------------------------------

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
