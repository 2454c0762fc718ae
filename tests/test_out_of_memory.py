"""A GPU running out of memory is one sentence naming the setting that fixes it, and loses nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, cli, error_line

import synthaug.generator.pipeline as pipeline_module
from synthaug.errors import SynthaugError
from synthaug.generator.model import Denoiser
from synthaug.generator.pipeline import Generator


def test_training_out_of_memory_names_batch_per_device_and_keeps_the_last_snapshot(tmp_path, monkeypatch):
    forward, calls = Denoiser.forward, []

    def forward_until_step_three(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2 and self.training:  # steps 1 and 2 train (and snapshot), step 3 runs out of memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Denoiser, "forward", forward_until_step_three)
    settings = [a for s in TINY for a in ("--set", s)]
    line = error_line(cli("train", *settings, "--out", str(tmp_path / "r")))  # after the training's own log lines
    assert "The GPU ran out of memory training 32 images per step on each device" in line
    assert "set generator.batch_per_device to 16" in line and "resumes from the last snapshot" in line
    assert json.loads((tmp_path / "r" / "state" / "state.json").read_text())["step"] == 2
    monkeypatch.setattr(Denoiser, "forward", forward)
    # the advice works: the same command with the smaller micro-batch resumes and finishes
    result = cli("train", *settings, "--set", "generator.batch_per_device=16", "--out", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "run.json").read_text())["finished"] is True


def test_sampling_out_of_memory_names_network_batch(digits_run, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(pipeline_module, "sample_images", out_of_memory)
    gen = Generator.load(digits_run.path)
    with pytest.raises(SynthaugError, match=r"running 8 rows per network call; set sampling.network_batch to 4"):
        gen.sample(["3"], n=16)  # more rows than the network batch: the recipe's 8 rows per call
