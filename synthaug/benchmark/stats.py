"""Statistics of classifier scores: means over seeds with t-intervals, paired gains with their tests, and paired
bootstrap intervals over the evaluation images (the other source of noise a user faces)."""

from __future__ import annotations

import math

import numpy as np


def summarize(values: list[float]) -> dict:
    """Mean, standard deviation and 95% t-interval half-width over seeds."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(v) - 1) * std / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "std": std, "ci95": half, "values": [float(x) for x in v]}


def paired_gain(arm: list[float], base: list[float]) -> dict:
    """The arm's gain over a baseline, paired by seed, with a two-sided paired t-test (alpha 0.05)."""
    from scipy import stats

    diff = np.asarray(arm) - np.asarray(base)
    out = summarize(diff.tolist())
    if np.allclose(diff, diff[0]):
        p = 1.0 if diff[0] == 0 else 0.0  # no variance: identical on every seed
    else:
        p = float(stats.ttest_rel(arm, base).pvalue)
    out.update(p_value=p, significant=bool(p < 0.05))
    return out


def min_detectable_effect(arms: list[list[float]], base: list[float], power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest gain over ``base`` a two-sided paired t-test over these seeds detects with probability
    ``power``: (t_{1-alpha/2} + t_{power}) * sd / sqrt(n), with sd the standard deviation of the per-seed
    differences, pooled over ``arms`` (each a list of per-seed scores, paired with ``base``)."""
    from scipy import stats

    n = len(base)
    if n < 2 or not arms:
        return float("nan")
    variances = [np.var(np.asarray(a) - np.asarray(base), ddof=1) for a in arms]
    sd = math.sqrt(float(np.mean(variances)))
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n))


BOOTSTRAP_DRAWS = 2000


def bootstrap_gain(arm: np.ndarray, base: np.ndarray, strata: np.ndarray | None = None, draws: int = BOOTSTRAP_DRAWS,
                   seed: int = 0) -> dict:
    """The arm's gain over a baseline with a 95% interval over the evaluation images: a paired bootstrap that
    resamples images (within each class of ``strata``, so every class keeps its count), the same draw for both
    sides and every seed.

    Args:
        arm, base: (seeds, images) per-image scores (1 right, 0 wrong; a share for several heads), paired by seed
            and image.
        strata: each image's class (None: resample all images together).

    Returns:
        {"mean": the gain averaged over seeds and images, "low", "high": the 2.5% and 97.5% quantiles of the
        resampled gains, "ci95": their half-width, "draws"}.
    """
    arm, base = np.atleast_2d(np.asarray(arm, dtype=np.float64)), np.atleast_2d(np.asarray(base, dtype=np.float64))
    diff = (arm - base).mean(0)  # per image, averaged over seeds: seed noise is the other interval's
    n = len(diff)
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    totals = np.zeros(draws)
    for rows in groups:
        picks = rows[rng.integers(0, len(rows), size=(draws, len(rows)))]
        totals += diff[picks].sum(1)
    gains = totals / n
    low, high = (float(v) for v in np.quantile(gains, [0.025, 0.975]))
    return {"mean": float(diff.mean()), "low": low, "high": high, "ci95": (high - low) / 2, "draws": draws}


def decisive_interval(seed_gain: dict, test_gain: dict | None) -> dict:
    """The interval a verdict rests on: the wider of the seed interval (classifier noise) and the bootstrap over
    evaluation images (which images the split happens to hold), both around the same mean gain.

    Returns:
        {"mean", "low", "high", "from": "seeds" or "images", "helps": low > 0, "hurts": high < 0}.
    """
    mean = seed_gain["mean"]
    seed_half = seed_gain["ci95"] if math.isfinite(seed_gain["ci95"]) else 0.0
    low, high, source = mean - seed_half, mean + seed_half, "seeds"
    if test_gain is not None and test_gain["high"] - test_gain["low"] > high - low:
        low, high, source = test_gain["low"], test_gain["high"], "images"
    return {"mean": mean, "low": low, "high": high, "from": source, "helps": bool(low > 0), "hurts": bool(high < 0)}


def paired_comparison(arm: list[float], base: list[float], arm_correct: np.ndarray | None = None,
                      base_correct: np.ndarray | None = None, strata: np.ndarray | None = None) -> dict:
    """An arm against a baseline: :func:`paired_gain` over seeds, with (given per-image scores, (seeds, images))
    ``test_sample``, the :func:`bootstrap_gain` over the evaluation images, and ``decisive``, the wider interval
    (:func:`decisive_interval`), which verdicts rest on."""
    seeds = paired_gain(arm, base)
    images = bootstrap_gain(arm_correct, base_correct, strata) if arm_correct is not None else None
    return {**seeds, "test_sample": images, "decisive": decisive_interval(seeds, images)}
