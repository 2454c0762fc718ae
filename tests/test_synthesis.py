"""Real-guided variations (--from-real) and confidence filtering (--min-confidence): what they draw, what
they record, that they stay exact and resumable, and that no real image outside the run's subset is used."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, count_reads, tiny_recipe
from synthaug import SynthaugError
from synthaug.generator import Generator
from synthaug.generator.train import train_generator
from synthaug.recipe import SamplingConfig
from synthaug.shards import read_manifest, read_shard, verify_shards
from synthaug.synthesis import GenerateRequest, generate_shards, write_shards

SAMPLING = SamplingConfig(steps=4, network_batch=8, batch_size=16, images_per_shard=5)


def metas(folder) -> list[dict]:
    return [json.loads(s["json"]) for shard in read_manifest(folder)["shards"] for s in read_shard(folder / shard["name"])]


def pixels(folder) -> dict[str, np.ndarray]:
    import io

    return {s["__key__"]: np.asarray(Image.open(io.BytesIO(s["png"])))
            for shard in read_manifest(folder)["shards"] for s in read_shard(folder / shard["name"])}


@pytest.fixture(scope="module")
def gen(digits_run):
    return Generator.load(digits_run.path, device="cpu")


def test_variations_start_from_the_runs_own_real_images_and_record_them(gen, digits_run, tmp_path):
    out = tmp_path / "v"
    request = GenerateRequest(classes=("3", "8"), per_class=7, from_real=True, strengths=(0.3, 0.6))
    manifest = generate_shards(gen, request, out, SAMPLING)
    assert manifest["num_samples"] == 14 and verify_shards(out)["ok"]
    train = digits_run.training_images()
    seen = metas(out)
    for m in seen:
        assert train.sources[m["source_index"]] == m["source"]  # the dataset-relative file and its row in the split
        assert train.labels[m["source_index"]] == m["label"]  # a variation of its own class
        assert m["strength"] in (0.3, 0.6) and m["steps_run"] == int(4 * m["strength"])
    threes = [m for m in seen if m["class_name"] == "3"]
    assert len({m["source"] for m in threes}) == 7  # a first pass varies every source once (there are ~130 threes)
    assert {m["strength"] for m in threes} == {0.3, 0.6}  # a mix
    assert read_manifest(out)["settings"]["from_real"]["train_sources_sha256"] == gen.schema.train_sources_sha256


def test_sources_are_cycled_in_a_seeded_order_that_gives_each_source_every_strength(tmp_path, cub_tree):
    run = train_generator(tiny_recipe(tmp_path / "run", f"data.spec=cub:{cub_tree}", "data.resolution=8",
                                      "generator.batch_size=8", "generator.duration_kimg=0.016", "data.val_fraction=0"))
    gen = Generator.load(run.path, device="cpu")
    out = tmp_path / "v"
    generate_shards(gen, GenerateRequest(classes=("Anna_Hummingbird",), per_class=4, from_real=True, strengths=(0.3, 0.6)),
                    out, SAMPLING)
    seen = sorted(metas(out), key=lambda m: m["index"])
    assert [m["source"] for m in seen[:2]] == [m["source"] for m in seen[2:]]  # 2 training images, cycled
    assert [m["strength"] for m in seen] == [0.3, 0.6, 0.6, 0.3]  # the second pass swaps the strengths


def test_a_strength_near_zero_keeps_the_source_and_one_is_plain_generation(gen, digits_run):
    train = digits_run.training_images()
    rows = np.flatnonzero(train.labels == 5)[:6]
    sources = train.images[rows]
    sampling = SAMPLING.replace(steps=20)
    conds = gen.resolve_classes(["5"]) * 6
    seeds = list(range(6))
    close, steps_run = gen.vary_conditions(sources, conds, [0.05] * 6, seeds, sampling)
    assert steps_run == [1] * 6
    plain = gen.sample_conditions(conds, seeds, sampling)
    near = np.abs(close.astype(int) - sources.astype(int)).mean()
    far = np.abs(plain.astype(int) - sources.astype(int)).mean()
    assert near < far / 3 and near < 20, (near, far)
    full, steps_run = gen.vary_conditions(sources, conds, [1.0] * 6, seeds, sampling)
    np.testing.assert_array_equal(full, plain)  # strength 1: the same seed's noise, the same image
    assert steps_run == [20] * 6


def test_variations_do_not_depend_on_the_batch_size(gen, tmp_path):
    request = GenerateRequest(classes=("1", "2"), per_class=5, from_real=True, strengths=(0.5, 0.8))
    a = generate_shards(gen, request, tmp_path / "a", SAMPLING.replace(batch_size=3))
    b = generate_shards(gen, request, tmp_path / "b", SAMPLING.replace(batch_size=16))
    assert a["shards"] == b["shards"]  # byte-identical shards


def test_vary_api(gen, digits_run):
    train = digits_run.training_images()
    images = torch.from_numpy(train.images[:3]).permute(0, 3, 1, 2)
    out = gen.vary(images, [str(label) for label in train.labels[:3]], strength=0.5, seed=1, steps=4)
    assert out.shape == (3, 1, 8, 8) and out.dtype == torch.uint8
    assert torch.equal(out, gen.vary(images, [str(label) for label in train.labels[:3]], strength=0.5, seed=1, steps=4))
    with pytest.raises(SynthaugError, match="3 images and 2 conditions"):
        gen.vary(images, ["1", "2"])
    with pytest.raises(SynthaugError, match="strength must lie in"):
        gen.vary(images, ["1", "2", "3"], strength=0)
    with pytest.raises(SynthaugError, match="uint8 images of 8x8 px"):
        gen.vary(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), ["1"])


def test_a_dataset_that_changed_since_training_gives_no_source(tmp_path, imagefolder_tree):
    run = train_generator(tiny_recipe(tmp_path / "run", f"data.spec=imagefolder:{imagefolder_tree}", "data.resolution=8",
                                      "generator.batch_size=8", "generator.duration_kimg=0.016"))
    extra = imagefolder_tree / "train" / "BMW M3 Coupe 2012" / "new.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(extra)  # a real image the generator never saw
    with pytest.raises(SynthaugError, match="are no longer the ones .* was trained on"):
        write_shards(run.path, tmp_path / "v", per_class=2, from_real=True)
    assert not (tmp_path / "v" / "manifest.json").exists()


def test_filtering_keeps_confident_images_and_counts_what_it_drew(gen, tmp_path):
    out = tmp_path / "f"
    request = GenerateRequest(classes=("0", "1"), per_class=6, min_confidence=0.2, max_draws=4)
    manifest = generate_shards(gen, request, out, SAMPLING, filter_config=FILTER)
    seen = metas(out)
    assert all(m["confidence"] >= 0.2 and 1 <= m["draws"] <= 4 for m in seen)
    counts = manifest["filter"]["per_class"]
    for name in ("0", "1"):
        c = counts[name]
        mine = [m for m in seen if m["class_name"] == name]
        assert c["kept"] == len(mine) == manifest["per_class"].get(name, 0) and c["planned"] == 6
        assert c["drawn"] == sum(m["draws"] for m in mine) + 4 * (6 - len(mine)) and c["rejected"] == c["drawn"] - c["kept"]
    assert manifest["filter"]["classifier"]["train_sources_sha256"] == gen.schema.train_sources_sha256
    assert verify_shards(out)["ok"]
    before = read_manifest(out)["shards"]
    again = generate_shards(gen, request, out, SAMPLING, filter_config=FILTER)  # the same command: the same kept set
    assert again["shards"] == before


def test_a_filter_nothing_passes_keeps_nothing_and_says_so(gen, tmp_path):
    out = tmp_path / "f"
    manifest = generate_shards(gen, GenerateRequest(classes=("4",), per_class=3, min_confidence=0.999999, max_draws=2), out,
                               SAMPLING, filter_config=FILTER)
    assert manifest["num_samples"] == 0 and manifest["filter"]["per_class"]["4"] == {"planned": 3, "kept": 0, "drawn": 6,
                                                                                      "rejected": 6}
    assert verify_shards(out)["ok"]


def test_filtered_kept_images_equal_the_unfiltered_first_draws(gen, tmp_path):
    generate_shards(gen, GenerateRequest(classes=("7",), per_class=5), tmp_path / "p", SAMPLING)
    generate_shards(gen, GenerateRequest(classes=("7",), per_class=5, min_confidence=0.05, max_draws=3), tmp_path / "f",
                    SAMPLING, filter_config=FILTER)
    plain, filtered, kept = pixels(tmp_path / "p"), pixels(tmp_path / "f"), metas(tmp_path / "f")
    assert any(m["draws"] == 1 for m in kept)
    for m in kept:
        key = f"c7-{m['index']:06d}"
        if m["draws"] == 1:  # accepted at its first draw: the very image an unfiltered run draws
            np.testing.assert_array_equal(filtered[key], plain[key])


def test_a_filtered_variation_set_reads_the_runs_recipe_and_condition_schema_once(digits_run, tmp_path, monkeypatch):
    """generate_shards opens the run once and passes it on (generator, real sources, filter key, filter classifier):
    recipe.toml and condition.json are read once each."""
    reads = count_reads(monkeypatch, digits_run.path, ("recipe.toml", "condition.json"))
    request = GenerateRequest(classes=("5",), per_class=2, from_real=True, min_confidence=0.05, max_draws=2)
    manifest = generate_shards(digits_run.path, request, tmp_path / "f", SAMPLING, device="cpu", filter_config=FILTER)
    assert manifest["filter"]["per_class"]["5"]["planned"] == 2
    assert sorted(reads) == ["condition.json", "recipe.toml"]


def test_cli_from_real_and_filter(digits_run, tmp_path):
    result = cli("generate", "--run", digits_run.path, "--class", "2", "--per-class", "3", "--from-real", "--strength", "0.3,0.6",
                 "--steps", "4", "--out", tmp_path / "v")
    assert result.exit_code == 0, result.output
    assert {m["strength"] for m in metas(tmp_path / "v")} == {0.3, 0.6}
    bad = cli("generate", "--run", digits_run.path, "--class", "2", "--num", "2", "--strength", "0.3", "--out", tmp_path / "x")
    assert bad.exit_code == 1 and "add --from-real" in bad.output
    for value, message in (("1.5", "--min-confidence must lie in [0, 1)"), ("-0.1", "--min-confidence must lie in [0, 1)")):
        bad = cli("generate", "--run", digits_run.path, "--class", "2", "--num", "2", "--min-confidence", value, "--out", tmp_path / "x")
        assert bad.exit_code == 1 and message in bad.output
    bad = cli("generate", "--run", digits_run.path, "--class", "2", "--num", "2", "--from-real", "--strength", "0,0.5", "--out",
              tmp_path / "x")
    assert bad.exit_code == 1 and "--strength must lie in (0, 1]" in bad.output
    assert not (tmp_path / "x" / "manifest.json").exists()


FILTER = None  # set below: a quick filter classifier for the tests


@pytest.fixture(autouse=True)
def _quick_filter():
    global FILTER
    from synthaug.classifier import ClassifierConfig

    FILTER = ClassifierConfig.from_benchmark(steps=30, batch_size=32, resolution=8)


def test_a_large_synthetic_set_is_streamed_into_a_memory_map(gen, tmp_path, monkeypatch):
    from synthaug.shards import load_shard_set

    out = tmp_path / "s"
    generate_shards(gen, GenerateRequest(classes=("1", "2"), per_class=6), out, SAMPLING)
    whole = load_shard_set(out)
    monkeypatch.setenv("SYNTHAUG_RESIDENT_BYTES", "0")  # every set counts as large
    streamed = load_shard_set(out)
    assert isinstance(streamed.images.base, np.memmap) and len(streamed.images) == 12
    np.testing.assert_array_equal(np.asarray(streamed.images), whole.images)
    assert streamed.labels.tolist() == whole.labels.tolist() and streamed.metas == whole.metas
    again = load_shard_set(out)  # decoded once: the second load maps the same file
    assert again.images.base.filename == streamed.images.base.filename


def test_the_filter_classifier_is_keyed_by_what_the_run_saw_not_only_file_names(digits_run, tmp_path):
    from synthaug.filtering import filter_key
    from synthaug.runs import Run

    schema = json.loads(digits_run.condition_file.read_text())
    run = Run(tmp_path / "r")
    run.path.mkdir()
    keys = []
    for change in ({}, {"train_pixels_sha256": "0" * 64}, {"train_labels_sha256": "0" * 64}):
        run.condition_file.write_text(json.dumps({**schema, **change}))
        keys.append(filter_key(run, FILTER))
    assert len(set(keys)) == 3  # retrained on other pixels or labels under the same names: another filter
    old = {k: v for k, v in schema.items() if k not in ("train_pixels_sha256", "train_labels_sha256", "train_location")}
    run.condition_file.write_text(json.dumps(old))
    text = json.dumps({"sources": schema["train_sources_sha256"], "config": dataclasses.asdict(FILTER)}, sort_keys=True)
    assert filter_key(run, FILTER) == hashlib.sha256(text.encode()).hexdigest()[:16]  # a run from before keeps its filter
