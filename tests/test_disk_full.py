"""A full disk: at every write site of generate and train in turn, during generate and a snapshot, in any writer.
The command fails in one sentence naming what could not be written, keeps what it finished, and the same command
completes once there is space again."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, cli, error_line, tiny_recipe
from synthaug.generator import train as train_module
from synthaug.generator.train import train_generator
from synthaug.shards import read_manifest, verify_shards


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


# -- at every write site in turn -----------------------------------------------------------------------

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


# -- generate, a snapshot, any writer ------------------------------------------------------------------

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
