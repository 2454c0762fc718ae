"""generate: shards read back with webdataset, manifest, reproducible bytes, resume, species, CLI errors, and out
folders in the wrong place."""

from __future__ import annotations

import json

import pytest
import webdataset as wds

from conftest import TINY, cli, count_reads, error_line, files_of, tiny_recipe
from synthaug import SynthaugError
from synthaug.files import exclusive_lock, sha256_file
from synthaug.generator import Generator
from synthaug.synthesis import GenerateRequest, generate_shards, write_shards
from synthaug.generator.train import train_generator
from synthaug.recipe import SamplingConfig
from synthaug.shards import (describe_shard, encode_png, encode_sample, partial_name, read_manifest, read_shard, verify_shards,
                             write_shard)



def sampling(**kw) -> SamplingConfig:
    return SamplingConfig(**{"steps": 3, "network_batch": 8, "batch_size": 16, "images_per_shard": 4, **kw})


def read_back(folder):
    urls = sorted(str(p) for p in folder.glob("synth-*.tar"))
    return list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8"))


def test_shards_read_back_with_webdataset(digits_run, tmp_path):
    out = tmp_path / "s"
    manifest = generate_shards(digits_run.path, GenerateRequest(classes=("3", "7"), num=10), out, sampling())
    samples = read_back(out)
    assert len(samples) == 10 and manifest["num_samples"] == 10
    assert sorted(s["cls"] for s in samples) == [3] * 5 + [7] * 5
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == 10 and all("." not in k for k in keys) and "c3-000004" in keys
    meta = samples[0]["json"]
    for field in ("class_name", "class_id", "seed", "sampler", "steps", "guidance", "run_id", "weights_sha256", "synthaug"):
        assert field in meta
    assert meta["sampler"] == "dpm++2m" and meta["steps"] == 3 and len(meta["weights_sha256"]) == 64
    assert samples[0]["png"].shape == (8, 8, 3)  # webdataset's rgb8 decode of our 1-channel PNG
    # manifest: every shard with its count and sha256, totals per class
    assert [s["name"] for s in manifest["shards"]] == ["synth-000000.tar", "synth-000001.tar", "synth-000002.tar"]
    assert [s["count"] for s in manifest["shards"]] == [4, 4, 2]
    for s in manifest["shards"]:
        assert sha256_file(out / s["name"]) == s["sha256"]
    assert manifest["per_class"] == {"3": 5, "7": 5}
    assert read_manifest(out)["run"]["weights_sha256"] == meta["weights_sha256"]
    # shards mix classes (round-robin), so a shard-level shuffle still sees every class
    assert {json.loads(s["json"])["class_name"] for s in read_shard(out / "synth-000000.tar")} == {"3", "7"}


def test_regenerating_a_sample_by_its_seed_reproduces_its_bytes(digits_run, tmp_path):
    out = tmp_path / "s"
    generate_shards(digits_run.path, GenerateRequest(classes=("3",), num=6), out, sampling())
    sample = read_shard(out / "synth-000001.tar")[1]
    meta = json.loads(sample["json"])
    gen = Generator.load(digits_run.path, device="cpu")
    cond = gen.resolve_classes([meta["class_name"]])[0]
    again = gen.sample_conditions([cond], [meta["seed"]], sampling(batch_size=1))
    assert encode_png(again[0]) == sample["png"]


def test_shards_are_byte_identical_whatever_the_batch_size(digits_run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_shards(digits_run.path, GenerateRequest(classes=("1", "2"), num=6), a, sampling(batch_size=16))
    generate_shards(digits_run.path, GenerateRequest(classes=("1", "2"), num=6), b, sampling(batch_size=1))
    for name in ("synth-000000.tar", "synth-000001.tar"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_interrupted_generate_completes_with_every_sample_once(digits_run, tmp_path):
    out = tmp_path / "s"
    request = GenerateRequest(classes=("0", "5"), num=10)
    full = generate_shards(digits_run.path, request, out, sampling())
    # simulate a kill while shard 1 was being written: only its partial file exists, no manifest
    data = (out / "synth-000001.tar").read_bytes()
    (out / "synth-000001.tar").unlink()
    (out / partial_name(1)).write_bytes(data[: len(data) // 3])
    (out / "manifest.json").unlink()
    again = generate_shards(digits_run.path, request, out, sampling())
    keys = [s["__key__"] for s in read_back(out)]
    assert sorted(keys) == sorted({k for k in keys}) and len(keys) == 10
    assert not (out / partial_name(1)).exists()
    assert again["shards"] == full["shards"]  # the same bytes as the uninterrupted run


def test_a_different_generation_into_the_same_folder_is_refused(digits_run, tmp_path):
    out = tmp_path / "s"
    generate_shards(digits_run.path, GenerateRequest(classes=("3",), num=4), out, sampling())
    with pytest.raises(SynthaugError, match=r"holds a generation with different settings \(guidance\)"):
        generate_shards(digits_run.path, GenerateRequest(classes=("3",), num=4), out, sampling(guidance=4.0))
    manifest = generate_shards(digits_run.path, GenerateRequest(classes=("3",), num=4), out, sampling(guidance=4.0),
                               overwrite=True)
    assert manifest["settings"]["guidance"] == 4.0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SynthaugError, match="is not empty and holds no synthaug generation"):
        generate_shards(digits_run.path, GenerateRequest(classes=("3",), num=4), tmp_path / "other", sampling())


def test_species_resolves_to_nabirds_categories(nabirds_tree, tmp_path):
    recipe = tiny_recipe(tmp_path / "birds", f"data.spec=nabirds:{nabirds_tree}", "data.resolution=8",
                         "generator.batch_size=8", "generator.duration_kimg=0.016")
    run = train_generator(recipe)
    out = tmp_path / "s"
    manifest = generate_shards(run.path, GenerateRequest(species=("allen's hummingbird",), num=6), out, sampling())
    assert manifest["per_class"] == {"Allen's Hummingbird (Adult Male)": 3, "Allen's Hummingbird (Female, immature)": 3}
    metas = [s["json"] for s in read_back(out)]
    assert sorted({m["class_id"] for m in metas}) == [380, 679]


def test_cli_train_then_generate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sets = [arg for item in TINY for arg in ("--set", item)]
    result = cli("train", *sets)
    assert result.exit_code == 0, result.output
    assert 'spec = "digits"' in result.output and "Trained runs/digits" in result.output
    result = cli("generate", "--class", "3", "--num", "5", "--out", "s", "--shard-size", "2")
    assert result.exit_code == 0, result.output
    assert "Using the run runs/digits" in result.output and "5 images in 3 shards" in result.output
    assert sum(1 for _ in read_back(tmp_path / "s")) == 5


def test_cli_train_dry_run_prints_the_resolved_recipe(tmp_path):
    result = cli("train", "digits", "--set", "generator.lr=3e-4", "--set", f"run_dir={tmp_path / 'r'}", "--dry-run")
    assert result.exit_code == 0 and "lr = 0.0003" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--set", "generator.lr=fast"], "generator.lr must be a number, not 'fast'"),
        (["train", "--set", "generator.lrate=1"], "Unknown recipe key 'generator.lrate'"),
        (["train", "nope"], "No recipe named 'nope'"),
        (["generate", "--class", "3", "--num", "2", "--out", "o", "--run", "no/such/run"], "Run folder no/such/run does not exist"),
        (["generate", "--num", "2", "--out", "o"], "exactly one of --class, --species, --attr or --all-classes"),
        (["generate", "--class", "3", "--out", "o"], "exactly one of --num N or --per-class N"),
    ],
)
def test_cli_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(*args)
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_unknown_class_and_missing_run(digits_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("generate", "--run", str(digits_run.path), "--class", "33", "--num", "2", "--out", "o")
    assert result.exit_code == 1 and "No class named '33'" in result.output
    # no run trained here: the error says which recipe to train
    result = cli("generate", "--class", "3", "--num", "2", "--out", "o", env={"SYNTHAUG_RUNS": str(tmp_path / "none")})
    assert result.exit_code == 1 and "No trained run can draw '3'; train one first: synthaug train" in result.output
    assert "digits.toml" in result.output
    result = cli("generate", "--run", str(digits_run.path), "--class", "3", "--num", "2", "--out", "o", "--guidance", "-1")
    assert result.exit_code == 1 and "guidance scale must be 0 or more" in result.output


def test_write_shard_describes_what_it_wrote_exactly_as_reading_it_back_does(tmp_path):
    import numpy as np

    samples = [encode_sample(f"c{i % 3}-{i:06d}", encode_png(np.full((4, 4, 1), i, np.uint8)), i % 3,
                             {"class_name": f"class {i % 3}", "index": i}) for i in range(7)]
    info = write_shard(tmp_path, 5, samples)
    assert info == describe_shard(tmp_path / "synth-000005.tar")
    assert info["sha256"] == sha256_file(tmp_path / "synth-000005.tar") and info["count"] == 7
    assert not list(tmp_path.glob(".*partial"))
    again = tmp_path / "again"
    again.mkdir()
    assert write_shard(again, 5, samples, [f"class {i % 3}" for i in range(7)]) == info  # byte-reproducible
    with wds.TarWriter(str(tmp_path / "webdataset.tar"), encoder=False, mtime=1_700_000_000) as writer:
        for sample in samples:
            writer.write(sample)
    assert (tmp_path / "webdataset.tar").read_bytes() == (tmp_path / "synth-000005.tar").read_bytes()


@pytest.mark.parametrize("kwargs, flags, library, command_line", [
    (dict(num=2, per_class=2), ["--num", "2", "--per-class", "2"],
     "Say how many images with exactly one of num N or per_class N (a positive number).",
     "Say how many images with exactly one of --num N or --per-class N (a positive number)."),
    (dict(num=-2), ["--num", "-2"], "num and per_class must be positive.", "--num and --per-class must be positive."),
    (dict(num=2, strength=0.3), ["--num", "2", "--strength", "0.3"],
     "strength only applies to real-guided variations; add from_real.",
     "--strength only applies to real-guided variations; add --from-real."),
    (dict(num=2, max_draws=3), ["--num", "2", "--max-draws", "3"],
     "max_draws only applies to confidence filtering; add min_confidence P (e.g. 0.5).",
     "--max-draws only applies to confidence filtering; add --min-confidence P (e.g. 0.5)."),
    (dict(num=2, min_confidence=1.5), ["--num", "2", "--min-confidence", "1.5"],
     "min_confidence must lie in [0, 1), e.g. 0.9.", "--min-confidence must lie in [0, 1), e.g. 0.9."),
    (dict(num=2, from_real=True, strength=(0.0, 0.5)), ["--num", "2", "--from-real", "--strength", "0,0.5"],
     "strength must lie in (0, 1], e.g. 0.5 or 0.3,0.6 for a mix.", "--strength must lie in (0, 1], e.g. 0.5 or 0.3,0.6 for a mix."),
    (dict(num=2, sampler="ddpm", steps=1001), ["--num", "2", "--sampler", "ddpm", "--steps", "1001"],
     "The ddpm sampler can take at most 1000 steps on this run's 1000-step noise schedule; use steps 1000 or fewer.",
     "The ddpm sampler can take at most 1000 steps on this run's 1000-step noise schedule; use --steps 1000 or fewer."),
])
def test_a_generate_mistake_names_arguments_in_the_library_and_flags_at_the_command_line(digits_run, tmp_path, kwargs, flags,
                                                                                      library, command_line):
    """write_shards holds every check of `synthaug generate`; its sentence names write_shards' arguments, and the
    command line prints the same sentence with its flags (cli.FLAGS)."""
    with pytest.raises(SynthaugError) as e:
        write_shards(digits_run.path, tmp_path / "lib", ["3"], **kwargs)
    assert str(e.value) == library
    result = cli("generate", "--run", str(digits_run.path), "--class", "3", *flags, "--out", str(tmp_path / "cli"))
    assert result.exit_code == 1 and result.output.strip() == f"Error: {command_line}", result.output
    assert not (tmp_path / "lib").exists() and not (tmp_path / "cli").exists()


def test_write_shards_itself_refuses_out_in_the_run_folder_or_in_its_dataset(imagefolder_tree, tmp_path):
    """The checks that keep shards out of the run folder and the real dataset are the library's (write_shards and
    generate_shards), so a library caller gets them too; the sentence names the argument out (the command line: --out)."""
    run = train_generator(tiny_recipe(tmp_path / "run", f"data.spec=imagefolder:{imagefolder_tree}", "data.resolution=8",
                                      "generator.batch_size=8", "generator.duration_kimg=0.016")).path
    before = sorted(imagefolder_tree.rglob("*")), sorted(run.rglob("*"))
    name = "BMW M3 Coupe 2012"
    with pytest.raises(SynthaugError) as e:
        write_shards(run, run, [name], num=2, overwrite=True)
    assert str(e.value) == f"out {run} is the run folder itself; choose a folder of its own for the shards (e.g. {run / 'synthetic'})."
    for out in (imagefolder_tree, imagefolder_tree / "train" / "synthetic"):
        with pytest.raises(SynthaugError) as e:
            write_shards(run, out, [name], num=2, overwrite=True)
        with pytest.raises(SynthaugError) as low:
            generate_shards(run, GenerateRequest(classes=(name,), num=2), out, sampling(), overwrite=True)
        for error in (e, low):
            assert str(error.value).startswith(f"out {out} is ") and str(error.value).endswith(
                f"{imagefolder_tree.resolve()}, the imagefolder dataset the run was trained on, where the shards would "
                "become part of that dataset; choose a folder outside it."), str(error.value)
    assert (sorted(imagefolder_tree.rglob("*")), sorted(run.rglob("*"))) == before  # nothing written into either


def test_one_generate_reads_the_runs_recipe_and_condition_schema_once(digits_run, tmp_path, monkeypatch):
    """The run is opened once and passed on (the checks of --out, the sampling defaults, the generator, the real
    images variations start from): one `synthaug generate` reads recipe.toml and condition.json once each."""
    reads = count_reads(monkeypatch, digits_run.path, ("recipe.toml", "condition.json"))
    result = cli("generate", "--run", str(digits_run.path), "--class", "3", "--num", "2", "--from-real", "--steps", "2",
                 "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert sorted(reads) == ["condition.json", "recipe.toml"]


# -- mistakes, and out folders in the wrong place ------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--class", "3", "--num", "2", "--per-class", "2"], "Say how many images with exactly one of --num N or --per-class N"),
    (["--attr", "smiling=1", "--num", "2"], "This run is class-conditional; use --class or --species instead of --attr."),
    # a species is looked up as a class name (groups expand); a digits run has no such class or group
    (["--species", "Allen's Hummingbird", "--num", "2"], "No class named \"Allen's Hummingbird\" in digits; run `synthaug classes digits`"),
    (["--class", "3", "--num", "2", "--steps", "1001", "--sampler", "ddpm"],
     "The ddpm sampler can take at most 1000 steps on this run's 1000-step noise schedule; use --steps 1000 or fewer."),
])
def test_generate_mistakes_are_one_sentence_and_leave_no_folder(digits_run, tmp_path, args, message):
    out = tmp_path / "o"
    assert message in error_line(cli("generate", "--run", digits_run.path, *args, "--out", out))
    assert not out.exists()  # no generation.json left behind to make the corrected command "different settings"


def test_the_corrected_steps_run_into_the_same_folder(digits_run, tmp_path):
    out = tmp_path / "o"
    error_line(cli("generate", "--run", digits_run.path, "--class", "3", "--num", "2", "--steps", "100000", "--sampler", "ddim",
                   "--out", out))
    result = cli("generate", "--run", digits_run.path, "--class", "3", "--num", "2", "--steps", "2", "--sampler", "ddim",
                 "--out", out)
    assert result.exit_code == 0, result.output
    assert verify_shards(out)["ok"] and read_manifest(out)["settings"]["steps"] == 2


def test_generate_refuses_out_in_the_run_folder_itself_or_in_its_dataset(imagefolder_tree, tmp_path):
    run = train_generator(tiny_recipe(tmp_path / "run", f"data.spec=imagefolder:{imagefolder_tree}", "data.resolution=8",
                                      "generator.batch_size=8", "generator.duration_kimg=0.016")).path
    before = files_of(imagefolder_tree), files_of(run)
    args = ["generate", "--run", run, "--class", "BMW M3 Coupe 2012", "--num", "2", "--overwrite", "--out"]
    assert error_line(cli(*args, run)) == (f"Error: --out {run} is the run folder itself; choose a folder of its own for "
                                           f"the shards (e.g. {run / 'synthetic'}).")
    for out in (imagefolder_tree, imagefolder_tree / "train" / "synthetic"):
        line = error_line(cli(*args, out))
        assert f"{imagefolder_tree.resolve()}, the imagefolder dataset the run was trained on" in line, line
        assert line.endswith("choose a folder outside it.")
    assert (files_of(imagefolder_tree), files_of(run)) == before  # nothing written into either
    assert not (imagefolder_tree / "train" / "synthetic").exists()
    # a folder inside the run (as the benchmark's own report folder is) is fine: train leaves it alone
    assert cli(*args, run / "synthetic").exit_code == 0 and verify_shards(run / "synthetic")["ok"]


def test_a_second_generate_into_the_same_folder_refuses(digits_run, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    with exclusive_lock(out / ".lock", "test"):
        result = cli("generate", "--run", digits_run.path, "--class", "4", "--num", "2", "--out", out)
    assert result.exit_code == 1 and "Another synthaug process is writing the folder" in result.output
    assert not (out / "manifest.json").exists() and not list(out.glob("synth-*"))
