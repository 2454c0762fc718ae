"""Memorization audit: copies are flagged, held-out real images are not; variations are not copies of their own source."""

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


def test_nearest_can_exclude_each_querys_own_row():
    refs = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]])
    d, i = nearest(np.array([[3.0, 4.5], [9.0, 0.0], [0.0, 0.0]]), refs, exclude=np.array([1, -1, 0]))
    assert i.tolist() == [0, 2, 1] and d == pytest.approx([np.hypot(3, 4.5), 1.0, 5.0])


def test_variations_count_as_copies_only_when_close_to_another_image(digits):
    """Variations of known sources plus planted copies of other images: copying proper counts the planted copies
    only, and the distance to the own source is reported, per strength."""
    train, test = digits
    rng = np.random.default_rng(2)
    apart, _ = nearest(train, train, exclude=np.arange(len(train)))  # sources with no near twin among the others
    sources = rng.choice(np.flatnonzero(apart > np.median(nearest(test, train)[0])), 40, replace=False)
    strengths = np.repeat([0.3, 0.6, 0.3], [15, 15, 10])
    noise = rng.normal(size=(40, train.shape[1])) * (2 * strengths)[:, None]
    copied = (sources[30:] + 7) % len(train)  # the last 10 are copies of another training image than their source
    syn = np.concatenate([train[sources[:30]], train[copied]]) + noise
    features = {"synthetic": syn / 16.0, "train": train / 16.0, "test": test / 16.0}
    pixels = {"synthetic": syn, "train": train, "test": test}
    result = audit(features, pixels, [f"t{i}" for i in range(len(train))], [f"s{i}" for i in range(40)], pairs=10,
                   sources=sources, strengths=strengths)
    assert result["n_variations"] == 40
    for space in ("inception", "pixels"):
        m = result[space]
        assert m["share"] == 1.0  # every image is close to some training image: its source or the copied one
        assert m["copying"]["share"] == pytest.approx(0.25)  # only the 10 planted copies
        assert m["copying"]["ci95"][0] < 0.25 < m["copying"]["ci95"][1]
        assert sorted(p["train_index"] for p in m["closest"]) == sorted(copied.tolist())
        own = m["own_source"]
        assert own["n"] == 40 and own["by_strength"]["0.3"] < own["by_strength"]["0.6"]
    assert "25.0% of the variations are closer to a training image other than their own source" in result["verdict"]
    assert "copies training images" in result["verdict"] and "own source" in result["verdict"]


def test_variations_far_from_other_images_show_no_copying(digits):
    train, test = digits
    apart, _ = nearest(train, train, exclude=np.arange(len(train)))
    sources = np.flatnonzero(apart > np.median(nearest(test, train)[0]))[:30]
    syn = train[sources] + np.random.default_rng(3).normal(size=(30, train.shape[1]))
    result = audit({"synthetic": syn / 16.0, "train": train / 16.0, "test": test / 16.0}, {"synthetic": syn, "train": train, "test": test},
                   [f"t{i}" for i in range(len(train))], [f"s{i}" for i in range(30)], sources=sources)
    assert result["pixels"]["share"] == 1.0 and result["pixels"]["copying"]["share"] <= 0.1
    assert "no sign of copying" in result["verdict"] and "by construction" in result["verdict"]
    assert "off_distribution" not in result


def test_images_unlike_the_data_are_said_to_be_off_the_distribution(digits):
    train, test = digits
    noise = np.random.default_rng(4).uniform(0, 16, size=(40, train.shape[1]))
    result = audit({"synthetic": noise / 16.0, "train": train / 16.0, "test": test / 16.0}, {"synthetic": noise, "train": train, "test": test},
                   [f"t{i}" for i in range(len(train))], [f"s{i}" for i in range(40)])
    assert result["inception"]["share"] == 0.0
    assert result["off_distribution"]["ratio"] > 1.5
    assert "unlike the data" in result["verdict"] and "no sign of copying" not in result["verdict"]


def test_wilson_interval():
    low, high = wilson(5, 100)
    assert low == pytest.approx(0.0215, abs=1e-3) and high == pytest.approx(0.1118, abs=1e-3)
    assert wilson(0, 0) == [0.0, 1.0]
