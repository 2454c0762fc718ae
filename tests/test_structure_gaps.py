"""Issue 12 audit: tests for pieces the benchmark and the training loop rely on that had no test of their own.

- ``train.ema_weights``: grids and snapshots take the EMA weights through diffusers' store / copy_to / restore.
- ``benchmark.evaluate``: the FID, KID and jackknife intervals the report prints (until now only checked by
  ``fid_ci95[0] <= fid <= fid_ci95[1]``, which holds for any number).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthaug.fid import _fid_leave_one_out, _jackknife, _kid_leave_one_out, fid_kid, frechet_distance
from synthaug.conditions import ConditionSchema
from synthaug.generator.model import build_denoiser
from synthaug.generator.train import ema_weights


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


def test_leave_one_out_fid_and_kid_equal_recomputing_without_each_row():
    """The jackknife's rank-one shortcuts against the plain recomputation on every reduced set."""
    from torchmetrics.image.kid import poly_mmd

    a, b = feature_sets(7, 6, 5, seed=1)
    brute = [frechet_distance(np.delete(a, i, 0), b) for i in range(len(a))]
    np.testing.assert_allclose(_fid_leave_one_out(a, b), brute, rtol=1e-8, atol=1e-10)

    def mmd(x, y) -> float:
        """The unbiased MMD^2 with KID's kernel, written out, for sets of any sizes."""
        d = x.shape[1]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        n, m = len(x), len(y)
        return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                     - 2 * kxy.mean())

    full, without_a, without_b = _kid_leave_one_out(a, b)
    assert full == pytest.approx(mmd(a, b), rel=1e-9)
    np.testing.assert_allclose(without_a, [mmd(np.delete(a, i, 0), b) for i in range(len(a))], rtol=1e-8)
    np.testing.assert_allclose(without_b, [mmd(a, np.delete(b, k, 0)) for k in range(len(b))], rtol=1e-8)
    # torchmetrics' KID (which assumes sets of one size) on sets of one size: the same number
    same = a[:6]
    assert _kid_leave_one_out(same, b)[0] == pytest.approx(float(poly_mmd(torch.from_numpy(same), torch.from_numpy(b))), rel=1e-9)


def test_jackknife_interval_known_answer_and_fid_kid_uses_it():
    # var = (n-1)/n * sum (v - mean)^2 = 3/4 * (4 * 0.25) = 0.75 for [0, 0, 1, 1] (mean 0.5)
    low, high = _jackknife(10.0, np.array([0.0, 0.0, 1.0, 1.0]))
    assert (low, high) == pytest.approx((10 - 1.959964 * np.sqrt(0.75), 10 + 1.959964 * np.sqrt(0.75)))
    a, b = feature_sets(8, 8, 6, seed=2)
    q = fid_kid(a, b, kid_subset=8, seed=0)  # subset == n: KID is the full unbiased MMD, no subsets
    assert q["fid"] == pytest.approx(frechet_distance(a, b))
    assert q["fid_ci95"] == pytest.approx(_jackknife(q["fid"], _fid_leave_one_out(a, b), _fid_leave_one_out(b, a)))
    full, without_a, without_b = _kid_leave_one_out(a, b)
    assert (q["kid"], q["kid_std"]) == (pytest.approx(full), 0.0)
    assert q["kid_ci95"] == pytest.approx(_jackknife(full, without_a, without_b))
