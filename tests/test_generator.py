"""Generator: model, loss, sampling determinism and guidance and the steps a noise schedule allows; training with
exact resume, its EMA weights, v-prediction, a diverging loss, and what a run's state allows."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TWO_STEPS, copy_of, snapshot, tiny_recipe
from synthaug import SynthaugError, load_dataset
from synthaug.generator import Condition, Generator
from synthaug.generator.pipeline import plan_conditions, split_evenly
from synthaug.seeds import derive_seed
from synthaug.generator import train as train_module
from synthaug.conditions import ConditionSchema
from synthaug.generator.loss import DiffusionLoss
from synthaug.generator.model import build_denoiser, unet_config
from synthaug.generator.sampling import check_steps, make_sampler, run_network, sample_images, training_scheduler
from synthaug.generator.train import batch_rows, drop_conditions, ema_weights, train_generator
from synthaug.recipe import SamplingConfig

CLASS_SCHEMA = ConditionSchema("class", ("a", "b", "c"), (1, 2, 3), resolution=8, channels=1)
ATTR_SCHEMA = ConditionSchema("attributes", ("face",), (0,), resolution=8, channels=3,
                              attribute_names=("Bangs", "Smiling"), attribute_levels=(6, 6))


def test_denoiser_shapes_and_null_conditions():
    torch.manual_seed(0)
    for schema in (CLASS_SCHEMA, ATTR_SCHEMA):
        d = build_denoiser(schema, "tiny", base_channels=8)
        null = schema.null(2)
        assert d(torch.randn(2, schema.channels, 8, 8), torch.tensor([5, 900]), null).shape == (2, schema.channels, 8, 8)
    assert CLASS_SCHEMA.null(2).tolist() == [3, 3]
    assert ATTR_SCHEMA.null(1).tolist() == [[6, 6]]


def test_changing_the_class_or_an_attribute_level_changes_the_output():
    torch.manual_seed(0)
    x, t = torch.randn(1, 1, 8, 8).expand(4, -1, -1, -1), torch.full((4,), 500)
    d = build_denoiser(CLASS_SCHEMA, "tiny", base_channels=8).eval()
    out = d(x, t, torch.tensor([0, 1, 2, 3]))  # three classes and the null
    assert all(not torch.allclose(out[i], out[j]) for i in range(4) for j in range(i))
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 8).expand(5, -1, -1, -1)
    a = build_denoiser(ATTR_SCHEMA, "tiny", base_channels=8).eval()
    # one attribute changed at a time, and each one's null level: every change reaches the U-Net
    levels = torch.tensor([[2, 4], [3, 4], [2, 5], [6, 4], [2, 6]])
    out = a(x, torch.full((5,), 500), levels)
    assert all(not torch.allclose(out[0], out[k]) for k in range(1, 5))


def test_class_unet_is_plain_diffusers_with_a_null_class(tmp_path):
    from diffusers import UNet2DModel

    d = build_denoiser(CLASS_SCHEMA, "tiny", base_channels=8)
    d.save_pretrained(tmp_path)
    unet = UNet2DModel.from_pretrained(tmp_path / "unet")
    assert unet.config.num_class_embeds == 4 and unet.config.resnet_time_scale_shift == "scale_shift"
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([10])
    assert torch.allclose(unet(x, t, class_labels=torch.tensor([2])).sample, d(x, t, torch.tensor([2])), atol=1e-5)


def test_presets_check_the_resolution():
    assert unet_config(CLASS_SCHEMA, "tiny")["block_out_channels"] == (32, 64)
    base = ConditionSchema("class", ("a",), (0,), resolution=64, channels=3)
    cfg = unet_config(base, "base")
    assert cfg["block_out_channels"] == (128, 256, 512, 1024) and cfg["down_block_types"][-1] == "AttnDownBlock2D"
    odd = ConditionSchema("class", ("a",), (0,), resolution=36, channels=3)
    with pytest.raises(SynthaugError, match="Resolution 36 cannot be halved 3 times by the small U-Net"):
        unet_config(odd, "small")
    with pytest.raises(SynthaugError, match="preset 'huge' is not known"):
        unet_config(base, "huge")


def test_loss_targets_and_min_snr_weights():
    x0, noise = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    a = torch.tensor([0.99, 0.5, 0.1, 0.001])
    eps = DiffusionLoss("epsilon", "mse", 5.0)
    assert torch.equal(eps.target(x0, noise, a), noise)
    v = DiffusionLoss("v", "mse", 5.0).target(x0, noise, a)
    assert torch.allclose(v, a.sqrt().view(-1, 1, 1, 1) * noise - (1 - a).sqrt().view(-1, 1, 1, 1) * x0)
    snr = a / (1 - a)
    assert torch.allclose(eps.weights(a), snr.clamp(max=5) / snr)
    assert torch.allclose(DiffusionLoss("v", "mse", 5.0).weights(a), snr.clamp(max=5) / (snr + 1))
    assert torch.equal(DiffusionLoss("epsilon", "mse", 0).weights(a), torch.ones(4))
    out = noise + 0.5
    assert DiffusionLoss("epsilon", "l1", 0)(out, x0, noise, a).item() == pytest.approx(0.5)
    assert DiffusionLoss("epsilon", "mse", 0)(out, x0, noise, a).item() == pytest.approx(0.25)
    with pytest.raises(SynthaugError, match="generator.loss 'l3'"):
        DiffusionLoss("epsilon", "l3")


def test_batch_rows_cover_each_epoch_once():
    rows = torch.cat([batch_rows(s, 7, 20, seed=1) for s in range(20)])  # 140 rows = 7 epochs of 20
    for e in range(7):
        assert sorted(rows[e * 20 : (e + 1) * 20].tolist()) == list(range(20))
    assert torch.equal(batch_rows(3, 7, 20, seed=1), batch_rows(3, 7, 20, seed=1))


def test_a_batch_larger_than_the_dataset_takes_every_image_equally_often():
    rows = batch_rows(0, 64, 8, seed=3)  # generator.batch_size 64 on 8 training images: 8 whole epochs in one step
    assert len(rows) == 64 and np.bincount(rows.numpy(), minlength=8).tolist() == [8] * 8
    for e in range(8):
        assert sorted(rows[e * 8:(e + 1) * 8].tolist()) == list(range(8))
    steps = torch.cat([batch_rows(s, 12, 8, seed=3) for s in range(2)])  # 12 a step: epochs run across steps
    assert np.bincount(steps.numpy(), minlength=8).tolist() == [3] * 8


def test_condition_dropout_rates():
    g = torch.Generator().manual_seed(0)
    cond = torch.zeros(20000, dtype=torch.long)
    dropped = drop_conditions(cond, torch.tensor(9), 0.1, g)
    assert abs((dropped == 9).float().mean().item() - 0.1) < 0.01
    attrs = torch.zeros(20000, 2, dtype=torch.long)
    out = drop_conditions(attrs, torch.tensor([6, 6]), 0.1, g)
    both = (out == 6).all(1).float().mean().item()
    assert 0.1 < both < 0.13  # whole drops plus both dropped one by one
    assert abs((out[:, 0] == 6).float().mean().item() - 0.19) < 0.015


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_denoiser(CLASS_SCHEMA, "tiny", base_channels=8).eval()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m", "unipc", "euler"])
def test_every_sampler_runs_and_is_deterministic(tiny_model, sampler):
    cfg = dict(training_scheduler().config)
    sampling = SamplingConfig(sampler=sampler, steps=3, guidance=2.0, network_batch=4)
    a = sample_images(tiny_model, torch.tensor([0, 1]), CLASS_SCHEMA.null(1), [3, 4], cfg, sampling)
    b = sample_images(tiny_model, torch.tensor([0, 1]), CLASS_SCHEMA.null(1), [3, 4], cfg, sampling)
    assert a.shape == (2, 8, 8, 1) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sampler", ["ddpm", "dpm++2m"])
def test_seeds_in_one_batch_equal_one_at_a_time(tiny_model, sampler):
    cfg = dict(training_scheduler().config)
    sampling = SamplingConfig(sampler=sampler, steps=3, guidance=2.0, network_batch=4)
    both = sample_images(tiny_model, torch.tensor([0, 2]), CLASS_SCHEMA.null(1), [3, 4], cfg, sampling)
    first = sample_images(tiny_model, torch.tensor([0]), CLASS_SCHEMA.null(1), [3], cfg, sampling)
    second = sample_images(tiny_model, torch.tensor([2]), CLASS_SCHEMA.null(1), [4], cfg, sampling)
    np.testing.assert_array_equal(both, np.concatenate([first, second]))  # bit-identical


def test_batched_guidance_equals_two_separate_forwards(tiny_model):
    cfg = dict(training_scheduler().config)
    cond, null, seeds, s = torch.tensor([0, 1, 2]), CLASS_SCHEMA.null(1), [7, 8, 9], 3.0
    fast = sample_images(tiny_model, cond, null, seeds, cfg, SamplingConfig(sampler="ddim", steps=4, guidance=s, network_batch=8))
    # reference: the same loop with the conditional and the null branch as separate forwards
    from diffusers.utils.torch_utils import randn_tensor

    sched = make_sampler("ddim", cfg)
    sched.set_timesteps(4)
    gens = [torch.Generator().manual_seed(k) for k in seeds]
    x = randn_tensor((3, 1, 8, 8), generator=gens, dtype=torch.float32)
    with torch.inference_mode():
        for t in sched.timesteps:
            c = run_network(tiny_model, x, t.reshape(1), cond, null, 8)
            u = run_network(tiny_model, x, t.reshape(1), null.expand(3), null, 8)
            x = sched.step(u + s * (c - u), t, x, generator=gens).prev_sample
    ref = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(fast, ref)


class ExactDenoiser(torch.nn.Module):
    """A backend that knows the answer: for every x_t it returns the exact epsilon or v of one image ``x0``."""

    encode_once = False

    def __init__(self, x0: torch.Tensor, scheduler_config: dict):
        super().__init__()
        self.x0 = torch.nn.Parameter(x0, requires_grad=False)
        self.alphas_cumprod = training_scheduler(prediction="v").alphas_cumprod  # the cosine schedule of both
        self.v = scheduler_config["prediction_type"] == "v_prediction"

    sample_shape = property(lambda self: tuple(self.x0.shape[1:]))

    def forward(self, x_t, t, condition):
        a = self.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * self.x0 if self.v else eps

    def encode(self, images):
        return images.float() / 127.5 - 1

    def decode(self, x, network_batch):
        return x

    def trainable_parameters(self):
        return []

    def save_pretrained(self, folder):
        pass

    def prompt(self, condition_value):
        return None


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++2m", "unipc", "euler"])
def test_every_sampler_recovers_the_image_an_exact_denoiser_predicts(prediction, sampler):
    from synthaug.generator.backends import Backend

    config = dict(training_scheduler(prediction=prediction).config)
    x0 = torch.linspace(-0.9, 0.9, 64).reshape(1, 1, 8, 8)
    oracle = ExactDenoiser(x0, config)
    assert isinstance(oracle, Backend)
    images = sample_images(oracle, torch.tensor([0, 1]), CLASS_SCHEMA.null(1), [3, 4], config,
                           SamplingConfig(sampler=sampler, steps=10, guidance=2.0, network_batch=4))
    want = ((x0[0] + 1) * 127.5).round().permute(1, 2, 0).numpy()
    # a sampler that read the output as the wrong prediction type (v as epsilon) would land elsewhere
    assert np.abs(images.astype(float) - want).max() <= 1, np.abs(images.astype(float) - want).max()


def test_v_models_sample_with_trailing_spacing_and_epsilon_models_with_leading():
    v = make_sampler("ddim", dict(training_scheduler(prediction="v").config))
    eps = make_sampler("ddim", dict(training_scheduler().config))
    v.set_timesteps(4)
    eps.set_timesteps(4)
    assert v.config.timestep_spacing == "trailing" and v.timesteps.tolist() == [999, 749, 499, 249]
    assert eps.config.timestep_spacing == "leading" and eps.timesteps.tolist() == [750, 500, 250, 0]


def test_a_v_prediction_generator_trains_and_samples(tmp_path):
    run = train_generator(tiny_recipe(tmp_path / "v", "generator.prediction=v", "generator.duration_kimg=0.064"))
    gen = Generator.load(run.path, device="cpu")
    assert gen.scheduler_config["prediction_type"] == "v_prediction"
    for sampler in ("ddim", "dpm++2m"):  # both through the trailing branch of make_sampler
        sampling = gen.sampling.replace(sampler=sampler, steps=3)
        conds = gen.resolve_classes(["3", "7"])
        images = gen.sample_conditions(conds, [5, 5], sampling)
        assert images.shape == (2, 8, 8, 1) and not np.array_equal(images[0], images[1])  # the class reaches the image
        np.testing.assert_array_equal(images[1:], gen.sample_conditions(conds[1:], [5], sampling))


def test_guidance_one_needs_no_null_branch(tiny_model, monkeypatch):
    cfg = dict(training_scheduler().config)
    calls = []
    original = tiny_model.forward
    monkeypatch.setattr(tiny_model, "forward", lambda x, t, c: calls.append(len(x)) or original(x, t, c))
    sample_images(tiny_model, torch.tensor([0, 1]), CLASS_SCHEMA.null(1), [1, 2], cfg,
                  SamplingConfig(sampler="ddim", steps=2, guidance=1.0, network_batch=2))
    assert calls == [2, 2]  # 2 steps x one chunk of the 2 conditional rows


def test_derive_seed_and_plans():
    assert derive_seed(0, "c3", 5) == derive_seed(0, "c3", 5) != derive_seed(1, "c3", 5)
    assert 0 <= derive_seed(0, "c3", 5) < 2**63
    assert split_evenly(7, 3) == [3, 2, 2]
    x, y = Condition("c1", (0,), 0, "x", 1), Condition("c2", (1,), 1, "y", 2)
    plan = plan_conditions([x, y], [2, 1], 0)
    assert [(c.key, i) for c, i, _ in plan] == [("c1", 0), ("c2", 0), ("c1", 1)]  # round-robin over classes
    assert plan[2][2] == derive_seed(0, "c1", 1)


def test_two_training_steps_write_a_complete_run(tmp_path):
    run = train_generator(tiny_recipe(tmp_path / "run", "generator.duration_kimg=0.064", "generator.grid_every_kimg=0.064"))
    assert run.trained and (run.model_dir / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (run.ema_dir / "scheduler" / "scheduler_config.json").exists()
    assert json.loads((run.state_dir / "state.json").read_text())["step"] == 2
    log = [json.loads(line) for line in run.log_file.read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2] and all(np.isfinite(e["loss"]) and e["images_per_s"] > 0 for e in log)
    schema = ConditionSchema.load(run.condition_file)
    assert schema.class_names == tuple(str(d) for d in range(10)) and schema.num_train_images == 1295  # 1,438 minus the 10% validation split
    assert "duration_kimg = 0.064" in run.recipe_file.read_text()
    assert [p.name for p in run.grids_dir.glob("*.png")] == ["grid-000000kimg.png"]  # at the end (0.064 kimg)
    assert json.loads(run.info_file.read_text())["finished"] is True


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    straight = train_generator(tiny_recipe(tmp_path / "a"))
    real_snapshot = train_module.save_snapshot

    def snapshot_then_die(run, *args, **kwargs):
        real_snapshot(run, *args, **kwargs)
        if not kwargs["finished"]:
            raise KeyboardInterrupt  # the process is stopped right after its step-2 snapshot

    monkeypatch.setattr(train_module, "save_snapshot", snapshot_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_generator(tiny_recipe(tmp_path / "b"))
    monkeypatch.setattr(train_module, "save_snapshot", real_snapshot)
    resumed = train_generator(tiny_recipe(tmp_path / "b"))

    def losses(run):
        return {e["step"]: e["loss"] for e in map(json.loads, run.log_file.read_text().splitlines())}

    assert losses(resumed)[3] == losses(straight)[3] and losses(resumed)[4] == losses(straight)[4]
    for folder in ("model", "ema"):
        a = load_file(straight.path / folder / "unet" / "diffusion_pytorch_model.safetensors")
        b = load_file(resumed.path / folder / "unet" / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_data_sha256_covers_pixels_and_labels_but_not_row_order():
    from synthaug.conditions import training_data_sha256

    ds = load_dataset("digits").subset(np.arange(40))
    pixels, labels = training_data_sha256(ds)
    assert training_data_sha256(ds.subset(np.arange(40)[::-1])) == (pixels, labels)  # the same images, other order
    relabelled = dataclasses.replace(ds, labels=np.where(np.arange(40) == 7, (ds.labels + 1) % 10, ds.labels))
    same_pixels, other_labels = training_data_sha256(relabelled)
    assert same_pixels == pixels and other_labels != labels
    edited = np.asarray(ds.images).copy()
    edited[3, 0, 0] ^= 1  # one pixel of one image
    other_pixels, same_labels = training_data_sha256(dataclasses.replace(ds, images=edited))
    assert other_pixels != pixels and same_labels == labels


def test_resume_with_a_different_recipe_is_refused(tmp_path):
    train_generator(tiny_recipe(tmp_path / "r", "generator.duration_kimg=0.032"))
    with pytest.raises(SynthaugError, match="trained with generator.lr = 0.002, not 0.001; use --fresh"):
        train_generator(tiny_recipe(tmp_path / "r", "generator.lr=1e-3"))
    # training longer is a resumption, not a different recipe
    run = train_generator(tiny_recipe(tmp_path / "r", "generator.duration_kimg=0.064"))
    assert json.loads(run.info_file.read_text())["step"] == 2


def test_damaged_state_is_detected(tmp_path):
    run = train_generator(tiny_recipe(tmp_path / "r", "generator.duration_kimg=0.032"))
    with open(run.state_dir / "training_state.pt", "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    with pytest.raises(SynthaugError, match="training_state.pt is damaged"):
        train_generator(tiny_recipe(tmp_path / "r", "generator.duration_kimg=0.064"))


def test_attribute_generator_trains_and_samples(dialog_tree, tmp_path):
    recipe = tiny_recipe(tmp_path / "faces", f"data.spec=celeba-dialog:{dialog_tree}", "data.resolution=8",
                         "generator.batch_size=8", "generator.duration_kimg=0.016")
    run = train_generator(recipe)
    schema = ConditionSchema.load(run.condition_file)
    assert schema.kind == "attributes" and schema.attribute_levels == (6,) * 5
    gen = Generator.load(run.path, device="cpu")
    images, labels = gen.sample(attributes="smiling=5,bangs=0", n=3)
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 0, 0]
    # the same seed under other attribute levels draws another image: the levels reach the network
    conds = [gen.attribute_condition(text) for text in ("smiling=5,bangs=0", "smiling=0,bangs=0", "smiling=5,bangs=5")]
    drawn = gen.sample_conditions(conds, [11, 11, 11], gen.sampling)
    assert not np.array_equal(drawn[0], drawn[1]) and not np.array_equal(drawn[0], drawn[2])
    assert gen.attribute_condition({"Smiling": 5}).key == "a-smiling5"
    with pytest.raises(SynthaugError, match="Level '9' for Smiling is out of range; use 0 to 5"):
        gen.attribute_condition("smiling=9")
    with pytest.raises(SynthaugError, match="did you mean 'Smiling'"):
        gen.attribute_condition("smilng=2")


def test_generator_sample_api(digits_run):
    gen = Generator.load(digits_run.path, device="cpu")
    images, labels = gen.sample(["3", "7"], n=5, seed=1)
    assert images.shape == (5, 1, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [3, 7, 3, 7, 3]
    again, _ = gen.sample(["3", "7"], n=5, seed=1)
    assert torch.equal(images, again)
    # one seed, two classes: two images (the class reaches the network)
    three, seven = gen.resolve_classes(["3", "7"])
    drawn = gen.sample_conditions([three, seven], [9, 9], gen.sampling)
    assert not np.array_equal(drawn[0], drawn[1])
    with pytest.raises(SynthaugError, match="No class named 'eleven'"):
        gen.sample(["eleven"], n=1)


def test_a_small_request_does_not_pay_for_a_full_network_batch(digits_run, monkeypatch):
    gen = Generator.load(digits_run.path, device="cpu")
    gen.sampling = gen.sampling.replace(network_batch=256, steps=2)
    calls = []
    original = gen.denoiser.forward
    monkeypatch.setattr(gen.denoiser, "forward", lambda x, t, c: calls.append(len(x)) or original(x, t, c))
    small, labels = gen.sample(["3"], n=1, seed=4)
    assert set(calls) == {2}  # one image, conditional and null rows: 2, not 256
    calls.clear()
    padded, _ = gen.sample(["3"], n=1, seed=4, network_batch=256)
    assert set(calls) == {256}
    cond = gen.resolve_classes(["3"])[0]
    from synthaug.seeds import derive_seed

    shard_image = gen.sample_conditions([cond], [derive_seed(4, cond.key, 0)], gen.sampling)  # what generate draws
    assert torch.equal(padded[0], torch.from_numpy(shard_image[0]).permute(2, 0, 1))  # network_batch=256 matches a shard
    again, _ = gen.sample(["3"], n=1, seed=4)
    assert torch.equal(small, again) and labels.tolist() == [3]


def test_streamed_training_data_gives_the_same_run_as_data_held_on_the_device(tmp_path, monkeypatch, caplog):
    """A training set over the device budget is streamed from the memory-mapped cache by DataLoader workers;
    the run is the very same as with the set held whole (same rows, same bytes, same losses and weights)."""
    import logging

    caplog.set_level(logging.INFO, logger="synthaug")
    held = train_generator(tiny_recipe(tmp_path / "held", "generator.flip=true"))
    assert "held on cpu" in caplog.text
    caplog.clear()
    monkeypatch.setenv("SYNTHAUG_RESIDENT_BYTES", "0")
    streamed = train_generator(tiny_recipe(tmp_path / "streamed", "generator.flip=true"))
    assert "streamed from the memory-mapped cache" in caplog.text

    def losses(run):
        return [json.loads(line)["loss"] for line in run.log_file.read_text().splitlines()]

    assert losses(held) == losses(streamed)
    a = load_file(held.ema_dir / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(streamed.ema_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


class FakeClock:
    """The training loop's clock, advancing ``tick`` seconds at every reading (one reading per step)."""

    def __init__(self, tick: float):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_a_time_budget_stops_within_one_log_interval_and_resumes_to_the_same_total(tmp_path, monkeypatch):
    # 10 s a step, a log every step, a budget of 1 minute and a cap of 100 steps: the budget stops it at step 6
    budget = ["generator.duration_minutes=1", "generator.duration_kimg=3.2"]
    monkeypatch.setattr(train_module, "clock", FakeClock(10.0))
    straight = train_generator(tiny_recipe(tmp_path / "a", *budget))
    info = json.loads(straight.info_file.read_text())
    assert info["finished"] is True and info["step"] == 6 and 60 <= info["train_seconds"] < 60 + 10
    log = [json.loads(line) for line in straight.log_file.read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5, 6] and [e["train_s"] for e in log] == [10, 20, 30, 40, 50, 60]
    assert "duration_minutes = 1.0" in straight.recipe_file.read_text()

    # killed after its step-2 snapshot, then resumed: the 20 s it had trained count, and it ends where the first did
    real_snapshot = train_module.save_snapshot

    def snapshot_then_die(run, *args, **kwargs):
        real_snapshot(run, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_snapshot", snapshot_then_die)
    monkeypatch.setattr(train_module, "clock", FakeClock(10.0))
    with pytest.raises(KeyboardInterrupt):
        train_generator(tiny_recipe(tmp_path / "b", *budget))
    assert json.loads((tmp_path / "b" / "run.json").read_text())["train_seconds"] == 20
    monkeypatch.setattr(train_module, "save_snapshot", real_snapshot)
    monkeypatch.setattr(train_module, "clock", FakeClock(10.0))
    resumed = train_generator(tiny_recipe(tmp_path / "b", *budget))
    assert json.loads(resumed.info_file.read_text())["step"] == 6
    a = load_file(straight.ema_dir / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed.ema_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # the same command again has nothing to do; a larger budget trains on; a smaller one than trained is refused
    monkeypatch.setattr(train_module, "clock", FakeClock(10.0))
    assert json.loads(train_generator(tiny_recipe(tmp_path / "a", *budget)).info_file.read_text())["step"] == 6
    longer = train_generator(tiny_recipe(tmp_path / "a", "generator.duration_minutes=1.5", "generator.duration_kimg=3.2"))
    assert json.loads(longer.info_file.read_text())["step"] == 9
    with pytest.raises(SynthaugError, match="already trained for 1.50 minutes, more than generator.duration_minutes = 1"):
        train_generator(tiny_recipe(tmp_path / "a", *budget))


def test_a_time_budget_is_checked_every_step_not_only_at_log_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "clock", FakeClock(10.0))
    run = train_generator(tiny_recipe(tmp_path / "r", "generator.duration_minutes=1", "generator.duration_kimg=3.2",
                                      "generator.log_every_kimg=0.32"))  # a log line every 10 steps
    info = json.loads(run.info_file.read_text())
    assert info["finished"] is True and info["step"] == 6 and info["train_seconds"] == 60
    assert [json.loads(line)["step"] for line in run.log_file.read_text().splitlines()][-1] == 6  # the last step is logged


def test_the_kimg_cap_ends_a_time_budgeted_run_too(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "clock", FakeClock(0.001))
    run = train_generator(tiny_recipe(tmp_path / "r", "generator.duration_minutes=5"))
    info = json.loads(run.info_file.read_text())
    assert info["finished"] is True and info["step"] == 4 and info["train_seconds"] < 1  # duration_kimg 0.128: 4 steps


# -- training: EMA weights, v-prediction, a diverging loss, the progress label -------------------------

def trained_copy():
    """A tiny denoiser whose training weights have moved away from its EMA weights."""
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    schema = ConditionSchema("class", ("a", "b"), (0, 1), resolution=8, channels=1)
    model = build_denoiser(schema, "tiny", base_channels=8)
    params = model.trainable_parameters()
    ema = EMAModel(params, decay=0.5, use_ema_warmup=False, foreach=True)
    for _ in range(2):  # diffusers' first EMA step copies the weights (decay 0); the second averages
        with torch.no_grad():
            for p in params:
                p.add_(1.0)  # a step of training
        ema.step(params)
    return model, ema


def test_ema_weights_swaps_the_ema_weights_in_and_the_training_ones_back_without_a_copy():
    model, ema = trained_copy()
    params = model.trainable_parameters()
    trained = [p.detach().clone() for p in params]
    storage = [p.data_ptr() for p in params]
    model.train()
    with ema_weights(model, ema) as inside:
        assert inside is model  # the model itself, not a copy of it
        assert all(torch.equal(p, s.to(p.dtype)) for p, s in zip(model.trainable_parameters(), ema.shadow_params))
        assert not any(torch.equal(p, t) for p, t in zip(model.trainable_parameters(), trained))
        assert [p.data_ptr() for p in model.trainable_parameters()] == storage  # copied into place
        model.eval()  # e.g. a grid samples in eval mode
    assert all(torch.equal(p, t) for p, t in zip(model.trainable_parameters(), trained))
    assert model.training  # the loop goes on training

    with pytest.raises(RuntimeError), ema_weights(model, ema):
        raise RuntimeError("a snapshot that failed half-way")
    assert all(torch.equal(p, t) for p, t in zip(model.trainable_parameters(), trained))

    with ema_weights(model, ema, use=False):  # model/ is saved with the training weights
        assert all(torch.equal(p, t) for p, t in zip(model.trainable_parameters(), trained))


def test_v_prediction_reaches_the_saved_schedule_and_the_loss(tmp_path, monkeypatch):
    used = []

    class Spy(train_module.DiffusionLoss):
        def __call__(self, *args):
            used.append(self.prediction)
            return super().__call__(*args)

    monkeypatch.setattr(train_module, "DiffusionLoss", Spy)
    run = train_generator(tiny_recipe(tmp_path / "v", "generator.prediction=v", "generator.duration_kimg=0.032"))
    config = json.loads((run.ema_dir / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction" and used == ["v"]


def test_diverging_loss_stops_with_the_step_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_call = train_module.DiffusionLoss.__call__

    def nan_from_step_3(self, *args):
        calls["n"] += 1
        loss = real_call(self, *args)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(train_module.DiffusionLoss, "__call__", nan_from_step_3)
    recipe = tiny_recipe(tmp_path / "run", "generator.snapshot_every_kimg=0.032", "generator.log_every_kimg=0.064")
    with pytest.raises(SynthaugError, match=r"loss became nan between step 2 and step 3; the last good state \(step 2"):
        train_generator(recipe)
    state = json.loads((tmp_path / "run" / "state" / "state.json").read_text())
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "run" / "model" / "unet" / "diffusion_pytorch_model.safetensors").values())


def test_the_progress_label_names_the_dataset_not_the_recipe(finished, tmp_path, monkeypatch):
    labels = []
    real_task = train_module.progress.task
    monkeypatch.setattr(train_module.progress, "task", lambda label, **kw: labels.append(label) or real_task(label, **kw))
    run = copy_of(finished, tmp_path)
    train_generator(tiny_recipe(run, *TWO_STEPS, "name=birds"))  # a recipe named birds that trains on digits
    assert labels == ["training on digits"]
    assert train_module.dataset_label("cub:/data/CUB_200_2011") == "cub:CUB_200_2011"


# -- resuming: the same log and grids as an uninterrupted run, and what a run's state allows -----------

# 24 steps: a log line at steps 1, 4, 7, ..., 22 and 24, a snapshot every 6 steps, a grid every 8
SCHEDULES = ("generator.duration_kimg=0.768", "generator.log_every_kimg=0.096", "generator.snapshot_every_kimg=0.192",
             "generator.grid_every_kimg=0.256")


def test_a_killed_and_resumed_run_logs_and_draws_its_grids_as_an_uninterrupted_one(tmp_path, monkeypatch):
    grids = []

    def draw(denoiser, schema, scheduler_config, recipe, path, autocast):  # a grid: which weights it was drawn from
        weights = torch.cat([p.detach().flatten() for p in denoiser.trainable_parameters()]).numpy().tobytes()
        grids.append((path.parent.parent.name, hashlib.sha256(weights).hexdigest()))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")

    monkeypatch.setattr(train_module, "save_grid", draw)
    straight = train_generator(tiny_recipe(tmp_path / "a", *SCHEDULES))
    real_clock = train_module.clock
    readings = []

    def killed_in_step_14():  # read once before the loop, then once after each step
        readings.append(1)
        if len(readings) == 15:
            raise KeyboardInterrupt  # step 14 has trained, its log line at 13 is written; the last snapshot is at 12
        return real_clock()

    monkeypatch.setattr(train_module, "clock", killed_in_step_14)
    with pytest.raises(KeyboardInterrupt):
        train_generator(tiny_recipe(tmp_path / "b", *SCHEDULES))
    assert json.loads((tmp_path / "b" / "state" / "state.json").read_text())["step"] == 12
    monkeypatch.setattr(train_module, "clock", real_clock)
    resumed = train_generator(tiny_recipe(tmp_path / "b", *SCHEDULES))

    def logged(run):
        return [(e["step"], e["kimg"], e["loss"], e["lr"]) for e in map(json.loads, run.log_file.read_text().splitlines())]

    assert [line[0] for line in logged(straight)] == [1, 4, 7, 10, 13, 16, 19, 22, 24]
    assert logged(resumed) == logged(straight)  # the same lines, each the mean loss of the same steps
    drawn = {run: [w for r, w in grids if r == run] for run in ("a", "b")}
    assert len(drawn["a"]) == 3 and drawn["b"] == drawn["a"]  # at steps 8, 16 and 24, before the kill and after
    assert snapshot(resumed.path / "ema") == snapshot(straight.path / "ema")


def test_a_run_whose_state_was_deleted_is_kept_not_retrained(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    shutil.rmtree(run / "state")
    before = snapshot(run)
    # the same recipe: the run has finished, nothing to train, nothing rewritten
    train_generator(tiny_recipe(run, *TWO_STEPS))
    assert snapshot(run) == before
    # a longer one cannot continue without the optimizer and EMA state: refused, nothing touched
    with pytest.raises(SynthaugError, match=r"state is missing, so .* \(trained 2 steps\) cannot continue exactly.*restore state/"):
        train_generator(tiny_recipe(run, "generator.duration_kimg=0.128"))
    assert snapshot(run) == before
    assert json.loads((run / "run.json").read_text())["finished"] is True


def test_a_shorter_duration_than_trained_is_refused(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    before = snapshot(run)
    with pytest.raises(SynthaugError, match=r"has already trained 0.064 kimg, more than generator.duration_kimg = 0.032 asks "
                                            r"for; set generator.duration_kimg to 0.064 or more"):
        train_generator(tiny_recipe(run, "generator.duration_kimg=0.032", "generator.grid_every_kimg=0.064"))
    assert snapshot(run) == before and "duration_kimg = 0.064" in (run / "recipe.toml").read_text()


def test_damaged_state_json_is_one_sentence(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "state" / "state.json").write_text('{"step": 2, "sha')
    with pytest.raises(SynthaugError, match=r"state\.json is damaged .*restore it, or start over with --fresh\."):
        train_generator(tiny_recipe(run, *TWO_STEPS))


# -- sampling steps the noise schedule allows ----------------------------------------------------------

@pytest.mark.parametrize("sampler, steps, prediction, message", [
    ("ddpm", 1001, "epsilon", "The ddpm sampler can take at most 1000 steps on this run's 1000-step noise schedule; use steps 1000 or fewer."),
    ("ddim", 100000, "epsilon", "The ddim sampler can take at most 1000 steps"),
    # leading spacing divides the schedule into steps + 1 parts: at 1000 steps every timestep would be 0
    ("dpm++2m", 1000, "epsilon", "The dpm++2m sampler can take at most 999 steps"),
    ("unipc", 1001, "epsilon", "The unipc sampler can take at most 999 steps"),
    ("euler", 1001, "epsilon", "The euler sampler can take at most 1000 steps"),
    ("dpm++2m", 1001, "v", "The dpm++2m sampler can take at most 1000 steps"),
    # trailing spacing overshoots to timestep -1 at some counts below the schedule's length
    ("ddim", 61, "v", "The ddim sampler cannot take 61 steps on this run's 1000-step noise schedule (diffusers would "
                      "visit a timestep outside it); use steps 60 or 62."),
    ("ddim", 0, "epsilon", "The number of sampling steps must be positive"),
])
def test_steps_beyond_the_schedule_are_one_sentence(sampler, steps, prediction, message):
    config = dict(training_scheduler(prediction=prediction).config)
    with pytest.raises(SynthaugError) as e:
        check_steps(sampler, steps, config)
    assert message in str(e.value)


def test_steps_within_the_schedule_pass_and_sampling_checks_them(finished):
    config = dict(training_scheduler().config)
    for sampler, steps in [("ddpm", 1000), ("ddim", 1000), ("dpm++2m", 999), ("unipc", 20), ("euler", 1000)]:
        check_steps(sampler, steps, config)
    gen = Generator.load(finished, device="cpu")
    gen.check_sampling(gen.sampling.replace(steps=3))
    with pytest.raises(SynthaugError, match="can take at most 1000 steps"):
        gen.check_sampling(gen.sampling.replace(sampler="ddpm", steps=1001))
    with pytest.raises(SynthaugError, match="can take at most 1000 steps"):  # not diffusers' ValueError
        sample_images(gen.denoiser, torch.tensor([3]), gen.schema.null(1), [0], gen.scheduler_config,
                      gen.sampling.replace(sampler="ddim", steps=1001))
