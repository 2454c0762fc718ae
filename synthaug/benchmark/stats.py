"""Statistics over classifier seeds: means with t-intervals, and paired gains with their tests."""

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
