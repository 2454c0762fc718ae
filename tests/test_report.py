"""Benchmark reports: the tables' numbers, the sentences, the plots, and the sample grid."""

from __future__ import annotations

import numpy as np
import pytest

from synthaug.benchmark.arms import Arm
from synthaug.benchmark.run import Method, verdict, worth_real
from synthaug.benchmark.stats import min_detectable_effect, paired_comparison, paired_gain, summarize
from synthaug.report import arm_rows, kid_text, markdown_table, quality_rows, render_markdown, sweep_verdict, validation_rows

REAL = [0.80, 0.82, 0.84]


def arm(spec: Arm, values: list[float], base: list[float] | None = None, synthetic_set: str | None = None) -> dict:
    out = {"arm": spec.describe(), "runs": [{"top1": v, "macro_f1": v - 0.01} for v in values], "top1": summarize(values),
           "macro_f1": summarize([v - 0.01 for v in values]), "synthetic_set": synthetic_set}
    if base is not None:
        out["gain_over_real"] = paired_gain(values, base)
    return out


def quality(fid: float) -> dict:
    return {"n": 50, "fid": fid, "fid_ci95": [fid - 5, fid + 5], "floor_fid": 20.0, "kid": 0.012, "kid_std": 0.0,
            "kid_ci95": [0.010, 0.014], "floor_kid": 0.001, "kid_subset_size": 50, "conditioning": {"accuracy": 0.875},
            "memorization": {"inception": {"share": 0.04}, "pixels": {"share": 0.06}, "verdict": "no sign of copying."}}


def setting(shots: int) -> dict:
    g1, g2 = Method(1.0), Method(2.0)
    sets = {"k1": {"label": g1.label, "method": {"guidance": 1.0, "strengths": [], "min_confidence": 0.0}, "quality": quality(41.0)},
            "k2": {"label": g2.label, "method": {"guidance": 2.0, "strengths": [], "min_confidence": 0.0}, "quality": quality(40.0)},
            "k3": {"label": g2.label, "method": {"guidance": 2.0, "strengths": [], "min_confidence": 0.0}, "quality": None}}
    aug = "real + classic aug"
    arms = {"real": arm(Arm("real"), REAL),
            aug: arm(Arm(aug, augment=True), [0.81, 0.84, 0.85], REAL),
            f"{aug} + {g2.label} x0.5": arm(Arm("x", augment=True, synthetic="main", ratio=0.5), [0.85, 0.87, 0.88], REAL, "k2"),
            f"{aug} + {g2.label} x2": arm(Arm("y", augment=True, synthetic="main", ratio=2.0), [0.83, 0.86, 0.86], REAL, "k2"),
            "synthetic only (CAS)": arm(Arm("c", real=False, synthetic="main"), [0.6, 0.62, 0.64], REAL, "k2")}
    validation = {"real": arm(Arm("real"), [0.7, 0.71, 0.72]), aug: arm(Arm(aug, augment=True), [0.72, 0.73, 0.74]),
                  f"{aug} + {g1.label} x0.5": arm(Arm("a", augment=True, synthetic="main", ratio=0.5), [0.73, 0.74, 0.75], None, "k1"),
                  f"{aug} + {g2.label} x0.5": arm(Arm("b", augment=True, synthetic="main", ratio=0.5), [0.75, 0.76, 0.77], None, "k2")}
    headline = f"{aug} + {g2.label} x0.5"
    gain = paired_comparison(arms[headline]["top1"]["values"], arms[aug]["top1"]["values"])
    return {"shots_per_class": shots, "train_images": 100, "synthetic_sets": sets, "arms": arms, "validation": validation,
            "arm_sets": {n: "k2" for n in arms if n not in ("real", aug)},
            "choices": {"guidance": 2.0, "method": {"guidance": 2.0, "strengths": (), "min_confidence": 0.0}, "label": g2.label,
                        "baseline": aug, "ratio": 0.5},
            "generator": {"run": "runs/x", "kimg": 30, "train_images": 100, "train_sources_sha256": "a" * 64, "weights_sha256": "b" * 64},
            "summary": {"headline_arm": headline, "baseline_arm": aug, "gain": gain, "min_detectable_effect": 0.05,
                        "best_synthetic_arm_by_test": headline, "worth_real": None, "verdict": verdict(headline, aug, gain, 0.05)}}


def fake_report() -> dict:
    return {
        "recipe": {"name": "tiny"}, "command": "synthaug benchmark tiny", "machine": "test machine", "total_s": 12.0, "processes": 1,
        "dataset": {"spec": "digits", "train_images": 100, "val_images": 10, "test_images": 40, "classes": 10, "target": "class"},
        "classifier": {"model": "test_resnet", "pretrained": "none", "steps": 5, "batch_size": 8, "resolution": 8, "seeds": [0, 1, 2]},
        "judge": {"test_score": {"top1": 0.9}}, "fid_weights": {"sha256": "c" * 64, "source": "test"}, "fid_resize": "bilinear",
        "settings": [setting(10), setting(0)], "timings_s": {"all": 12.0},
    }


def test_arm_rows_show_the_report_numbers():
    rows = arm_rows(setting(10))
    assert [r[1] for r in rows][:2] == ["real", "real + classic aug"] and len(rows) == 5
    real, aug = rows[0], rows[1]
    assert real[0] == "10" and real[3] == "82.0 ± 5.0" and real[5] == "—" and real[6] == "—"
    gain = paired_gain([0.81, 0.84, 0.85], REAL)
    assert aug[5] == f"{100 * gain['mean']:+.1f} ± {100 * gain['ci95']:.1f}" and aug[6] == f"{gain['p_value']:.3f}"
    assert arm_rows(setting(0))[0][0] == "all"


def test_markdown_rows_match_the_json():
    report = fake_report()
    md = render_markdown(report)
    for s in report["settings"]:
        for row in arm_rows(s) + validation_rows(s):
            assert "| " + " | ".join(row) + " |" in md
    for row in quality_rows(report):
        assert "| " + " | ".join(row) + " |" in md
    assert "{" not in md and "synthaug benchmark tiny" in md
    assert md.count(setting(10)["summary"]["verdict"]) == 2  # the answer comes first, for both settings


def test_validation_rows_mark_the_choices():
    rows = validation_rows(setting(10))
    chosen = [r[1] for r in rows if "chosen" in r[1]]
    assert chosen == ["real + classic aug **(chosen baseline)**", "real + classic aug + synthetic (guidance 2) x0.5 **(chosen)**"]
    s = setting(10)
    s["choices"]["chosen"] = False  # the choice rule: the best candidate's validation gain was within its uncertainty
    assert [r[1] for r in validation_rows(s) if "chosen" in r[1]][1] == \
        "real + classic aug + synthetic (guidance 2) x0.5 (best candidate, not chosen)"


def test_quality_rows_skip_unmeasured_sets_and_show_intervals():
    report = fake_report()
    rows = quality_rows(report)
    assert len(rows) == 4  # two measured sets per setting; the candidate-only one is left out
    assert rows[1][:6] == ["10", "synthetic (guidance 2)", "40.0 [35.0, 45.0] (floor 20.0)", "12.0 [10.0, 14.0] (floor 1.0)", "50", "87.5"]
    assert rows[1][6] == "62.0 ± 5.0" and rows[0][6] == "—"  # CAS belongs to the set it was trained on
    assert rows[1][7] == "4.0 / 6.0"


def test_variations_show_copying_proper_their_own_source_and_the_judges_that_never_saw_it():
    report = fake_report()
    variations = {**quality(30.0), "conditioning": {"accuracy": 0.5, "judges": {"cross_fitted": 50, "full_judge": 0, "real_test_top1": 0.4}},
                  "memorization": {"inception": {"share": 0.9, "copying": {"share": 0.02}, "own_source": {"within_threshold": 0.88}},
                                   "pixels": {"share": 1.0, "copying": {"share": 0.04}, "own_source": {"within_threshold": 1.0}},
                                   "verdict": "v"}}
    plain = {**quality(90.0), "conditioning": {"accuracy": 0.1, "judges": {"cross_fitted": 0, "full_judge": 50, "real_test_top1": 0.9}},
             "memorization": {"inception": {"share": 0.0}, "pixels": {"share": 0.0}, "off_distribution": {"ratio": 2.4}, "verdict": "p"}}
    s = report["settings"][0]
    s["synthetic_sets"]["k1"]["quality"], s["synthetic_sets"]["k2"]["quality"] = plain, variations
    rows = {r[1]: r for r in quality_rows({**report, "settings": [s]})}
    varied, drawn = rows["synthetic (guidance 2)"], rows["synthetic (guidance 1)"]
    assert varied[5] == "50.0 (half judges; real test 40.0)" and drawn[5] == "10.0 (full judge; real test 90.0)"
    assert varied[7] == "copying 2.0 / 4.0; near own source 88.0 / 100.0"
    assert drawn[7] == "0.0 / 0.0 (off the data: 2.4x the test distance)"
    md = render_markdown({**report, "settings": [s]})
    assert "| " + " | ".join(varied) + " |" in md
    assert "scoring only the variations of the other half's" in md and "other than their own source" in md


def test_one_guidance_scale_is_not_called_chosen():
    s = setting(10)
    assert sweep_verdict(s).startswith("Guidance chosen on validation: **2**")
    s["validation"] = {k: v for k, v in s["validation"].items() if "guidance 1" not in k}
    assert "Only one guidance scale (2) was tried" in sweep_verdict(s)


def test_kid_text():
    q = quality(1.0)
    assert kid_text(q) == "12.0 [10.0, 14.0] (floor 1.0)"
    old = {k: v for k, v in q.items() if k != "kid_ci95"}
    assert kid_text({**old, "kid_std": 0.002, "kid_subset_size": 25}) == "12.0 ± 2.0 (floor 1.0)"


def test_markdown_table():
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_verdicts_say_what_to_do():
    win = paired_comparison([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])
    assert verdict("A", "B", win, 0.02).startswith("Worth running: A beats B by +10.7 points")
    lose = paired_comparison([0.7, 0.71, 0.7], [0.8, 0.8, 0.81])
    assert verdict("A", "B", lose, 0.02).startswith("Not worth running: A is worse than B")
    null = paired_comparison([0.8, 0.82, 0.8], [0.81, 0.8, 0.81])
    assert "only a gain of about 2.0 points would be detected" in verdict("A", "B", null, 0.02)


def test_a_win_over_real_only_must_also_beat_classic_augmentation():
    """Validation may choose plain real as the baseline; a synthetic arm (always on top of classic augmentation) that
    beats it but not real + classic aug is not called worth running: the gain would be classic augmentation's."""
    over_real = paired_comparison([0.184, 0.186, 0.183], [0.167, 0.169, 0.166])
    behind_aug = paired_comparison([0.184, 0.186, 0.183], [0.191, 0.192, 0.190])
    text = verdict("A", "real", over_real, 0.01, behind_aug)
    assert text.startswith("Not shown to help beyond classic augmentation: A beats real by +1.7 points")
    assert "against real + classic aug (the same training without the synthetic images) it is -0.7 points" in text
    ahead_of_aug = paired_comparison([0.184, 0.186, 0.183], [0.170, 0.171, 0.170])
    assert verdict("A", "real", over_real, 0.01, ahead_of_aug).startswith("Worth running: A beats real")
    assert verdict("A", "real + classic aug", over_real, 0.01, over_real).startswith("Worth running")


def test_the_answer_names_the_gain_over_classic_augmentation_when_validation_chose_real():
    report = fake_report()
    s = report["settings"][0]
    s["summary"]["baseline_arm"] = "real"
    s["summary"]["gain_vs_classic_aug"] = paired_gain([0.75, 0.76, 0.77], [0.74, 0.76, 0.78])
    assert "- Against real + classic aug (the same training without the synthetic images): +0.0 points" in render_markdown(report)
    s["summary"]["baseline_arm"] = "real + classic aug"
    assert "- Against real + classic aug" not in render_markdown(report)


def test_min_detectable_effect_known_answer():
    from scipy import stats

    base = [0.5, 0.6, 0.7, 0.8]
    arm_ = [0.52, 0.61, 0.73, 0.80]
    sd = np.std(np.array(arm_) - np.array(base), ddof=1)
    expected = (stats.t.ppf(0.975, 3) + stats.t.ppf(0.8, 3)) * sd / 2
    assert min_detectable_effect([arm_], base) == pytest.approx(expected)


def test_worth_real_interpolates_on_the_real_curve():
    from types import SimpleNamespace

    def top1(mean, ci=0.01):
        return {"top1": {"mean": mean, "ci95": ci}}

    arms = {"real + classic aug": top1(0.60), "real + classic aug, 2x real (20/class)": top1(0.70),
            "real + classic aug, 4x real (40/class)": top1(0.80), "syn": top1(0.75)}
    s = SimpleNamespace(arms=arms, train=list(range(100)), shots=10, more_real={2: list(range(200)), 4: list(range(400))})
    w = worth_real(s, "syn")
    assert w["how"] == "about" and w["per_class"] == pytest.approx(20 * np.sqrt(2), rel=1e-6)  # half way in log images
    assert worth_real(SimpleNamespace(arms={**arms, "syn": top1(0.9)}, train=s.train, shots=10, more_real=s.more_real),
                      "syn")["how"] == "at least"
    assert worth_real(SimpleNamespace(arms=arms, train=s.train, shots=0, more_real={}), "syn") is None


def test_the_test_set_of_the_chosen_method_is_not_a_second_sweep_point_and_is_told_apart():
    """The chosen guidance's candidate set (drawn for the sweep ratio) and its larger test set share a label: the
    sweep lists the candidate once, and the quality table says which set each row is."""
    from synthaug.report import sweep_points

    s = setting(10)
    big = {**s["synthetic_sets"]["k2"], "quality": quality(35.0), "ratio": 2.0}
    s["synthetic_sets"] = {**{k: {**v, "ratio": 0.5} for k, v in s["synthetic_sets"].items()}, "k4": big}
    assert [p["guidance"] for p in sweep_points(s)] == [1.0, 2.0]
    assert [p["quality"]["fid"] for p in sweep_points(s)] == [41.0, 40.0]
    labels = [r[1] for r in quality_rows({**fake_report(), "settings": [s]})]
    assert labels == ["synthetic (guidance 1)", "synthetic (guidance 2) (drawn for x0.5)", "synthetic (guidance 2) (drawn for x2)"]


def test_arms_say_how_many_images_they_drew_from_and_near_empty_sets_are_named():
    s = setting(10)
    headline = s["summary"]["headline_arm"]
    s["arms"]["real"]["training_images"] = {"real": 100, "synthetic": 0}
    s["arms"][headline]["training_images"] = {"real": 100, "synthetic": 1250}
    rows = {r[1]: r for r in arm_rows(s)}
    assert rows["real"][2] == "100" and rows[headline][2] == "100 + 1,250"
    assert rows["real + classic aug"][2] == "—"  # an older report without the counts
    s["choices"]["not_candidates"] = [{"label": "synthetic (guidance 2), filtered p>=0.9", "kept": 3, "asked": 50}]
    s["choices"]["min_kept_share"] = 0.1
    report = fake_report()
    report["settings"][0] = s
    md = render_markdown(report)
    assert ("Not a candidate: synthetic (guidance 2), filtered p>=0.9 kept 3 of the 50 synthetic images x0.5 asks for "
            "(less than 10%), so it was neither chosen nor ranked.") in md


def test_labels_say_what_the_classes_hold_what_the_dataset_is_and_how_the_classifier_trained():
    from synthaug.classifier import ClassifierConfig
    from synthaug.report import classifier_text, per_class_text

    s = setting(10)
    assert per_class_text(s) == "10 real images per class"  # an older report: no counts
    s["per_class"] = [3, 6]  # classes smaller than the 10 asked for
    assert per_class_text(s) == "10 real images per class asked (the classes hold 3-6)"
    s["per_class"] = [10, 10]
    assert per_class_text(s) == "10 real images per class"
    assert per_class_text({"shots_per_class": 0, "per_class": [22, 22]}) == "all real images (22 per class)"
    report = fake_report()
    report["settings"][0]["per_class"] = [3, 6]
    assert "**10 real images per class asked (the classes hold 3-6).**" in render_markdown(report)
    report["dataset"]["name"] = "imagefolder-bars"
    assert render_markdown(report).startswith("# synthaug benchmark: imagefolder-bars (recipe tiny)")
    scratch = ClassifierConfig.from_benchmark(steps=3)  # test_resnet, no pretrained weights
    assert scratch.describe() == "test_resnet, trained from scratch" and "none weights" not in classifier_text(report["classifier"])
    assert classifier_text(report["classifier"]) == "test_resnet, trained from scratch"
    assert classifier_text({"model": "m", "pretrained": "offline"}) == "m, fine-tuned from ImageNet weights (offline)"


def test_the_readme_quotes_the_committed_digits_report():
    """Issue 27: README numbers must be the committed report's (a stale digits section had numbers with no report)."""
    import json
    from pathlib import Path

    from synthaug.report import interval

    root = Path(__file__).resolve().parents[1]
    report = json.loads((root / "benchmarks/results/digits_benchmark/report.json").read_text())
    readme = (root / "README.md").read_text()
    section = readme[readme.index("### What the main job measured"):readme.index("## Real birds and faces on a CPU")]
    assert report["provenance"]["commit"][:7] in section and not report["provenance"]["dirty"]
    assert not report["provenance"]["reused_stages"] and not report["provenance"]["reused_generators"]
    for name, arm in report["settings"][0]["arms"].items():
        assert interval(arm["top1"]) in section, name
    for syn in report["settings"][0]["synthetic_sets"].values():
        q = syn["quality"]
        if q is not None and syn["images"] >= 98:  # the README lists the sets drawn for x1 (the test arms)
            assert f"{q['fid']:.1f} [{q['fid_ci95'][0]:.1f}, {q['fid_ci95'][1]:.1f}]" in section, syn["label"]
    assert f"**{report['total_s'] // 60:.0f} min" in section or f"({report['total_s']:.0f} s inside" in section
