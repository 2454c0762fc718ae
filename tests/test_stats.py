"""Statistics of classifier scores: t-intervals over seeds, paired gains, the bootstrap over evaluation images, and
which interval a verdict rests on."""

from __future__ import annotations

import numpy as np
import pytest

from synthaug.benchmark.run import verdict
from synthaug.benchmark.stats import bootstrap_gain, decisive_interval, paired_comparison, paired_gain, summarize


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


def test_the_bootstrap_over_images_is_paired_and_stratified():
    rng = np.random.default_rng(0)
    base = (rng.random((3, 400)) < 0.6).astype(float)
    same = bootstrap_gain(base, base)
    assert same == {**same, "mean": 0.0, "low": 0.0, "high": 0.0}  # paired: identical scores, no spread
    better = base.copy()
    better[:, :40] = 1.0  # right on 40 more images (of those it had wrong)
    g = bootstrap_gain(better, base, strata=np.repeat(np.arange(4), 100))
    assert g["mean"] == pytest.approx((better - base).mean()) and 0 < g["low"] < g["mean"] < g["high"]
    assert g == bootstrap_gain(better, base, strata=np.repeat(np.arange(4), 100))  # seeded: the same every time


def test_a_verdict_follows_the_wider_of_the_seed_and_test_image_intervals():
    """Issue 27: a linear probe's seeds share features, so its seed interval is narrow (real + classic aug at CUB 5
    shots: 19.1 ± 0.1) while which 300 test images a split holds moves the gain by points. The verdict must not call
    a gain significant on seed noise alone."""
    rng = np.random.default_rng(1)
    n = 300
    base = np.repeat((rng.random(n) < 0.5).astype(float)[None], 3, axis=0)
    arm = base.copy()
    flip_up, flip_down = rng.choice(n, 30, replace=False), None
    arm[:, flip_up] = 1.0 - arm[:, flip_up]  # 30 images change: a gain of a few points that the image sample makes noisy
    flip_down = np.flatnonzero(arm[0] != base[0])
    seeds_arm = (arm.mean(1) + [0.0, 0.0005, -0.0005]).tolist()  # seed scores that barely move: a narrow t-interval
    seeds_base = base.mean(1).tolist()
    g = paired_comparison(seeds_arm, seeds_base, arm, base)
    narrow = paired_gain(seeds_arm, seeds_base)
    assert len(flip_down) == 30 and narrow["ci95"] < 0.005
    assert narrow["significant"]  # on seed noise alone, the gain looks certain
    assert g["decisive"]["from"] == "images" and g["decisive"]["low"] < 0 < g["decisive"]["high"]
    text = verdict("A", "real + classic aug", g, 0.01)
    assert not text.startswith(("Worth running", "Not worth running")) and "over the evaluation images" in text
    wide_seeds = {**narrow, "ci95": 1.0}
    assert decisive_interval(wide_seeds, g["test_sample"])["from"] == "seeds"


def test_nothing_is_chosen_when_the_validation_gain_is_within_its_uncertainty():
    val = paired_comparison([0.71, 0.69, 0.72], [0.70, 0.70, 0.70])
    test = paired_comparison([0.80, 0.81, 0.82], [0.70, 0.70, 0.71])
    text = verdict("A", "real + classic aug", test, 0.01, chosen=False, validation=val)
    assert text.startswith("Nothing chosen: no synthetic method's validation gain over real + classic aug was larger than its "
                           "uncertainty (the best candidate gained +0.7 points on validation")
    assert "For information, A vs real + classic aug on test: +10.7 points" in text
