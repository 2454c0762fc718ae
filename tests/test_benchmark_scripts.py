"""The performance benchmarks in benchmarks/ compare like with like (no timings are asserted here)."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def members(path: Path) -> list[tuple[str, bytes, int]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read(), m.mtime) for m in tar if m.isfile()]


def test_shard_benchmark_writes_the_same_members_on_both_sides(tmp_path):
    import bench_shards

    rng = np.random.default_rng(0)
    samples = bench_shards.encoded_samples(rng.integers(0, 255, (12, 8, 8, 1), dtype=np.uint8), np.arange(12) % 3,
                                           ["a", "b", "c"])
    shards = [samples[:5], samples[5:10], samples[10:]]
    (tmp_path / "ours").mkdir()
    (tmp_path / "ref").mkdir()
    bench_shards.synthaug_write(tmp_path / "ours", shards, [[json.loads(s["json"])["class_name"] for s in shard] for shard in shards])
    bench_shards.tarfile_write(tmp_path / "ref", shards)
    for k in range(3):
        name = f"synth-{k:06d}.tar"
        assert members(tmp_path / "ours" / name) == members(tmp_path / "ref" / name)
    assert (tmp_path / "ours" / "manifest.json").is_file()


@pytest.mark.slow
def test_training_benchmark_trains_the_same_network_on_both_sides_repeatedly(tmp_path, monkeypatch):
    import bench_train

    from synthaug.conditions import ConditionSchema
    from synthaug.generator.model import build_denoiser

    monkeypatch.setenv("SYNTHAUG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(bench_train.CONFIGS, "digits8", ("digits", 8, 32, 0.1, 0.1))
    row = bench_train.measure("digits8", 0.1, 1, "cpu", tmp_path, ["generator.base_channels=8"], repeats=2)
    assert row["train_images"] == len(list((tmp_path / "digits8-files").glob("*.png"))) > 1000
    # the override reached both loops (and the ceiling): the same, smaller U-Net everywhere
    schema = ConditionSchema("class", tuple("0123456789"), tuple(range(10)), resolution=8, channels=1)
    small = sum(p.numel() for p in build_denoiser(schema, "tiny", base_channels=8).parameters())
    assert small < sum(p.numel() for p in build_denoiser(schema, "tiny").parameters())
    for side in ("synthaug", "reference", "unet_only"):
        assert [m["parameters"] for m in row[side]["runs"]] == [small, small]
    # the digits recipe does not flip, and neither does the reference
    assert row["flip"] is False and all(m["flip"] is False for m in row["reference"]["runs"] + row["synthaug"]["runs"])
    # each side ran twice; the headline is the ratio of the medians, with its per-repeat range
    ref, ours = row["reference"]["images_per_s"], row["synthaug"]["images_per_s"]
    assert len(ref["runs"]) == len(ours["runs"]) == 2 and ref["min"] <= ref["median"] <= ref["max"]
    assert row["speedup"] == round(ours["median"] / ref["median"], 2)
    assert row["speedup_range"][0] <= row["speedup_range"][1]
    assert all(m["measured_images"] == (row["steps"] - 1) * 32 for m in row["reference"]["runs"])


def test_like_for_like_sampling_row_differs_only_in_the_guidance_forward():
    """Two forwards per step (conditional, then null) draw exactly the images of the batched forward, with
    twice the network calls: the row isolates what batching the guidance forward adds."""
    import dataclasses

    import torch

    import bench_sampling
    from synthaug.conditions import ConditionSchema
    from synthaug.generator.model import build_denoiser
    from synthaug.generator.pipeline import Generator, plan_conditions
    from synthaug.generator.sampling import training_scheduler
    from synthaug.recipe import SamplingConfig

    torch.manual_seed(0)
    schema = ConditionSchema("class", tuple("0123"), tuple(range(4)), resolution=8, channels=1)
    denoiser = build_denoiser(schema, "tiny", base_channels=8).eval()
    gen = Generator(None, denoiser, schema, dict(training_scheduler().config), torch.device("cpu"), None, SamplingConfig())
    sampling = dataclasses.replace(gen.sampling, steps=3, batch_size=6, network_batch=12)
    plan = plan_conditions(gen.all_classes(), [2] * 4, 0)
    conditions, seeds = [c for c, _, _ in plan], [s for _, _, s in plan]
    calls = []
    denoiser.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    batched = gen.sample_conditions(conditions, seeds, sampling)
    batched_calls, calls[:] = list(calls), []
    two = bench_sampling.two_forward_sample(gen, conditions, seeds, sampling)
    assert np.array_equal(batched, two) and batched.std() > 0
    # 8 images in chunks of 6 and 2: 12 + 4 rows per step batched (one call each), 6 + 6 and 2 + 2 as two calls each
    assert len(batched_calls) == 2 * 3 and len(calls) == 4 * 3 and set(calls) == set(batched_calls) == {12}


def test_time_to_quality_applies_model_settings_to_both_sides_and_method_settings_to_synthaug_only():
    import bench_time_to_quality as ttq

    args = ttq.parse_args(["--set", "generator.base_channels=16", "--set", "generator.lr=1e-3",
                           "--variant", "a", "--variant", "b", "--set", "generator.prediction=epsilon"])
    assert args.settings == ["generator.base_channels=16", "generator.lr=1e-3"]
    assert args.variants == [{"name": "a", "settings": []}, {"name": "b", "settings": ["generator.prediction=epsilon"]}]
    base, recipes = ttq.recipes_for(ttq.DATA["digits"], args.settings, args.variants, Path("/tmp/unused"))
    assert base.generator.base_channels == 16 and base.generator.lr == 2e-3  # the reference: model size only
    assert recipes["a"].generator.base_channels == 16 and recipes["a"].generator.lr == 1e-3
    assert recipes["b"].generator.prediction == "epsilon" and recipes["a"].generator.prediction == "v"
    with pytest.raises(SystemExit, match="both sides must share; give it before the first --variant"):
        ttq.parse_args(["--variant", "a", "--set", "generator.batch_size=64"])
    with pytest.raises(SystemExit, match="chosen by this benchmark"):
        ttq.parse_args(["--set", "run_dir=/tmp/x"])


class TickingClock:
    """A clock that moves 0.25 s each time it is read: the snapshot schedule without depending on the machine's speed."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.25
        return self.t


@pytest.mark.slow
def test_time_to_quality_snapshots_both_sides_on_the_clock_and_judges_them(tmp_path, monkeypatch, fid_weights):
    import bench_time_to_quality as ttq

    from synthaug.conditions import ConditionSchema
    from synthaug.generator.model import build_denoiser

    monkeypatch.setenv("SYNTHAUG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ttq.Snapshots, "clock", staticmethod(TickingClock()))
    result = ttq.run("digits", budget_s=4.0, every_s=2.0, fid_images=12, settings=["generator.base_channels=8",
                     "generator.batch_size=32", "generator.lr=1e-3"], variants=[{"name": "recipe", "settings": []}],
                     reference_warmup_steps=2, device="cpu", work=tmp_path)
    ref, ours = result["reference"], result["variants"]["recipe"]
    schema = ConditionSchema("class", tuple("0123456789"), tuple(range(10)), resolution=8, channels=1)
    assert ref["parameters"] == ours["parameters"] == sum(p.numel() for p in build_denoiser(schema, "tiny", base_channels=8).parameters())
    # the reference trains the diffusers example's way; the method override went to synthaug only
    assert (ref["method"]["lr"], ref["method"]["schedule"], ref["method"]["prediction"]) == (1e-4, "linear", "epsilon")
    assert ref["recipe"]["generator"]["batch_size"] == ours["recipe"]["generator"]["batch_size"] == 32
    assert ours["recipe"]["generator"]["lr"] == 1e-3 and ours["train"]["stopped_at_budget"]
    for side in (ref, ours):
        rows = side["snapshots"]
        # a snapshot at the first step past 2 s and at the first past the 4 s budget, which ends the run
        assert [r["time_s"] >= t for r, t in zip(rows, (2.0, 4.0))] == [True, True] and len(rows) == 2
        assert rows[0]["time_s"] < 4.0 and 0 < rows[0]["step"] < rows[1]["step"]
        assert rows[1]["kimg"] == rows[1]["step"] * 32 / 1000
        assert all(r["fid_ci95"][0] <= r["fid"] <= r["fid_ci95"][1] for r in rows)
    assert result["target_fid"] == ref["snapshots"][-1]["fid"]
    assert result["reference_time_to_target_s"] <= ref["snapshots"][-1]["time_s"]
    assert result["real"]["n"] == 12 and result["real"]["floor_fid"] > 0
    text = ttq.markdown({**result, "machine": "test", "date": "today"})
    assert "| reference (diffusers example) |" in text and "## synthaug: recipe" in text


def test_gpu_check_builds_the_real_sizes_of_the_text_recipes_parts():
    import torch

    import gpu_check

    with torch.device("meta"):
        parts = gpu_check.stable_diffusion_parts(gpu_check.stable_diffusion_configs(False, 0, 77))
        from transformers import T5EncoderModel

        t5 = T5EncoderModel(gpu_check.t5_config(False, 0))
    millions = {k: round(sum(p.numel() for p in m.parameters()) / 1e6, 1) for k, m in {**parts, "t5": t5}.items()}
    assert millions == {"text_encoder": 123.1, "unet": 859.5, "vae": 83.7, "t5": 341.2}


@pytest.mark.slow
def test_gpu_check_dry_runs_every_stage_of_every_recipe(tmp_path):
    import subprocess

    out = tmp_path / "gpu.json"
    env = {**__import__("os").environ, "SYNTHAUG_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--dry", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry"] and set(result["recipes"]) == {"cub", "cars", "faces", "birds", "birds-imagen", "birds-sd-lora"}
    for name, r in result["recipes"].items():
        assert r["status"] == "ok", (name, r["status"])
        assert set(r["stages"]) == {"prepare", "train", "generate", "benchmark", "train_compiled"}, name
        assert r["stages"]["train"]["steps"] == r["stages"]["train_compiled"]["steps"] == 2
        assert r["stages"]["train_compiled"]["compile"] and not r["stages"]["train"]["compile"]
        assert r["stages"]["generate"]["images"] == 4 and r["stages"]["benchmark"]["fid_features"]["images"] == 4
    sd = result["recipes"]["birds-sd-lora"]["stages"]["train"]
    assert 0 < sd["parameters_trained"] < sd["parameters"]  # the LoRA alone trains
    assert result["recipes"]["faces"]["stages"]["benchmark"]["judge"]["images_per_s"] > 0
    assert "| birds-imagen |" in done.stdout  # the table


@pytest.mark.slow
def test_gpu_check_keeps_a_recipe_in_a_child_process_within_its_limit(tmp_path):
    import subprocess

    out = tmp_path / "gpu.json"
    env = {**__import__("os").environ, "SYNTHAUG_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--dry", "--isolate", "--recipes", "cars",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r = json.loads(out.read_text())["recipes"]["cars"]
    assert r["status"] == "ok" and r["time_limit_s"] > 0 and "train_compiled" in r["stages"]


@pytest.mark.slow
def test_every_gpu_recipe_states_the_cost_its_flop_count_gives():
    """The training cost written in each GPU recipe's header is what benchmarks/recipe_cost.py computes today."""
    import re

    import recipe_cost

    for name in recipe_cost.CONDITIONS:
        row = recipe_cost.cost(name)
        assert row["training_pflop"] == pytest.approx(row["duration_kimg"] * 1e3 * row["forward_gflop_per_image"] * 1e9
                                                      * (2 if name == "birds-sd-lora" else 3) / 1e15, rel=1e-3)
        header = (BENCHMARKS.parent / "recipes" / f"{name}.toml").read_text()
        stated = re.search(r"Cost, computed from FLOP counts.*?: ([\d.]+) GFLOP\n# per image forward, ([\d,]+) PFLOP for "
                           r"([\d,]+) kimg: about ([\d.]+)-([\d.]+) h", header, re.S)
        assert stated, name
        assert float(stated[1]) == row["forward_gflop_per_image"] and int(stated[2].replace(",", "")) == round(row["training_pflop"])
        assert (float(stated[4]), float(stated[5])) == tuple(row["training_hours_h100"])


def test_the_reference_trains_full_batches_on_a_set_smaller_than_one_batch(tmp_path):
    """10 images and a batch of 16 (a few shots per class): the reference still steps, with the full batch
    (it once looped forever: drop_last left no batch at all)."""
    from harness import ReferenceMethod, reference_training
    from PIL import Image

    from synthaug.conditions import ConditionSchema
    from synthaug.generator.model import build_denoiser

    files = []
    for i in range(10):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
        files.append((tmp_path / f"{i}.png", i % 2))
    schema = ConditionSchema("class", ("a", "b"), (0, 1), resolution=8, channels=1)
    model = build_denoiser(schema, "tiny", base_channels=8)
    steps = reference_training(files, schema, model, ReferenceMethod(warmup_steps=1), 16, "cpu")
    seen = [next(steps) for _ in range(3)]
    assert [s.step for s in seen] == [1, 2, 3] and [s.images for s in seen] == [16, 32, 48]


def test_compare_grid_puts_real_and_each_synthetic_set_side_by_side_per_class(digits_run, tmp_path):
    from PIL import Image

    import compare_grid

    from synthaug.synthesis import write_shards

    side = 8  # the digits' own size, which the tiny run trains at
    write_shards(digits_run.path, tmp_path / "plain", per_class=3, steps=2)
    write_shards(digits_run.path, tmp_path / "vary", per_class=3, steps=2, from_real=True, strength=0.5)
    out = compare_grid.main(["--data", "digits", "--resolution", str(side), "--rows", "4",
                             "--set", f"synthetic={tmp_path / 'plain'}", "--set", f"variations={tmp_path / 'vary'}",
                             "--out", str(tmp_path / "grid.png")])
    grid = np.asarray(Image.open(out))
    tile = 2 * (side + 2)  # tiles of the resolution, 2 px apart, enlarged twice
    columns = 3 * 3 + 2  # 3 real | blank | 3 synthetic | blank | 3 variations
    assert grid.shape[0] == 2 * (4 * (side + 2) + 2) and grid.shape[1] > columns * tile  # 4 class rows and a name margin
