"""The linear-probe protocol: a frozen backbone's features extracted once per image set (in memory and on disk),
a seeded linear head per run, augmented views, save/load, the recipe check, and a tiny benchmark that names it.

Most tests give ``test_resnet`` stand-in "ImageNet" weights (a fixed random initialisation) so they need neither
the weights packages nor seconds of CPU; one test checks the real offline weights when their package is there.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

from conftest import bars
from synthaug import SynthaugError, classifier, probe_features as feature_cache
from synthaug.classifier import (ClassifierConfig, LinearProbe, frozen_backbone, load_classifier, predict, save_classifier,
                                 train_classifier)
from synthaug.images import Images
from synthaug.probe_features import probe_features
from synthaug.recipe import BenchmarkConfig, load_recipe
from synthaug.weights import timm_imagenet

CPU = torch.device("cpu")
PROBE = ClassifierConfig.from_benchmark(BenchmarkConfig(pretrained="offline", protocol="linear-probe"), steps=40,
                                        batch_size=8, resolution=8, warmup_steps=2, lr=5e-2, probe_views=3)


@pytest.fixture
def fake_imagenet(monkeypatch, tmp_path):
    """``test_resnet`` with pretrained="offline" gets fixed stand-in weights; a fresh feature cache and memo."""
    real_create = timm_imagenet.create_classifier

    def create(model_name, num_classes, in_chans=3, pretrained="none"):
        if model_name != "test_resnet" or pretrained == "none":
            return real_create(model_name, num_classes, in_chans, pretrained)
        with torch.random.fork_rng():  # the same "pretrained" weights every time, without touching the caller's RNG
            torch.manual_seed(1234)
            return real_create(model_name, num_classes, in_chans, "none")

    def provenance(model_name, pretrained):
        return {"model": model_name, "pretrained": pretrained, "source": "stand-in weights (test)", "file": None,
                "sha256": None}

    monkeypatch.setattr(timm_imagenet, "create_classifier", create)
    monkeypatch.setattr(timm_imagenet, "weights_provenance", provenance)
    monkeypatch.setattr(classifier, "_BACKBONES", {})
    monkeypatch.setattr(feature_cache, "_FEATURES", OrderedDict())
    monkeypatch.setenv("SYNTHAUG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def images(n: int, seed: int) -> Images:
    return Images.of(*bars(n, seed, channels=3), 8, CPU)


def count_backbone_calls(in_chans: int = 3) -> list[int]:
    """The number of forward calls of the shared frozen backbone, counted from now on."""
    calls = [0]
    frozen_backbone("test_resnet", "offline", in_chans, CPU).register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def head(model: LinearProbe) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.head.parameters()]


def test_features_are_extracted_once_per_image_set(fake_imagenet):
    train, syn, test = images(24, 0), images(16, 1), images(10, 2)
    calls = count_backbone_calls()
    a = train_classifier(train, None, [2], PROBE, seed=0)
    assert calls[0] == 1  # 24 images: one chunk
    b = train_classifier(train, None, [2], PROBE, seed=1)
    assert calls[0] == 1  # the second seed trains on the same features
    first = predict(a, test, [2])
    assert calls[0] == 2
    predict(b, test, [2])
    assert torch.equal(predict(a, test, [2]), first) and calls[0] == 2  # every seed's prediction reads them
    predict(a, train.take(np.arange(5)), [2])  # rows of a set: that set's features
    train_classifier(train, None, [2], PROBE, seed=2, synthetic=syn)  # pooled: only the synthetic part is new
    train_classifier(train, None, [2], PROBE, seed=2, synthetic=syn, mix_probability=0.5)
    assert calls[0] == 3
    # another process (a benchmark worker) finds them on disk
    assert len(list((fake_imagenet / "probe-features").glob("*.safetensors"))) == 3
    feature_cache._FEATURES.clear()
    again = train_classifier(train, None, [2], PROBE, seed=0)
    assert calls[0] == 3 and all(torch.equal(p, q) for p, q in zip(head(a), head(again)))
    assert torch.equal(predict(again, test, [2]), first) and calls[0] == 3


def test_seeds_give_different_heads_the_same_seed_the_same_and_the_backbone_never_changes(fake_imagenet):
    train = images(24, 0)
    backbone = frozen_backbone("test_resnet", "offline", 3, CPU)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}  # incl. batch-norm running statistics
    a, again, other = (train_classifier(train, None, [2], PROBE, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(p, q) for p, q in zip(head(a), head(again)))
    assert not torch.equal(head(a)[0], head(other)[0])
    assert a.backbone is other.backbone and not a.backbone.training
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    assert all(not p.requires_grad for p in backbone.parameters())
    test = images(40, 1)
    assert (predict(a, test, [2]) == test.y).float().mean() > 0.9  # bars are easy even for a random frozen backbone


def test_classic_augmentation_trains_on_cached_augmented_views(fake_imagenet):
    train = images(24, 0)
    calls = count_backbone_calls()
    plain = train_classifier(train, None, [2], PROBE, seed=0)
    augmented = train_classifier(train, None, [2], PROBE, seed=0, augment_images=True, flip=True)
    assert calls[0] == 1 + PROBE.probe_views  # the plain images once, then each view once
    train_classifier(train, None, [2], PROBE, seed=0, augment_images=True, flip=True)
    assert calls[0] == 1 + PROBE.probe_views  # every arm of a seed shares its views
    views = probe_features(augmented, train, PROBE.probe_views, flip=True)
    base = probe_features(augmented, train)
    assert views.shape == (24, PROBE.probe_views, base.shape[2]) and base.shape[1] == 1
    assert not torch.allclose(views[:, 0], base[:, 0]) and not torch.allclose(views[:, 0], views[:, 1])
    assert not torch.equal(head(plain)[0], head(augmented)[0])  # the views reached the head


def test_each_seed_draws_its_own_augmented_views_unless_told_not_to(fake_imagenet):
    """Issue 27: with one set of views for every seed, a seed varied only the head's initialisation and batches, so the
    seed intervals left out the augmentation noise a user's repeat would see."""
    import dataclasses

    train = images(24, 0)
    calls = count_backbone_calls()
    one = train_classifier(train, None, [2], PROBE, seed=0, augment_images=True)
    train_classifier(train, None, [2], PROBE, seed=1, augment_images=True)
    assert calls[0] == 2 * PROBE.probe_views  # seed 1 extracted its own views
    seed0, seed1 = (probe_features(one, train, PROBE.probe_views, replicate=r) for r in (0, 1))
    assert not torch.allclose(seed0, seed1)
    shared = dataclasses.replace(PROBE, views_per_seed=False)
    train_classifier(train, None, [2], shared, seed=2, augment_images=True)
    train_classifier(train, None, [2], shared, seed=3, augment_images=True)
    assert calls[0] == 2 * PROBE.probe_views  # both seeds used seed 0's views, already extracted


def test_save_and_load_round_trip_predicts_identically(fake_imagenet, tmp_path):
    train, test = images(24, 0), images(10, 2)
    probe = train_classifier(train, None, [2], PROBE, seed=0)
    save_classifier(probe, tmp_path / "judge", {"steps": PROBE.steps})
    info = json.loads((tmp_path / "judge" / "info.json").read_text())
    assert info["linear_probe"] == {"model": "test_resnet", "pretrained": "offline", "in_chans": 3}
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "judge" / "model.safetensors")) == {"weight", "bias"}  # the head only
    loaded, loaded_info = load_classifier(tmp_path / "judge", PROBE, [2], 3, CPU)
    assert isinstance(loaded, LinearProbe) and loaded_info["steps"] == PROBE.steps
    feature_cache._FEATURES.clear()
    assert torch.equal(predict(loaded, test, [2]), predict(probe, test, [2]))
    assert torch.equal(classifier.head_probabilities(loaded, test, [2])[0], classifier.head_probabilities(probe, test, [2])[0])
    # a fine-tuned classifier's setting does not take a probe's head for its weights: it trains again
    finetune = ClassifierConfig.from_benchmark(steps=2, resolution=8)
    assert load_classifier(tmp_path / "judge", finetune, [2], 3, CPU) is None


def test_a_linear_probe_needs_pretrained_weights():
    with pytest.raises(SynthaugError, match=r"set benchmark\.pretrained to offline or hub\.$"):
        BenchmarkConfig(protocol="linear-probe")
    with pytest.raises(SynthaugError, match=r"set benchmark\.pretrained to offline or hub\.$"):
        load_recipe(None, ["benchmark.protocol=linear-probe"])
    with pytest.raises(SynthaugError, match="benchmark.protocol"):
        load_recipe(None, ["benchmark.protocol=frozen"])
    with pytest.raises(SynthaugError, match="pretrained"):
        ClassifierConfig.from_benchmark(protocol="linear-probe")  # library callers are checked too
    recipe = load_recipe(None, ["benchmark.protocol=linear-probe", "benchmark.pretrained=offline", "benchmark.probe_views=2"])
    config = ClassifierConfig.from_benchmark(recipe.benchmark)
    assert (config.protocol, config.probe_views) == ("linear-probe", 2)
    from synthaug import recipe as recipe_module

    assert recipe_module.PROTOCOLS == classifier.PROTOCOLS


def test_offline_imagenet_backbone_gives_the_pooled_features_of_the_full_model(monkeypatch, tmp_path):
    """With the real offline weights, a probe's features are exactly what the ImageNet classifier's last layer reads."""
    try:
        timm_imagenet.package_weights_file("mobilenetv2_100")
    except SynthaugError as e:
        pytest.skip(str(e))
    monkeypatch.setattr(classifier, "_BACKBONES", {})
    monkeypatch.setattr(feature_cache, "_FEATURES", OrderedDict())
    full = timm_imagenet.create_classifier("mobilenetv2_100", 1000, pretrained="offline").eval()
    config = ClassifierConfig.from_benchmark(BenchmarkConfig(classifier="mobilenetv2_100", pretrained="offline",
                                                             protocol="linear-probe"), resolution=32)
    probe = classifier.make_probe(config, 2, 3, CPU)
    x = Images.of(np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8), np.zeros((3, 1)), 32, CPU)
    features = probe_features(probe, x, cache=False)[:, 0]
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in timm_imagenet.input_normalization(full))
    with torch.no_grad():
        expected = full.forward_head(full.forward_features((x.x.float() / 255 - mean) / std), pre_logits=True)
    assert features.shape == (3, 1280) and torch.allclose(features, expected, atol=1e-4)


@pytest.mark.slow
def test_tiny_benchmark_with_a_linear_probe_names_its_protocol(fake_imagenet, tmp_path):
    from synthaug.benchmark import run_benchmark
    from synthaug.weights.fid_inception import fid_weights_path
    from test_benchmark import bars_recipe, write_bars

    try:
        fid_weights_path()
    except SynthaugError as e:
        pytest.skip(str(e))
    root = write_bars(tmp_path / "bars")
    recipe = bars_recipe(root, tmp_path / "run", "benchmark.pretrained=offline", "benchmark.protocol=linear-probe",
                         "benchmark.probe_views=2", "benchmark.shots_per_class=[0]", "benchmark.guidance_sweep=[1.0]",
                         "benchmark.strengths=[]", "benchmark.mix_probability=0.0")
    report = run_benchmark(recipe, out=tmp_path / "report", command="synthaug benchmark tiny-probe")
    c = report["classifier"]
    assert c["protocol"] == "linear-probe" and "frozen ImageNet backbone" in c["description"]
    assert report["judge"]["protocol"] == "linear-probe"
    assert json.loads((tmp_path / "report" / "report.json").read_text())["classifier"]["protocol"] == "linear-probe"
    assert "frozen ImageNet backbone (offline weights) + linear probe" in (tmp_path / "report" / "report.md").read_text()
    arms = report["settings"][0]["arms"]
    assert {"real", "real + classic aug", "synthetic only (CAS)"} <= set(arms)
    assert all(len(a["runs"]) == 2 for a in arms.values())
