"""Issue 13, the items the audit found untested or still defective, tried as a new user would: bad generate and
evaluate inputs, out folders in the wrong place, low-data settings larger than a class, two trains on one
run, fuzzed wds: and hf: data, and a full disk at every write site of generate and train in turn."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import logging
import os
import shutil
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import COLOURS, TINY, tiny_recipe, write_image
from synthaug import SynthaugError, load_dataset
from synthaug.cli import app
from synthaug.files import exclusive_lock, sha256_file
from synthaug.generator.train import batch_rows, train_generator
from synthaug.recipe import SamplingConfig
from synthaug.shards import MANIFEST_FORMAT, read_manifest, verify_shards
from synthaug.synthesis import GenerateRequest, generate_shards

runner = CliRunner()
SAMPLING = SamplingConfig(steps=2, network_batch=8, batch_size=8, images_per_shard=4)


def cli(*args):
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    assert "Traceback" not in result.output, result.output
    return result


def error_line(result) -> str:
    """The one error sentence of a failed command (exit code 1)."""
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 1 and lines[-1].startswith("Error: "), result.output
    assert sum(line.startswith("Error: ") for line in lines) == 1, result.output
    return lines[-1]


def files_of(folder: Path) -> dict:
    """Every file under ``folder`` with its sha256 (the lock file aside)."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# -- generate: bad combinations and folders ------------------------------------------------------

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
    shutil.rmtree(run / "ema")  # the advice names the command that rewrites it (tested in test_train_reliability)
    line = error_line(cli("generate", "--run", run, "--class", "3", "--num", "2", "--out", tmp_path / "o"))
    assert f"holds no usable generator (no ema/ folder); run `synthaug train {run}/recipe.toml --out {run}`" in line
    assert not (tmp_path / "o").exists()


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


def test_a_read_only_out_folder_is_refused_by_generate_before_any_work(digits_run, tmp_path, monkeypatch):
    import synthaug.cli

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    monkeypatch.setattr(synthaug.cli.os, "access", lambda path, mode: Path(path) != read_only)  # root may write anywhere
    line = error_line(cli("generate", "--run", digits_run.path, "--class", "3", "--num", "2", "--out", read_only / "s"))
    assert line == f"Error: Could not write or read {read_only / 's'}: the folder {read_only} is read-only; choose a writable --out path."
    assert list(read_only.iterdir()) == []


# -- evaluate ------------------------------------------------------------------------------------

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


def small_evaluation(synthetic: int, test: int):
    """What evaluate_synthetic returns when a side has fewer than 2 images (FID, KID, accuracy not measured)."""
    def evaluated(folder, data=None, benchmark=None):
        return {"synthetic_images": synthetic, "dataset": "digits", "real_test_images": test, "generator_train_images": 1295,
                "cas_top1": {"mean": 0.5, "ci95": 0.1}, "judge": {"model": "test_resnet", "trained_on": "every real training image",
                                                                  "test_score": {"top1": 0.9}},
                "quality": {"n": min(synthetic, test), "fid": None, "kid": None, "conditioning": {"accuracy": None},
                            "note": f"only {synthetic} synthetic image(s): too few to measure"}}
    return evaluated


def test_evaluate_of_a_set_too_small_to_measure_says_why_instead_of_a_traceback(tmp_path, monkeypatch):
    import synthaug.benchmark

    monkeypatch.setattr(synthaug.benchmark, "evaluate_synthetic", small_evaluation(1, 360))
    result = cli("evaluate", "--synthetic", tmp_path)
    assert result.exit_code == 0, result.output
    assert ("FID, KID and conditioning accuracy were not measured: they need at least 2 images on each side, and the "
            "synthetic set has 1 image; generate more images into a new folder.") in result.output
    assert "CAS top-1 %" in result.output and "FID vs real test" not in result.output
    monkeypatch.setattr(synthaug.benchmark, "evaluate_synthetic", small_evaluation(40, 1))  # a one-image test split
    assert "and the real test split has 1 image; use a dataset or split with more test images." in cli(
        "evaluate", "--synthetic", tmp_path).output


def test_evaluate_of_a_set_whose_dataset_moved_says_to_pass_data(tmp_path, monkeypatch):
    import synthaug.benchmark.evaluate

    monkeypatch.setattr(synthaug.benchmark.evaluate, "load_shard_set", lambda *a, **k: pytest.fail("the moved dataset is caught first"))
    gone = tmp_path / "cars"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "data": {"spec": f"imagefolder:{gone}"},
                                                              "schema": {"dataset": f"imagefolder:{gone}"}}))
    line = error_line(cli("evaluate", "--synthetic", tmp_path / "s"))
    assert line == (f"Error: The dataset {tmp_path / 's'} was drawn from, imagefolder:{gone}, is no longer at {gone}; pass "
                    "--data imagefolder:PATH with its new place.")


@pytest.mark.parametrize("make, message", [
    (lambda f: f.mkdir(), "manifest.json is missing and"),
    (lambda f: f.mkdir() or (f / "imagenet-0000.tar").write_bytes(b"\0" * 1024), "but no record of a synthaug generation"),
])
def test_evaluate_of_a_folder_without_a_manifest_is_one_sentence(tmp_path, make, message):
    make(tmp_path / "s")
    assert message in error_line(cli("evaluate", "--synthetic", tmp_path / "s"))


def test_evaluate_reads_the_real_set_at_the_synthetic_sets_resolution(digits_run, imagefolder_tree, tmp_path, monkeypatch):
    """A set of another resolution than the dataset's default (8 px digits against a 64 px imagefolder) is compared
    with the real images decoded at its own resolution."""
    import synthaug.benchmark.evaluate as evaluate

    generate_shards(digits_run.path, GenerateRequest(classes=("3",), num=2), tmp_path / "s", SAMPLING)
    asked = []

    class Stop(Exception):
        pass

    def record(config):
        asked.append(config)
        raise Stop

    monkeypatch.setattr(evaluate, "load_dataset", record)
    with pytest.raises(Stop):
        evaluate.evaluate_synthetic(tmp_path / "s", data=f"imagefolder:{imagefolder_tree}")
    assert asked[0].resolution == 8 and asked[0].spec == f"imagefolder:{imagefolder_tree}"


# -- recipe values larger than the data -----------------------------------------------------------

def test_shots_per_class_larger_than_a_class_has_is_noted(tmp_path):
    for name, count in (("cat", 10), ("dog", 3)):
        for k in range(count):
            write_image(tmp_path / "pets" / name / f"{k}.png", COLOURS[k % 3])
    spec = f"imagefolder:{tmp_path / 'pets'}"
    ds = load_dataset(spec, resolution=8, shots_per_class=5)  # dog: 2 training images after the 20% test split
    assert list(ds.class_counts("train")) == [5, 2]
    assert ("shots_per_class = 5 is more than 1 of the 2 classes has for training (fewest: 'dog' with 2); it keeps all its "
            "training images.") in ds.notes
    ds = load_dataset(spec, resolution=8, shots_per_class=50)
    assert any(n.startswith("shots_per_class = 50 is more than any class has for training (the most is 8)") for n in ds.notes)
    assert not any("shots_per_class" in n for n in load_dataset(spec, resolution=8, shots_per_class=2).notes)


def test_a_batch_larger_than_the_dataset_takes_every_image_equally_often():
    rows = batch_rows(0, 64, 8, seed=3)  # generator.batch_size 64 on 8 training images: 8 whole epochs in one step
    assert len(rows) == 64 and np.bincount(rows.numpy(), minlength=8).tolist() == [8] * 8
    for e in range(8):
        assert sorted(rows[e * 8:(e + 1) * 8].tolist()) == list(range(8))
    steps = torch.cat([batch_rows(s, 12, 8, seed=3) for s in range(2)])  # 12 a step: epochs run across steps
    assert np.bincount(steps.numpy(), minlength=8).tolist() == [3] * 8


# -- two trains on one run folder ------------------------------------------------------------------

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


# -- fuzzed wds: and hf: data ----------------------------------------------------------------------

def png_bytes(colour=(10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), colour).save(buffer, "PNG")
    return buffer.getvalue()


GOOD_PNG = png_bytes()
LABELS = [b"0", b"1", b"2", b"-1", b"nan", b"x", b"99999999999999999999", b"1.5", b" 1 ", b"\xff\xfe", b""]
METAS = [b'{"label": 1}', b'{"label": "red", "class_name": "red"}', b'{"label": null}', b"[1]", b'{"label": 1.5}',
         b'{"label": true}', b"\xff", b'{"class_name": "green", "label": "green"}', b'{"label": -3}', b"{"]
SAMPLES = st.lists(st.tuples(
    st.sampled_from(["k0", "k1", "k2", "k0", "a.b", "d/k4"]),  # keys: repeated, dotted, in a folder
    st.sampled_from(["png", "jpg", "webp", "PNG", "txt"]),
    st.sampled_from([GOOD_PNG, GOOD_PNG, GOOD_PNG[:40], b"", b"\x89PNG not really"]),
    st.one_of(st.none(), st.sampled_from(LABELS)),
    st.one_of(st.none(), st.sampled_from(METAS)),
), max_size=6)
PATTERNS = ["a.tar", "*.tar", "a.tar|b.tar", "{a,b}.tar", "a.tar|b.tar|c.tar", "{0..3}.tar", "[ab].tar", "", "a.tar|",
            "nothing.tar", "{a..}.tar", "a.tar|*.tar"]


def write_tar(path: Path, samples, damage: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, ext, image, cls, meta in samples:
            for name, data in ((f"{key}.{ext}", image), (f"{key}.cls", cls), (f"{key}.json", meta)):
                if data is not None:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else raw[:600] + b"\xff" + raw[601:] if damage == "flipped" else raw)


def loads_or_one_sentence(spec: str, **options) -> None:
    """A dataset spec loads, or fails with a SynthaugError of one sentence; any other exception fails the test."""
    try:
        load_dataset(spec, resolution=8, **options)
    except SynthaugError as e:
        assert "\n" not in str(e) and str(e).endswith("."), str(e)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=SAMPLES, b=SAMPLES, damage=st.sampled_from(["", "truncated", "flipped"]), pattern=st.sampled_from(PATTERNS),
       classes=st.sampled_from([None, "red\ngreen\n", "", "x"]), label_key=st.sampled_from(["", "label", "class_name", "nope"]))
def test_fuzzed_wds_shards_and_specs_load_or_fail_with_one_sentence(tmp_path_factory, a, b, damage, pattern, classes, label_key):
    folder = tmp_path_factory.mktemp("wds")
    write_tar(folder / "a.tar", a, damage)
    write_tar(folder / "b.tar", b, "")
    if classes is not None:
        (folder / "classes.txt").write_text(classes)
    loads_or_one_sentence("wds:" + "|".join(str(folder / p) if p else "" for p in pattern.split("|")), label_key=label_key)


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory):
    """One small dataset, written by save_to_disk and as parquet."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("hf")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes((40 * i, 0, 0)), "path": None} for i in range(4)],
                                     "label": [0, 1, 0, 1]}, features=features)
    ds.save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    ds.to_parquet(str(root / "parquet" / "train-0.parquet"))
    return root


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), layout=st.sampled_from(["saved", "parquet"]),
       how=st.sampled_from(["truncated", "flipped", "garbage", "deleted", "empty", "kept"]),
       extra=st.sampled_from([None, "state.json", "dataset_dict.json", "x.parquet", "sub/y.parquet"]),
       label_key=st.sampled_from(["", "label", "image", "nope"]))
def test_fuzzed_hf_folders_load_or_fail_with_one_sentence(hf_saved, tmp_path_factory, caplog, data, layout, how, extra, label_key):
    folder = shutil.copytree(hf_saved / layout, tmp_path_factory.mktemp("hf") / layout)
    victim = data.draw(st.sampled_from(sorted(p for p in folder.rglob("*") if p.is_file())))
    raw = victim.read_bytes()
    changed = {"truncated": raw[: len(raw) // 2], "flipped": raw[: len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 0xFF]) + raw[len(raw) // 2 + 1:],
               "garbage": bytes(range(64)), "empty": b"", "kept": raw}
    victim.unlink() if how == "deleted" else victim.write_bytes(changed[how])
    if extra:
        (folder / extra).parent.mkdir(parents=True, exist_ok=True)
        (folder / extra).write_bytes(b"{not json" if extra.endswith(".json") else bytes(range(32)))
    caplog.clear()
    loads_or_one_sentence(f"hf:{folder}", label_key=label_key)
    assert not datasets_log_lines(caplog)


def datasets_log_lines(caplog) -> list[str]:
    """What the datasets package logged (its handler prints it on stderr, before synthaug's one sentence)."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("datasets") and r.levelno >= logging.WARNING]


def test_a_parquet_file_that_is_not_parquet_is_one_sentence_and_nothing_else(tmp_path, caplog):
    pytest.importorskip("datasets")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-0.parquet").write_bytes(b"not parquet at all " * 8)
    with pytest.raises(SynthaugError, match=r"The parquet files in .* could not be read \(ArrowInvalid: Parquet magic bytes"):
        load_dataset(f"hf:{tmp_path / 'data'}", resolution=8)
    assert datasets_log_lines(caplog) == []  # was: "Failed to read schema from ..." printed before the sentence


# -- a full disk at every write site in turn --------------------------------------------------------

class FullDisk:
    """Counts the write sites under ``root`` as a command meets them (a file opened for writing, an fsync)
    and, with ``at``, fails the ``at``-th of them (1-based) with ENOSPC, as a disk that fills there would."""

    def __init__(self, root: Path, at: int | None = None, only: str = ""):
        self.root, self.at, self.only, self.sites = str(Path(root).resolve()) + os.sep, at, only, []

    def _meet(self, kind: str, name) -> None:
        path = os.path.abspath(os.fsdecode(name))
        if not path.startswith(self.root) or self.only not in os.path.basename(path):
            return
        self.sites.append(f"{kind} {path[len(self.root):]}")
        if len(self.sites) == self.at:
            raise OSError(errno.ENOSPC, "No space left on device", path)

    @contextlib.contextmanager
    def installed(self):
        real_open, real_os_open, real_fsync = builtins.open, os.open, os.fsync

        def open_(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                self._meet("open", file)
            return real_open(file, mode, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                self._meet("open", path)
            return real_os_open(path, flags, *args, **kwargs)

        def fsync(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                self._meet("fsync", os.readlink(f"/proc/self/fd/{fd}"))
            return real_fsync(fd)

        builtins.open, io.open, os.open, os.fsync = open_, open_, os_open, fsync
        try:
            yield self
        finally:
            builtins.open, io.open, os.open, os.fsync = real_open, real_open, real_os_open, real_fsync


@pytest.mark.slow
def test_a_full_disk_at_each_write_site_of_generate_then_the_same_command_completes(digits_run, tmp_path):
    def generate(out: Path, at: int | None = None):
        with FullDisk(tmp_path, at).installed() as disk:
            result = cli("generate", "--run", digits_run.path, "--class", "3", "--class", "5", "--num", "8", "--shard-size", "4",
                         "--steps", "2", "--out", out)
        return result, disk.sites

    result, sites = generate(tmp_path / "straight")
    assert result.exit_code == 0 and len(sites) >= 9, sites  # lock, generation.json, 2 shards, manifest: opened and fsynced
    expected = read_manifest(tmp_path / "straight")["shards"]
    for at, site in enumerate(sites, 1):
        out = tmp_path / f"full-{at}"
        result, _ = generate(out, at)
        assert "No space left on device; free space or choose a writable folder" in error_line(result), site
        assert not (out / "manifest.json").exists(), site  # nothing partial counted as complete
        result, _ = generate(out)  # space freed: the same command
        assert result.exit_code == 0, (site, result.output)
        assert verify_shards(out)["ok"] and read_manifest(out)["shards"] == expected, site


ONE_STEP = ("generator.duration_kimg=0.032", "generator.snapshot_every_kimg=0.032")
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("half", [0, 1])  # the sites in two halves (about 35 s each on 2 CPU cores)
def test_a_full_disk_at_each_write_site_of_train_keeps_the_run_and_the_same_command_completes(tmp_path, half):
    with FullDisk(tmp_path).installed() as disk:
        train_generator(tiny_recipe(tmp_path / "straight", *ONE_STEP))
    assert len(disk.sites) >= 20, disk.sites  # run.json, condition.json, recipe.toml, log, model/, ema/, state/, run.json
    straight = {folder: load_file(tmp_path / "straight" / folder / WEIGHTS) for folder in ("model", "ema")}
    for at, site in list(enumerate(disk.sites, 1))[half::2]:
        run = tmp_path / f"full-{at}"
        with pytest.raises(OSError) as e, FullDisk(tmp_path, at).installed():
            train_generator(tiny_recipe(run, *ONE_STEP))
        assert e.value.errno == errno.ENOSPC, site
        train_generator(tiny_recipe(run, *ONE_STEP))  # space freed: the same command
        for folder, expected in straight.items():
            got = load_file(run / folder / WEIGHTS)
            assert all(torch.equal(expected[k], got[k]) for k in expected), (site, folder)
        assert [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()] == [1], site
        assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".old"))], site


def test_a_full_disk_at_the_last_run_json_leaves_a_run_json_the_same_command_repairs(tmp_path):
    with FullDisk(tmp_path, only="run.json").installed() as disk:
        train_generator(tiny_recipe(tmp_path / "straight", *ONE_STEP))
    last = max(i for i, site in enumerate(disk.sites, 1) if site.startswith("open"))  # opening the final run.json
    with pytest.raises(OSError), FullDisk(tmp_path, last, only="run.json").installed():
        train_generator(tiny_recipe(tmp_path / "run", *ONE_STEP))
    run = train_generator(tiny_recipe(tmp_path / "run", *ONE_STEP))  # space freed: the same command
    info = json.loads(run.info_file.read_text())
    assert (info.get("step"), info.get("kimg"), info.get("finished")) == (1, 0.032, True)
