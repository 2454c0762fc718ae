"""Benchmark reports: the tables' numbers, the sentences, the plots, and the sample grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from synthaug.benchmark.arms import Arm
from synthaug.benchmark.stats import paired_gain, summarize
from synthaug.report import arm_rows, kid_text, markdown_table, quality_rows, render_markdown, sweep_verdict, write_report


def arm(spec: Arm, values: list[float], base: list[float] | None = None) -> dict:
    out = {"arm": spec.describe(), "runs": [{"top1": v} for v in values], "top1": summarize(values),
           "macro_f1": summarize([v - 0.01 for v in values])}
    if base is not None:
        out["gain_over_real"] = paired_gain(values, base)
    return out


def quality(fid: float) -> dict:
    return {"n": 50, "fid": fid, "floor_fid": 20.0, "kid": 0.012, "kid_std": 0.002, "floor_kid": 0.001,
            "floor_kid_std": 0.0, "kid_subset_size": 25, "conditioning": {"accuracy": 0.875}}


def setting(shots: int) -> dict:
    real = [0.80, 0.82, 0.84]
    return {"shots_per_class": shots, "train_images": 100, "quality": quality(40.0),
            "generator": {"run": "runs/x", "train_images": 100, "train_sources_sha256": "a" * 64, "weights_sha256": "b" * 64},
            "synthetic": {"folder": "s", "images": 200, "guidance": 2.0},
            "arms": {"real": arm(Arm("real"), real),
                     "real + classic aug": arm(Arm("real + classic aug", augment=True), [0.81, 0.84, 0.85], real),
                     "real + synthetic x0.5": arm(Arm("real + synthetic x0.5", synthetic="main", ratio=0.5), [0.85, 0.87, 0.88], real),
                     "real + synthetic x2": arm(Arm("real + synthetic x2", synthetic="main", ratio=2.0), [0.83, 0.86, 0.86], real),
                     "synthetic only (CAS)": arm(Arm("synthetic only (CAS)", real=False, synthetic="main"), [0.6, 0.62, 0.64], real)}}


def fake_report(points=(1.0, 2.0)) -> dict:
    return {
        "recipe": {"name": "tiny"}, "command": "synthaug benchmark tiny", "machine": "test machine", "total_s": 12.0,
        "dataset": {"spec": "digits", "train_images": 100, "test_images": 40, "classes": 10, "target": "class"},
        "classifier": {"model": "test_resnet", "pretrained": "none", "steps": 5, "batch_size": 8, "resolution": 8, "seeds": [0, 1, 2]},
        "judge": {"test_score": {"top1": 0.9}}, "fid_weights": {"sha256": "c" * 64, "source": "test"}, "fid_resize": "bilinear",
        "settings": [setting(10), setting(0)],
        "guidance_sweep": {"shots_per_class": 0, "ratio": 0.5, "best_downstream_guidance": points[0],
                           "points": [{"guidance": g, "quality": quality(30 + g), "downstream_top1": summarize([0.8 + g / 100] * 2 + [0.81])}
                                      for g in points]},
        "timings_s": {"all": 12.0},
    }


def test_arm_rows_show_the_report_numbers():
    rows = arm_rows(setting(10))
    assert [r[1] for r in rows] == ["real", "real + classic aug", "real + synthetic x0.5", "real + synthetic x2", "synthetic only (CAS)"]
    real, aug = rows[0], rows[1]
    assert real[0] == "10" and real[2] == "82.0 ± 5.0" and real[4] == "—" and real[5] == "—"
    gain = paired_gain([0.81, 0.84, 0.85], [0.80, 0.82, 0.84])
    assert aug[4] == f"{100 * gain['mean']:+.1f} ± {100 * gain['ci95']:.1f}" and aug[5] == f"{gain['p_value']:.3f}"
    assert arm_rows(setting(0))[0][0] == "all"


def test_markdown_rows_match_the_json():
    report = fake_report()
    md = render_markdown(report)
    for s in report["settings"]:
        for row in arm_rows(s):
            assert "| " + " | ".join(row) + " |" in md
    for row in quality_rows(report):
        assert "| " + " | ".join(row) + " |" in md
    assert "{" not in md and "synthaug benchmark tiny" in md


def test_one_guidance_scale_is_not_called_best():
    assert "Only one guidance scale (2) was measured" in sweep_verdict(fake_report(points=(2.0,))["guidance_sweep"])
    two = sweep_verdict(fake_report()["guidance_sweep"])
    assert two.startswith("Best downstream guidance: **") and "overlaps" in two  # identical spreads overlap


def test_kid_text_shows_a_spread_only_for_subsets():
    q = quality(1.0)
    assert kid_text(q) == "12.0 ± 2.0 (floor 1.0)"
    assert kid_text({**q, "kid_subset_size": 50}) == "12.0 (floor 1.0)"


def test_markdown_table():
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_write_report_writes_every_file(tmp_path):
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    real = SimpleNamespace(num_classes=10, class_names=[str(c) for c in range(10)], images=rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8),
                           labels=np.arange(40) % 10)
    syn = SimpleNamespace(class_names=[str(c) for c in range(10)], images=rng.integers(0, 255, (30, 8, 8, 1), dtype=np.uint8),
                          labels=np.arange(30) % 10)
    write_report(fake_report(), tmp_path, real, syn)
    for name in ("report.json", "report.md", "accuracy_vs_ratio.png", "guidance_sweep.png", "samples.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    with Image.open(tmp_path / "samples.png") as im:
        # 10 class rows of 4 real + a blank + 4 synthetic 8-px tiles with 2-px gaps, upscaled x6 to reach 600 px
        assert im.size == (6 * (9 * 10 + 2), 6 * (10 * 10 + 2))


@pytest.mark.parametrize("shots", [5, 0])
def test_quality_rows(shots):
    report = fake_report()
    report["settings"] = [setting(shots)]
    row = quality_rows(report)[0]
    assert row[:5] == [str(shots or "all"), "40.0 (floor 20.0)", "12.0 ± 2.0 (floor 1.0)", "50", "87.5"]
    assert row[5] == "62.0 ± 5.0"
