"""Memorization audit: copies are flagged, held-out real images are not."""

from __future__ import annotations

import numpy as np
import pytest

from synthaug import load_dataset
from synthaug.memorization import audit, close_share, nearest, wilson


def test_nearest_known_answer():
    refs = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    d, i = nearest(np.array([[3.0, 4.5], [9.0, 0.0], [0.0, 0.0]]), refs)
    assert i.tolist() == [1, 2, 0] and d == pytest.approx([0.5, 1.0, 0.0])


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    train, test = ds.split("train"), ds.split("test")
    return train.images.reshape(len(train), -1), test.images.reshape(len(test), -1)


def test_a_generator_that_returns_its_training_images_is_flagged(digits):
    train, test = digits
    copies = train[np.random.default_rng(0).choice(len(train), 200, replace=False)]
    r = close_share(copies, train, test)
    assert r["share"] == 1.0 and r["distance"].max() == 0.0


def test_held_out_real_images_give_about_five_percent(digits):
    train, test = digits
    order = np.random.default_rng(1).permutation(len(test))
    reference, held_out = test[order[:180]], test[order[180:]]
    r = close_share(held_out, train, reference)
    assert 0.01 <= r["share"] <= 0.12, r["share"]  # about 5%: 179 images, binomial sd 1.6 points
    assert r["ci95"][0] < 0.05 < r["ci95"][1] or abs(r["share"] - 0.05) < 0.04


def test_audit_reports_both_spaces_pairs_and_a_verdict(digits):
    train, test = digits
    syn = np.concatenate([train[:20], test[:20]])  # half copies
    features = {"synthetic": syn / 16.0, "train": train / 16.0, "test": test[20:] / 16.0}
    pixels = {"synthetic": syn, "train": train, "test": test[20:]}
    result = audit(features, pixels, [f"t{i}" for i in range(len(train))], [f"s{i}" for i in range(40)], pairs=5)
    assert result["inception"]["share"] >= 0.5 and result["pixels"]["share"] >= 0.5
    assert [p["train"] for p in result["pixels"]["closest"]] == [f"t{i}" for i in range(5)]
    assert all(p["distance"] == 0.0 for p in result["pixels"]["closest"])
    assert "copies training images" in result["verdict"]


def test_wilson_interval():
    low, high = wilson(5, 100)
    assert low == pytest.approx(0.0215, abs=1e-3) and high == pytest.approx(0.1118, abs=1e-3)
    assert wilson(0, 0) == [0.0, 1.0]
