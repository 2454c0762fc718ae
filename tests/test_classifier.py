"""Classifiers: the augmentation, the multi-head loss, the scores, the seeded training, and the one arm runner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import bars
from synthaug.benchmark.arms import Arm, SyntheticPool, compare, run_arm, train_data
from synthaug.images import Images
from synthaug.augmentation import augment
from synthaug.classifier import ClassifierConfig, head_loss, predict, score, train_classifier
from synthaug.recipe import BenchmarkConfig

TINY = ClassifierConfig.from_benchmark(steps=4, batch_size=8, resolution=8, warmup_steps=1)


def test_classifier_config_is_the_benchmark_section():
    b = BenchmarkConfig(classifier="mobilenetv2_100", pretrained="offline", classifier_resolution=96, steps=7, lr=1e-3)
    c = ClassifierConfig.from_benchmark(b)
    assert (c.model, c.pretrained, c.resolution, c.steps, c.lr, c.batch_size) == ("mobilenetv2_100", "offline", 96, 7, 1e-3, 64)
    assert ClassifierConfig.from_benchmark(b, steps=3).steps == 3


def test_score_known_answer():
    truth = np.array([[0], [0], [1], [1], [2], [2]])
    pred = np.array([[0], [1], [1], [1], [2], [0]])
    s = score(pred, truth, [4])
    assert s["top1"] == pytest.approx(4 / 6)
    assert s["per_level"] == [[0.5, 1.0, 0.5, None]]  # class 3 is absent from the split
    # macro-F1 over the classes present: class 0 (p 1/2, r 1/2), 1 (p 2/3, r 1), 2 (p 1, r 1/2)
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    two = score(np.array([[1, 0], [1, 1]]), np.array([[1, 1], [1, 1]]), [2, 2])
    assert two["per_head_top1"] == [1.0, 0.5] and two["top1"] == 0.75


def test_head_loss_is_the_mean_cross_entropy_of_each_head():
    logits = torch.randn(5, 3 + 6)
    targets = torch.stack([torch.tensor([0, 1, 2, 0, 1]), torch.tensor([5, 0, 3, 3, 1])], dim=1)
    expected = (F.cross_entropy(logits[:, :3], targets[:, 0]) + F.cross_entropy(logits[:, 3:], targets[:, 1])) / 2
    assert head_loss(logits, targets, [3, 6], 0.0) == pytest.approx(expected.item())
    smoothed = head_loss(logits, targets, [3, 6], 0.1)
    assert smoothed.item() != pytest.approx(expected.item())


def test_augment_is_seeded_keeps_range_and_changes_images():
    x = torch.rand(16, 3, 12, 12)
    a = augment(x, torch.Generator().manual_seed(1), flip=True)
    b = augment(x, torch.Generator().manual_seed(1), flip=True)
    c = augment(x, torch.Generator().manual_seed(2), flip=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert (a - x).abs().mean() > 0.01  # it does something
    # a constant image stays constant up to the brightness factor: crops and flips cannot move a flat colour
    flat = torch.full((8, 3, 12, 12), 0.5)
    out = augment(flat, torch.Generator().manual_seed(0), flip=True)
    per_image = out.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    assert ((per_image[:, 0] >= 0.4 - 1e-6) & (per_image[:, 0] <= 0.6 + 1e-6)).all()  # brightness within +-20%


def test_augment_without_flip_never_mirrors():
    x = torch.zeros(64, 1, 16, 16)
    x[:, :, :, :4] = 1.0  # a bar on the left
    out = augment(x, torch.Generator().manual_seed(0), flip=False)
    assert (out[:, :, :, :8].mean(dim=(1, 2, 3)) > out[:, :, :, 8:].mean(dim=(1, 2, 3))).all()
    flipped = augment(x, torch.Generator().manual_seed(0), flip=True)
    right_heavy = flipped[:, :, :, 8:].mean(dim=(1, 2, 3)) > flipped[:, :, :, :8].mean(dim=(1, 2, 3))
    assert 10 < int(right_heavy.sum()) < 54  # about half are mirrored


def test_training_is_seeded_and_learns():
    x, y = bars(32, 0)
    train = Images.of(x, y, 8, torch.device("cpu"))
    cfg = ClassifierConfig.from_benchmark(steps=30, batch_size=16, resolution=8, lr=5e-3, warmup_steps=2)
    a = train_classifier(train, None, [2], cfg, seed=0)
    b = train_classifier(train.x, train.y, [2], cfg, seed=0)  # tensors or Images: the same classifier
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    tx, ty = bars(40, 1)
    test = Images.of(tx, ty, 8, torch.device("cpu"))
    r = run_arm(Arm("real"), [2], cfg, [0], test, real=train)
    assert r["top1"]["mean"] > 0.9  # bars are easy; a classifier that does not learn scores 0.5


def test_real_images_as_synthetic_score_exactly_like_more_real():
    """An arm's synthetic images reach the classifier with their labels: real images passed as the synthetic
    set give the very same classifiers as the same images passed as more real ones."""
    x, y = bars(24, 0)
    real, extra = Images.of(x[:12], y[:12], 8, torch.device("cpu")), Images.of(x[12:], y[12:], 8, torch.device("cpu"))
    test = Images.of(*bars(10, 5), 8, torch.device("cpu"))
    pool = SyntheticPool(extra, {1.0: np.arange(12)})
    as_synthetic = run_arm(Arm("real + synthetic x1", synthetic="main", ratio=1.0), [2], TINY, [0, 1], test, real=real,
                           pools={"main": pool})
    more_real = Images(torch.cat([real.x, extra.x]), torch.cat([real.y, extra.y]))
    as_real = run_arm(Arm("real"), [2], TINY, [0, 1], test, real=more_real)
    assert as_synthetic["runs"] == as_real["runs"]
    assert as_synthetic["training_images"] == {"real": 12, "synthetic": 12} and as_real["training_images"]["real"] == 24


def test_arm_data_for_each_kind_of_arm():
    real = Images(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, 1, dtype=torch.long))
    syn = Images(torch.ones(6, 1, 2, 2, dtype=torch.uint8), torch.ones(6, 1, dtype=torch.long))
    pools = {"main": SyntheticPool(syn, {0.5: np.array([0, 3])})}
    images, mixed = train_data(Arm("x", synthetic="main", ratio=0.5), real, pools)
    assert len(images) == 6 and mixed is None and images.y[:, 0].tolist() == [0, 0, 0, 0, 1, 1]
    images, mixed = train_data(Arm("p", synthetic="main", mix_probability=0.3), real, pools)
    assert len(images) == 4 and len(mixed) == 6
    images, mixed = train_data(Arm("cas", real=False, synthetic="main"), real, pools)
    assert len(images) == 6 and mixed is None and images.y.sum() == 6


def test_compare_pairs_gains_by_seed():
    def result(values):
        return {"runs": [{"top1": v} for v in values]}

    arms = {"real": result([0.5, 0.6, 0.7]), "better": result([0.6, 0.7, 0.8])}
    compare(arms, "real")
    gain = arms["better"]["gain_over_real"]
    assert gain["mean"] == pytest.approx(0.1) and gain["p_value"] == 0.0 and gain["significant"]
    assert "gain_over_real" not in arms["real"]
    assert math.isfinite(gain["ci95"])


def test_streamed_inputs_train_the_same_classifier_as_resident_ones(monkeypatch):
    """A set larger than the resident budget is read from its source a batch at a time, resized as it comes:
    the classifier and its predictions are the very same as with the set held whole."""
    from synthaug.data.rows import RowView

    x, y = bars(40, 0)
    x16 = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # 16 px sources, resized to the classifier's 8
    cfg = ClassifierConfig.from_benchmark(steps=6, batch_size=8, resolution=8, warmup_steps=1)
    resident = Images.of(x16, y, 8, torch.device("cpu"))
    assert resident.x is not None
    monkeypatch.setenv("SYNTHAUG_RESIDENT_BYTES", "0")
    streamed = Images.of(RowView(x16), y, 8, torch.device("cpu"))
    assert streamed.x is None and len(streamed) == 40 and streamed.channels == 1
    syn = Images.of(RowView(x16[::-1].copy()), y[::-1].copy(), 8, torch.device("cpu"))
    for kw in ({}, {"synthetic": syn}, {"synthetic": syn, "mix_probability": 0.5}):
        resident_syn = {k: (Images(v.gather(torch.arange(40)), v.y) if isinstance(v, Images) else v) for k, v in kw.items()}
        a = train_classifier(resident, None, [2], cfg, seed=3, augment_images=True, **resident_syn)
        b = train_classifier(streamed, None, [2], cfg, seed=3, augment_images=True, **kw)
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values())), kw
    assert torch.equal(predict(a, resident, [2]), predict(b, streamed, [2]))
    part = streamed.take(np.array([3, 5, 7]))
    assert torch.equal(part.gather(torch.arange(3)), resident.x[[3, 5, 7]]) and part.x is None  # a view, not a copy
