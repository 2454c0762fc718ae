"""EDM's non-leaky augmentation, log-normal noise levels and EDM2's power-function EMA (issue 16, section 2)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_recipe
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

import synthaug.generator.train as train_module
from synthaug.errors import SynthaugError
from synthaug.generator.augment import (
    AUGMENT_DIM,
    apply_augmentations,
    draw_augmentations,
    lognormal_timesteps,
    power_ema,
    power_ema_gamma,
)
from synthaug.conditions import ConditionSchema
from synthaug.generator.model import Denoiser, build_denoiser
from synthaug.generator.sampling import training_scheduler
from synthaug.generator.train import train_generator
from synthaug.recipe import load_recipe


def images(b=4, c=3, h=8):
    return torch.arange(b * c * h * h, dtype=torch.float32).reshape(b, c, h, h)


def params(rows):
    return torch.tensor(rows, dtype=torch.long)


def test_no_augmentation_is_the_identity_with_a_zero_condition():
    x = images()
    out, labels = apply_augmentations(x, params([[0, 0, 0, 0]] * 4))
    assert torch.equal(out, x) and labels.shape == (4, AUGMENT_DIM) and not labels.any()


def test_each_transform_does_what_its_parameters_say_and_is_named_in_the_condition():
    x = images(b=5)
    p = params([[1, 0, 0, 0], [2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, -1]])
    out, labels = apply_augmentations(x, p)
    assert torch.equal(out[0], x[0].flip(2))  # x-flip
    assert torch.equal(out[1], x[1].flip(1))  # y-flip
    assert torch.equal(out[2], torch.rot90(x[2], 1, dims=(1, 2)))  # a quarter turn
    # a shift of one pixel right: column j comes from column j - 1, the first column by reflection (column 1)
    assert torch.equal(out[3][:, :, 1:], x[3][:, :, :-1]) and torch.equal(out[3][:, :, 0], x[3][:, :, 1])
    assert torch.equal(out[4][:, :-1, :], x[4][:, 1:, :])  # one pixel up
    assert labels[0].tolist() == [1, 0, 0, 0, 0, 0] and labels[1].tolist() == [0, 1, 0, 0, 0, 0]
    assert labels[2, 2].item() == pytest.approx(1) and labels[2, 3].item() == pytest.approx(-1)
    assert labels[3, 4].item() == 1.0 and labels[4, 5].item() == -1.0  # shifts as a share of the largest (1 px at 8 px)
    assert all(labels[i].abs().sum() > 0 for i in range(5))


def test_drawn_augmentations_follow_their_probability_and_seed():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert not draw_augmentations(64, 0.0, 32, g(), "cpu").any()
    every = draw_augmentations(64, 1.0, 32, g(), "cpu")
    assert (every[:, 0] == 3).all() and ((every[:, 1] >= 1) & (every[:, 1] <= 3)).all()
    assert every[:, 2:].abs().max() <= 4  # at most an eighth of 32 px
    assert torch.equal(draw_augmentations(64, 0.3, 32, g(), "cpu"), draw_augmentations(64, 0.3, 32, g(), "cpu"))
    some = draw_augmentations(4000, 0.2, 32, g(), "cpu")
    assert 0.17 < (some[:, 0] & 1).bool().float().mean().item() < 0.23


def test_the_augmentation_condition_never_reaches_the_samples(tmp_path):
    """A zero condition changes nothing, and the saved U-Net alone (what generate loads) is the same network."""
    schema = ConditionSchema("class", ("a", "b"), (0, 1), resolution=8, channels=1)
    torch.manual_seed(0)
    d = build_denoiser(schema, "tiny", augment_dim=AUGMENT_DIM, base_channels=8).eval()
    torch.nn.init.normal_(d.augment.weight)  # as if trained
    x, t, c = torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 500]), torch.tensor([0, 1, 2])
    plain = d(x, t, c)
    assert torch.equal(d(x, t, c, torch.zeros(3, AUGMENT_DIM)), plain)
    assert not torch.allclose(d(x, t, c, torch.ones(3, AUGMENT_DIM)), plain)
    d.save_pretrained(tmp_path / "ema")
    assert torch.equal(Denoiser.from_pretrained(tmp_path / "ema").eval()(x, t, c), plain)


def test_lognormal_noise_levels_land_on_the_nearest_schedule_step():
    sched = training_scheduler("cosine", 1000, "epsilon")
    a = sched.alphas_cumprod
    t = lognormal_timesteps(20000, a, -1.2, 1.2, torch.Generator().manual_seed(0), "cpu")
    assert t.min() >= 0 and t.max() <= 999
    log_sigma = 0.5 * (torch.log1p(-a) - torch.log(a))
    assert log_sigma[t].median().item() == pytest.approx(-1.2, abs=0.05)
    assert log_sigma[t].std().item() == pytest.approx(1.2, abs=0.1)
    # nearest: one level exactly between two steps' goes to one of them, a level at a step to that step
    z_steps = lognormal_timesteps(1, a, float(log_sigma[400]), 1e-9, torch.Generator().manual_seed(0), "cpu")
    assert z_steps.item() == 400


def test_power_ema_matches_edm2():
    # EDM2 (Karras et al. 2024, section 3.1): sigma_rel = 0.05 <-> gamma = 16.97, sigma_rel = 0.10 <-> gamma = 6.94
    assert power_ema_gamma(0.05) == pytest.approx(16.97, abs=0.01) and power_ema_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    for std in (0.02, 0.1, 0.2):
        g = power_ema_gamma(std)
        assert math.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3))) == pytest.approx(std, rel=1e-6)
    p = torch.nn.Parameter(torch.zeros(()))
    ema = power_ema(EMAModel, 2.0)([p], decay=1.0)
    seen = []
    for step in range(1, 6):
        p.data.fill_(float(step))
        ema.step([p])
        seen.append(ema.cur_decay_value)
    assert seen[0] == 0 and seen[3] == pytest.approx((1 - 1 / 4) ** 3)
    expected = 0.0
    for t in range(1, 6):  # the EMA recursion with EDM2's decays
        beta = (1 - 1 / t) ** 3
        expected = beta * expected + (1 - beta) * t
    assert ema.shadow_params[0].item() == pytest.approx(expected, rel=1e-6)
    # which approximates EDM2's power-function average: the values weighted by t^gamma (t^2 here)
    assert expected == pytest.approx(sum(t**3 for t in range(1, 6)) / sum(t**2 for t in range(1, 6)), rel=0.05)


def test_training_with_all_three_resumes_exactly(tmp_path, monkeypatch):
    extra = ("generator.augment=0.5", "generator.noise_sampling=lognormal", "generator.ema_std=0.1")
    straight = train_generator(tiny_recipe(tmp_path / "a", *extra))
    real_snapshot = train_module.save_snapshot

    def snapshot_then_die(run, *args, **kwargs):
        real_snapshot(run, *args, **kwargs)
        if not kwargs["finished"]:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_snapshot", snapshot_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_generator(tiny_recipe(tmp_path / "b", *extra))
    monkeypatch.setattr(train_module, "save_snapshot", real_snapshot)
    resumed = train_generator(tiny_recipe(tmp_path / "b", *extra))
    losses = [{e["step"]: e["loss"] for e in map(json.loads, r.log_file.read_text().splitlines())} for r in (straight, resumed)]
    assert losses[0][4] == losses[1][4]
    a = load_file(straight.path / "ema" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed.path / "ema" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("augment" in k for k in a)  # the augmentation layer is not part of the sampler's weights
    # the options change the training: the same recipe without them ends elsewhere
    plain = train_generator(tiny_recipe(tmp_path / "c"))
    c = load_file(plain.path / "ema" / "unet" / "diffusion_pytorch_model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("setting, message", [
    ("generator.ema_std=0.5", "generator.ema_std must be 0"),
    ("generator.augment=1.5", "generator.augment must be a probability"),
    ("generator.noise_sampling=beta", "generator.noise_sampling"),
    ("generator.lognormal_std=0", "generator.lognormal_std must be positive"),
])
def test_bad_values_are_refused_at_load(setting, message):
    with pytest.raises(SynthaugError, match=message):
        load_recipe(None, [setting])


def test_augmentation_needs_the_unet_backend():
    with pytest.raises(SynthaugError, match="generator.augment works with the unet backend only"):
        load_recipe(None, ["generator.augment=0.1", "generator.backend=sd-lora", "generator.base_model=x"])
