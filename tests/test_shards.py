"""Shard writing: webdataset's own TarWriter writes each shard, hashed on the way to disk, so a shard is
byte for byte what webdataset writes and its description needs no second read. Verify: the faults it catches, a
folder without a manifest, and what the same generate repairs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from conftest import REQUEST, SAMPLING, cli, error_line, flip_byte
from synthaug.errors import SynthaugError
from synthaug.files import sha256_file
from synthaug.shards import (FIXED_MTIME, describe_shard, encode_png, encode_sample, partial_name, read_manifest, read_shard,
                             verify_shards, write_shard)
from synthaug.synthesis import GenerateRequest, generate_shards


def samples(n: int, size: int = 4) -> list[dict]:
    rng = np.random.default_rng(n)
    return [encode_sample(f"c{i % 3}-{i:06d}", encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), i % 3,
                          {"class_name": f"class {i % 3}", "index": i}) for i in range(n)]


def webdataset_bytes(path, written: list[dict]) -> bytes:
    with wds.TarWriter(str(path), encoder=False, mtime=FIXED_MTIME) as writer:
        for sample in written:
            writer.write(sample)
    return path.read_bytes()


# 0 samples: only the tar's end blocks; 300 samples of 64 px: several MiB, more than the 1 MiB write buffer
@pytest.mark.parametrize("n, size", [(0, 4), (1, 4), (7, 4), (300, 64)])
def test_a_shard_is_byte_identical_to_what_webdataset_writes(tmp_path, n, size):
    written = samples(n, size)
    info = write_shard(tmp_path, 3, written)
    shard = tmp_path / "synth-000003.tar"
    assert shard.read_bytes() == webdataset_bytes(tmp_path / "reference.tar", written)
    assert info["bytes"] == shard.stat().st_size and info["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert info == describe_shard(shard)
    assert [s["__key__"] for s in read_shard(shard)] == [s["__key__"] for s in written]
    assert not (tmp_path / partial_name(3)).exists()


def test_a_sample_that_is_not_bytes_leaves_no_shard(tmp_path):
    bad = samples(2)
    bad[1] = {**bad[1], "cls": 1}  # an int, not encoded bytes
    with pytest.raises(ValueError, match="bytes"):
        write_shard(tmp_path, 0, bad)
    assert not list(tmp_path.iterdir())  # neither the shard nor its partial file


def test_writing_a_shard_again_gives_the_same_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_shard(tmp_path / "a", 0, samples(5))
    again = write_shard(tmp_path / "b", 0, samples(5), [f"class {i % 3}" for i in range(5)])
    assert first == again and sha256_file(tmp_path / "a" / "synth-000000.tar") == first["sha256"]


# -- verify: what it catches, and what the same generate repairs ---------------------------------------

@pytest.fixture
def verified_set(digits_run, tmp_path):
    """12 digits generated for this test, in 3 shards that verify passes."""
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


@pytest.mark.parametrize("fault", list(PLANTED))
def test_verify_catches_each_planted_fault_and_generate_repairs_it(fault, verified_set, digits_run):
    plant, message = PLANTED[fault]
    plant(verified_set)
    result = cli("verify", verified_set)
    error_line(result)
    assert message in result.output, result.output
    generate_shards(digits_run.path, GenerateRequest(classes=("2", "5"), num=12), verified_set, SAMPLING)
    assert verify_shards(verified_set)["ok"], verify_shards(verified_set)["problems"]


def test_a_shard_that_is_not_a_tar_is_one_line_in_verify(shard_set):
    (shard_set / "synth-000001.tar").write_bytes(b"this is not a tar file at all" * 40)
    problems = verify_shards(shard_set)["problems"]
    unreadable = [p for p in problems if "cannot be read as a tar file" in p]
    assert len(unreadable) == 1 and "\n" not in unreadable[0] and "method gz" not in unreadable[0], problems


def test_a_deleted_manifest_is_reported_and_the_same_generate_rebuilds_it(shard_set, digits_run):
    manifest = read_manifest(shard_set)
    stamps = {p.name: p.stat().st_mtime_ns for p in shard_set.glob("synth-*.tar")}
    (shard_set / "manifest.json").unlink()
    result = cli("verify", shard_set)
    assert result.exit_code == 1
    assert "manifest.json is missing: the generation in" in result.output and "run the same synthaug generate" in result.output
    generate_shards(digits_run.path, REQUEST, shard_set, SAMPLING)
    assert read_manifest(shard_set) == manifest and verify_shards(shard_set)["ok"]
    assert {p.name: p.stat().st_mtime_ns for p in shard_set.glob("synth-*.tar")} == stamps  # kept, not redrawn


@pytest.mark.parametrize("damage", ["{bad", "{}", "[1, 2]", "deleted"])
def test_a_damaged_or_deleted_generation_json_is_named_and_the_same_generate_rebuilds_it(shard_set, digits_run, damage):
    original = (shard_set / "generation.json").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in shard_set.glob("synth-*.tar")}
    if damage == "deleted":
        (shard_set / "generation.json").unlink()
    else:
        (shard_set / "generation.json").write_text(damage)
    result = verify_shards(shard_set)
    state = "missing" if damage == "deleted" else "damaged"
    assert not result["ok"] and result["problems"] == [
        f"generation.json is {state}; the samples were checked against the settings in manifest.json instead, and running "
        "the same synthaug generate command again rebuilds it from manifest.json."]
    assert result["samples"] == 16  # still checked, against the manifest's plan
    generate_shards(digits_run.path, REQUEST, shard_set, SAMPLING)  # the same command: rebuilds, redraws nothing
    assert json.loads((shard_set / "generation.json").read_text()) == json.loads(original)
    assert verify_shards(shard_set)["ok"]
    assert {p.name: p.stat().st_mtime_ns for p in shard_set.glob("synth-*.tar")} == stamps


# -- verify of a folder without a manifest -------------------------------------------------------------

def test_verify_without_a_manifest_is_one_sentence(tmp_path):
    result = cli("verify", tmp_path)
    assert result.exit_code == 1 and "manifest.json is missing" in result.output


def foreign_tars(folder):
    folder.mkdir()
    for k in range(2):
        (folder / f"imagenet-train-{k:04d}.tar").write_bytes(b"\0" * 1024)


@pytest.mark.parametrize("make, message", [
    (lambda f: None, r"s does not exist; give a folder written by synthaug generate\."),
    (lambda f: f.write_text("x"), r"s is a file, not a folder; give a folder written by synthaug generate\."),
    (lambda f: f.mkdir(), r"manifest\.json is missing and .*s is empty; give a folder written by synthaug generate\."),
    (foreign_tars, r"holds 2 tar files \(imagenet-train-000\d\.tar, \.\.\.\) but no record of a synthaug generation"),
    (lambda f: f.mkdir() or (f / "notes.md").write_text("x"), r"s is not a synthaug shard set"),
])
def test_verify_says_what_a_folder_without_a_manifest_is(tmp_path, make, message):
    make(tmp_path / "s")
    with pytest.raises(SynthaugError, match=message):
        verify_shards(tmp_path / "s")
    result = cli("verify", tmp_path / "s")
    assert result.exit_code == 1 and "Traceback" not in result.output
