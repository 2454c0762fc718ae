"""FID and KID as numbers: the Fréchet distance against torchmetrics, seeded KID subsets, the jackknife intervals
the benchmark reports, and degenerate feature sets (constant, all zero, an SVD that does not converge)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from synthaug import fid
from synthaug.fid import fid_kid, frechet_distance


@pytest.mark.parametrize("n_real, n_fake", [(20, 30), (300, 200), (500, 40)])
def test_fid_formula_matches_torchmetrics(n_real, n_fake):
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(n_real)
    mix = torch.randn(64, 64, generator=g, dtype=torch.float64)  # correlated features, unlike `fake`
    real = torch.randn(n_real, 64, generator=g, dtype=torch.float64) @ mix
    fake = torch.randn(n_fake, 64, generator=g, dtype=torch.float64) * 1.5 + 0.3
    expected = _compute_fid(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T)).item()
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(real.numpy(), fake.numpy()) == pytest.approx(expected, rel=1e-6)


def test_kid_is_seeded():
    real, fake = np.random.default_rng(0).normal(size=(2, 30, 16))
    assert fid.kid_from_features(real, fake, 10, 4, seed=1) == fid.kid_from_features(real, fake, 10, 4, seed=1)


# -- the numbers the benchmark reports: FID, KID and their jackknife intervals -------------------------

def feature_sets(n: int, m: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d))
    b = 0.7 * rng.normal(size=(m, d)) + rng.normal(size=d) + (a[:m] if m <= n else 0) * 0.3
    return a, b


@pytest.mark.parametrize("n, m, d", [(6, 9, 16), (40, 30, 8)])  # fewer samples than dimensions, and more
def test_the_benchmark_fid_equals_torchmetrics(n, m, d):
    """frechet_distance (the one FID synthaug computes) against torchmetrics' formula on the same features, also for
    singular (constant) sets."""
    from torchmetrics.image.fid import _compute_fid

    def torchmetrics_fid(x, y):
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        return _compute_fid(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T)).item()

    a, b = feature_sets(n, m, d)
    assert frechet_distance(a, b) == pytest.approx(torchmetrics_fid(a, b), rel=1e-6, abs=1e-6)
    assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    constant = np.full((n, d), 3.0)
    assert frechet_distance(constant, b) == pytest.approx(torchmetrics_fid(constant, b), rel=1e-6, abs=1e-6)
    assert frechet_distance(constant, np.zeros((m, d))) == pytest.approx(9.0 * d)  # ||mu1 - mu2||^2 only


def mmd(x, y) -> float:
    """The unbiased MMD^2 with KID's kernel ((x.y / d + 1)^3), written out, for sets of any sizes."""
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def without_each_row(measure, a, b) -> tuple[list[float], list[float]]:
    """``measure`` recomputed on every reduced set: without each row of ``a``, and without each row of ``b``."""
    return [measure(np.delete(a, i, 0), b) for i in range(len(a))], [measure(a, np.delete(b, k, 0)) for k in range(len(b))]


def jackknife(estimate: float, *leave_one_out) -> list[float]:
    """A 95% interval (normal approximation) from the two-sample jackknife variance, written out: the sum over
    both sets of (n - 1) / n * sum_i (v_i - mean v)^2, v_i the estimate without row i."""
    var = sum((len(v) - 1) / len(v) * np.sum((np.asarray(v) - np.mean(v)) ** 2) for v in leave_one_out)
    return [estimate - 1.959964 * np.sqrt(var), estimate + 1.959964 * np.sqrt(var)]


def assert_interval(got: list[float], expected: list[float]) -> None:
    """The same interval: its ends, and its width on its own (a small width hides in the ends' tolerance)."""
    assert got == pytest.approx(expected, rel=1e-8)
    assert got[1] - got[0] == pytest.approx(expected[1] - expected[0], rel=1e-8)


def test_leave_one_out_fid_and_kid_equal_recomputing_without_each_row():
    """fid_kid's intervals, which it builds from rank-one shortcuts for the leave-one-out FID and KID, against the
    jackknife of the plain recomputation on every reduced set."""
    from torchmetrics.image.kid import poly_mmd

    a, b = feature_sets(7, 6, 5, seed=1)
    q = fid_kid(a, b, kid_subset=6, seed=0)  # a subset as large as the smaller set: KID is the full MMD, no subsets
    assert_interval(q["fid_ci95"], jackknife(frechet_distance(a, b), *without_each_row(frechet_distance, a, b)))
    assert (q["kid"], q["kid_std"]) == (pytest.approx(mmd(a, b), rel=1e-9), 0.0)
    assert_interval(q["kid_ci95"], jackknife(mmd(a, b), *without_each_row(mmd, a, b)))
    # torchmetrics' KID (which assumes sets of one size) on sets of one size: the same number
    same = a[:6]
    assert fid_kid(same, b, kid_subset=6, seed=0)["kid"] == pytest.approx(
        float(poly_mmd(torch.from_numpy(same), torch.from_numpy(b))), rel=1e-9)


def test_jackknife_interval_known_answer_and_fid_kid_uses_it():
    # the interval written out above, on a known answer:
    # var = (n-1)/n * sum (v - mean)^2 = 3/4 * (4 * 0.25) = 0.75 for [0, 0, 1, 1] (mean 0.5)
    low, high = jackknife(10.0, np.array([0.0, 0.0, 1.0, 1.0]))
    assert (low, high) == pytest.approx((10 - 1.959964 * np.sqrt(0.75), 10 + 1.959964 * np.sqrt(0.75)))
    a, b = feature_sets(8, 8, 6, seed=2)
    q = fid_kid(a, b, kid_subset=8, seed=0)  # subset == n: KID is the full unbiased MMD, no subsets
    assert q["fid"] == pytest.approx(frechet_distance(a, b))
    assert_interval(q["fid_ci95"], jackknife(q["fid"], *without_each_row(frechet_distance, a, b)))
    assert (q["kid"], q["kid_std"]) == (pytest.approx(mmd(a, b)), 0.0)
    assert_interval(q["kid_ci95"], jackknife(mmd(a, b), *without_each_row(mmd, a, b)))


# -- degenerate feature sets ---------------------------------------------------------------------------

def test_fid_of_constant_and_all_zero_feature_sets_is_finite_with_a_known_value():
    rng = np.random.default_rng(0)
    for n, d in ((10, 64), (200, 16)):  # fewer samples than dimensions, and more
        constant, zero = np.full((n, d), 3.0), np.zeros((n, d))
        varied = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        assert fid.frechet_distance(constant, constant) == 0.0 and fid.frechet_distance(zero, zero) == 0.0
        assert fid.frechet_distance(constant, zero) == pytest.approx(9.0 * d)  # ||mu1 - mu2||^2 only
        expected = np.square(varied.mean(0) - 3.0).sum() + np.trace(np.cov(varied.T))  # S_constant = 0
        assert fid.frechet_distance(constant, varied) == pytest.approx(expected, rel=1e-9)
        assert fid.frechet_distance(varied, constant) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fid.frechet_distance(np.full((4, 8), np.nan), zero[:4, :8])


def test_fid_retries_an_svd_that_does_not_converge(monkeypatch, caplog):
    real, fake = np.random.default_rng(1).normal(size=(2, 300, 8))
    expected = fid.frechet_distance(real, fake)
    original, failed = np.linalg.svd, []

    def flaky(m, *args, **kwargs):
        if not failed:
            failed.append(True)
            raise np.linalg.LinAlgError("SVD did not converge")
        return original(m, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", flaky)
    with caplog.at_level(logging.WARNING):
        assert fid.frechet_distance(real, fake) == pytest.approx(expected, rel=1e-9)
    assert failed and "did not converge" in caplog.text
