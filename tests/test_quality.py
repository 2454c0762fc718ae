"""Quality measures: FID/KID with floors at the same n (also of constant and black images), conditioning accuracy,
MTCNN face detection, and the Inception feature cache (damaged: named and computed again)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import flip_byte
from synthaug.cache import cache_file_is_intact
from synthaug.quality import conditioning_accuracy, face_detection, features, fid_kid_with_floor


def test_conditioning_accuracy_known_answer():
    intended = np.array([[0], [0], [1], [1], [2]])
    pred = np.array([[0], [1], [1], [1], [0]])
    r = conditioning_accuracy(pred, intended, [3], ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["per_level"][0] == {"a": 0.5, "b": 1.0, "c": 0.0}
    # attributes: the null level (== levels) is not scored
    intended = np.array([[1, 6], [2, 3], [6, 3]])
    pred = np.array([[1, 0], [0, 3], [5, 2]])
    r = conditioning_accuracy(pred, intended, [6, 6], [[f"A {i}" for i in range(6)], [f"B {i}" for i in range(6)]])
    assert r["accuracy"] == pytest.approx(2 / 4) and r["per_head"] == [0.5, 0.5]


def test_fid_with_floor_uses_the_same_small_n_and_clamps_kid(fid_weights):
    rng = np.random.default_rng(0)
    smooth = np.repeat(np.linspace(0, 255, 8, dtype=np.uint8)[None, :, None], 8, 0)[None].repeat(12, 0)
    smooth = np.repeat(smooth[..., :1], 3, -1) + rng.integers(0, 10, (12, 8, 8, 3)).astype(np.uint8)
    noise = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    q = fid_kid_with_floor(noise, smooth[:6], smooth[6:], fid_weights, torch.device("cpu"), max_images=100, kid_subset_size=1000)
    assert q["n"] == 5 and q["kid_subset_size"] == 5  # clamped to the smallest set
    assert q["fid"] > 2 * q["floor_fid"]  # noise is far from smooth images; real vs real is closer (n=5 is very biased)


@pytest.mark.data
def test_mtcnn_finds_real_faces_and_not_noise(shared_data):
    files = sorted((shared_data / "celeba6k" / "img_align_celeba").glob("*.jpg"))[:6]
    faces = np.stack([np.asarray(Image.open(f).convert("RGB").crop((0, 20, 178, 198)).resize((64, 64))) for f in files])
    r = face_detection(faces, torch.device("cpu"))
    assert r["n"] == 6 and r["detection_rate"] == 1.0 and r["mean_confidence"] > 0.95
    grey = face_detection(np.full((2, 64, 64, 3), 128, dtype=np.uint8), torch.device("cpu"))
    assert grey["detection_rate"] == 0.0 and grey["mean_confidence"] == 0.0
    noise = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert face_detection(noise, torch.device("cpu"))["detection_rate"] == 0.0


def test_mtcnn_sees_no_face_in_flat_or_noise_images():
    pytest.importorskip("facenet_pytorch")
    flat = np.full((2, 64, 64, 3), 128, dtype=np.uint8)
    r = face_detection(flat, torch.device("cpu"))
    assert r == {"n": 2, "threshold": 0.9, "detection_rate": 0.0, "mean_confidence": 0.0}


def test_big_feature_sets_say_when_they_start_and_end(monkeypatch):
    """The benchmark's quality stage spent 10+ minutes without a line on 2,200 + 4,400 faces on 2 CPU cores."""
    import io

    import synthaug.weights.fid_inception as fid_inception
    from synthaug import progress
    from synthaug.quality import features

    monkeypatch.setattr(fid_inception, "inception_features", lambda x, weights, device: torch.zeros(len(x), 2048))
    stream = io.StringIO()
    with progress.lines(stream):
        big = features(np.zeros((1100, 8, 8, 3), np.uint8), None, torch.device("cpu"))
        small = features(np.zeros((10, 8, 8, 3), np.uint8), None, torch.device("cpu"))
    lines = stream.getvalue().splitlines()
    assert big.shape == (1100, 2048) and small.shape == (10, 2048)
    assert lines[0] == "Inception features of 1,100 images: started"
    assert lines[-1].startswith("Inception features of 1,100 images: done, 1,100/1,100 (100%)")
    assert not any("10 images" in line for line in lines)  # small sets stay quiet


def test_face_detection_of_no_images_is_an_error_not_nan():
    pytest.importorskip("facenet_pytorch")
    from synthaug.quality import face_detection

    with pytest.raises(ValueError, match="at least one image"):
        face_detection(np.zeros((0, 8, 8, 3), np.uint8), torch.device("cpu"))


@pytest.mark.slow
def test_fid_and_kid_of_constant_and_black_images_through_inception_are_finite(fid_weights):
    from synthaug.quality import fid_kid_with_floor

    grey, black = np.full((6, 8, 8, 1), 128, np.uint8), np.zeros((6, 8, 8, 1), np.uint8)
    q = fid_kid_with_floor(grey, black, grey, fid_weights, torch.device("cpu"), max_images=6, kid_subset_size=3)
    assert q["fid"] == pytest.approx(0.0, abs=1e-6) and q["floor_fid"] > 1  # grey vs grey; black vs grey
    assert all(np.all(np.isfinite(v)) for v in q.values())  # numbers and their intervals


@pytest.mark.parametrize("damage", ["bit flip", "truncated", "record lost"])
def test_a_damaged_feature_cache_is_named_and_computed_again(fresh_cache, fake_inception, caplog, damage):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    expected = features(images, None, torch.device("cpu"), cache=True)
    (path,) = (fresh_cache / "features").glob("*.npy")
    assert cache_file_is_intact(path) and fake_inception == [5]
    np.testing.assert_array_equal(features(images, None, torch.device("cpu"), cache=True), expected)
    assert fake_inception == [5]  # read from the cache
    if damage == "bit flip":
        flip_byte(path, path.stat().st_size - 9)  # inside the last float: np.load would read it without complaint
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.with_name(path.name + ".sha256").unlink()  # e.g. killed between writing the two files
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(features(images, None, torch.device("cpu"), cache=True), expected)
    assert fake_inception == [5, 5] and cache_file_is_intact(path)
    assert (f"The feature cache {path} is damaged" in caplog.text) == (damage != "record lost")
