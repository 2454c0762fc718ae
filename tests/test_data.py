"""Dataset formats: each layout read from a tiny tree under tmp_path; splits, crops, cache, bad input: odd files and
folder names, huge images, classes too small for a split, layouts missing a part, non-finite annotations."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import warnings

import numpy as np
import pytest
import scipy.io
from PIL import Image

from conftest import COLOURS, flip_byte, mean_colour, write_image
from synthaug import SynthaugError, load_dataset
from synthaug.data import DataConfig, parse_spec, read_catalog
from synthaug.data.decode import decode_image
from synthaug.data.lookup import resolve_name
from synthaug.data.splits import assign_splits, hold_out_validation, select_shots, stratified_split
from synthaug.shards import encode_sample


def test_digits_is_embedded_and_resizes():
    ds = load_dataset("digits")
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    assert ds.class_names == [str(d) for d in range(10)]
    assert ds.images.max() == 255 and ds.images.min() == 0
    # no official split: a seeded stratified one, 20% of each class in test
    test = ds.class_counts("test")
    assert np.all(np.abs(test - 0.2 * ds.class_counts()) <= 1)
    big = load_dataset("digits", resolution=16)
    assert big.images.shape == (1797, 16, 16, 1)
    np.testing.assert_array_equal(big.labels, ds.labels)


def test_cub_counts_labels_splits_and_names(cub_tree):
    ds = load_dataset(f"cub:{cub_tree}", resolution=16)
    assert len(ds) == 12 and ds.num_classes == 3
    assert ds.class_names == ["Black footed Albatross", "Laysan Albatross", "Anna Hummingbird"]
    assert ds.class_ids == [1, 2, 3]
    assert list(ds.class_counts("train")) == [2, 2, 2] and list(ds.class_counts("test")) == [2, 2, 2]
    assert ds.sources[0] == "images/001.Black_footed_Albatross/Black_footed_Albatross_0000.jpg"
    assert not ds.notes


def test_cub_parent_folder_is_accepted(cub_tree):
    assert len(load_dataset(f"cub:{cub_tree.parent}", resolution=8)) == 12


def test_bbox_crop_centres_the_object(cub_tree):
    cropped = load_dataset(f"cub:{cub_tree}", resolution=16)
    whole = load_dataset(f"cub:{cub_tree}", resolution=16, crop=False)
    # the white box fills ~80% of its square crop, ~12% of the centre square
    assert mean_colour(cropped.images[0])[1] > 170
    assert mean_colour(whole.images[0])[1] < 80
    # label colour survives in the uncropped image
    assert np.allclose(mean_colour(whole.images[0]), COLOURS[0], atol=40)


def test_bbox_measured_on_listed_size_scales_to_a_smaller_copy(tmp_path):
    # A 400x200 original whose box is at x 300..340; the copy on disk is 100x50.
    path = write_image(tmp_path / "a.png", (0, 0, 200), size=(100, 50), box=(75, 10, 10, 10))
    out = decode_image(path, 8, box=np.array([300.0, 40.0, 40.0, 40.0]), frame=np.array([400.0, 200.0]))
    assert mean_colour(out).min() > 200  # all white: the scaled box


def test_jpeg_draft_keeps_the_crop_in_place(tmp_path):
    # A large JPEG where only the box is white: the reduced-scale decode must crop the same region.
    path = write_image(tmp_path / "big.jpg", (0, 0, 0), size=(1600, 1200), box=(1200, 200, 200, 200), fmt="JPEG")
    out = decode_image(path, 16, box=np.array([1200.0, 200.0, 200.0, 200.0]))
    assert out.shape == (16, 16, 3) and mean_colour(out).min() > 230


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA"])
def test_image_modes_become_rgb(tmp_path, mode):
    if mode == "I;16":
        path = tmp_path / "x.png"
        Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(path)
    else:
        path = write_image(tmp_path / ("x.tif" if mode == "CMYK" else "x.png"), (250, 250, 250), mode=mode)
    out = decode_image(path, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out.min() > 200  # a near-white source stays near-white, 16-bit included


def test_imagefolder_with_train_and_test(imagefolder_tree):
    ds = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    assert ds.class_names == ["Acura RL Sedan 2012", "BMW M3 Coupe 2012"]
    assert list(ds.class_counts("train")) == [3, 3] and list(ds.class_counts("test")) == [2, 2]
    assert np.allclose(mean_colour(ds.images[ds.labels == 1][0]), COLOURS[1], atol=3)


def test_imagefolder_without_split_gets_stratified_split(tmp_path):
    for c in range(2):
        for k in range(10):
            write_image(tmp_path / "flat" / f"class{c}" / f"{k}.png", COLOURS[c])
    ds = load_dataset(f"imagefolder:{tmp_path / 'flat'}", resolution=8, seed=3)
    assert list(ds.class_counts("test")) == [2, 2]
    assert any("stratified" in n for n in ds.notes)


def test_unreadable_files_are_skipped_counted_and_logged(imagefolder_tree):
    bad = imagefolder_tree / "train" / "BMW M3 Coupe 2012"
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.txt").write_text("not an image")
    good = (bad / "0.png").read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    ds = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    assert len(ds) == 10 and len(ds.skipped) == 3
    assert {s.split("/")[-1] for s, _ in ds.skipped} == {"empty.jpg", "notes.txt", "truncated.png"}
    log = (ds.cache_path / "skipped.log").read_text()
    assert "empty.jpg" in log and "notes.txt" in log
    with pytest.raises(SynthaugError, match="3 image files could not be read"):
        load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8, strict=True)


def test_cache_is_reused_and_notices_changed_files(imagefolder_tree):
    first = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    again = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    assert not first.from_cache and again.from_cache and again.cache_path == first.cache_path
    np.testing.assert_array_equal(first.images, again.images)
    # change one file's pixels (and mtime): the cache must be rebuilt and show the new colour
    path = imagefolder_tree / "train" / "Acura RL Sedan 2012" / "0.png"
    write_image(path, (0, 0, 0))
    os.utime(path, ns=(1, 1))
    changed = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    assert not changed.from_cache
    i = changed.sources.index("train/Acura RL Sedan 2012/0.png")
    assert changed.images[i].max() < 5
    assert not first.cache_path.exists()  # the stale cache is removed


def test_damaged_cache_is_rebuilt(imagefolder_tree):
    first = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    expected = np.array(first.images)  # a copy: first.images maps the file damaged below
    with open(first.cache_path / "images.npy", "r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"\xff" * 10)
    again = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    assert not again.from_cache
    np.testing.assert_array_equal(again.images, expected)


def write_cars_devkit(root, class_names, rows, test_rows=None):
    """rows: (fname, x1, y1, x2, y2, class 1-based)."""
    def annos(rows, with_class):
        fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + (["class"] if with_class else []) + ["fname"]
        arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
        for i, (fname, x1, y1, x2, y2, cls) in enumerate(rows):
            values = [x1, y1, x2, y2] + ([cls] if with_class else []) + [fname]
            for f, v in zip(fields, values):
                arr[0, i][f] = np.array([[v]]) if not isinstance(v, str) else np.array([v])
        return {"annotations": arr}

    (root / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.empty((1, len(class_names)), dtype="O")
    for i, n in enumerate(class_names):
        names[0, i] = np.array([n])
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": names})
    scipy.io.savemat(root / "devkit" / "cars_train_annos.mat", annos(rows, True))
    if test_rows is not None:
        scipy.io.savemat(root / "devkit" / "cars_test_annos_withlabels.mat", annos(test_rows, True))


def test_stanford_cars_devkit_with_and_without_test_labels(tmp_path):
    root = tmp_path / "cars"
    rows, test_rows = [], []
    for i in range(8):
        cls = i % 2 + 1
        write_image(root / "cars_train" / f"{i:05d}.jpg", COLOURS[cls], size=(90, 40), box=(50, 5, 30, 30), fmt="PNG")
        rows.append((f"{i:05d}.jpg", 51, 6, 80, 35, cls))  # 1-based inclusive corners
    for i in range(4):
        write_image(root / "cars_test" / f"{i:05d}.jpg", COLOURS[i % 2 + 1], fmt="PNG")
        test_rows.append((f"{i:05d}.jpg", 1, 1, 40, 30, i % 2 + 1))
    write_cars_devkit(root, ["Acura RL Sedan 2012", "BMW M3 Coupe 2012"], rows)
    ds = load_dataset(f"stanford-cars:{root}", resolution=8)
    assert ds.class_ids == [1, 2] and list(ds.class_counts()) == [4, 4]
    assert any("test split is unavailable" in n for n in ds.notes)
    assert (ds.splits == "test").sum() == 2  # carved from cars_train by the stratified split
    assert mean_colour(ds.images[0]).min() > 200  # the box (white car) fills the crop
    write_cars_devkit(root, ["Acura RL Sedan 2012", "BMW M3 Coupe 2012"], rows, test_rows)
    ds = load_dataset(f"stanford-cars:{root}", resolution=8)
    assert (ds.splits == "train").sum() == 8 and (ds.splits == "test").sum() == 4
    assert not any("unavailable" in n for n in ds.notes)


def test_celeba_identity_target_needs_and_gets_a_stratified_split(celeba_tree):
    ds = load_dataset(f"celeba:{celeba_tree}", resolution=8)
    assert ds.num_classes == 4 and ds.class_names[3] == "identity 4"
    assert all(n > 0 for n in ds.class_counts("train"))
    assert any("without training images" in n for n in ds.notes)
    with pytest.raises(SynthaugError, match="without training images; use split=stratified"):
        load_dataset(f"celeba:{celeba_tree}", resolution=8, split="official")


def test_celeba_attribute_target(celeba_tree):
    ds = load_dataset(f"celeba:{celeba_tree}", resolution=8, target="smiling")
    assert len(ds) == 12 and ds.class_names == ["not Smiling", "Smiling"]
    assert ds.attributes.shape == (12, 3) and ds.attribute_levels == [2, 2, 2]
    assert set(np.unique(ds.attributes[:, 1])) == {1}  # Young is 1 on every row
    np.testing.assert_array_equal(ds.labels, ds.attributes[:, 0])
    assert any("12 of the 20 images" in n for n in ds.notes)
    with pytest.raises(SynthaugError, match="No attribute named 'smilling'.*did you mean 'Smiling'"):
        load_dataset(f"celeba:{celeba_tree}", resolution=8, target="smilling")


def test_celeba_dialog_levels(dialog_tree):
    ds = load_dataset(f"celeba-dialog:{dialog_tree}", resolution=8)
    assert ds.attribute_names == ["Bangs", "Eyeglasses", "No_Beard", "Smiling", "Young"]
    assert ds.attribute_levels == [6] * 5 and ds.attributes.shape == (20, 5)
    assert ds.attributes[0].tolist() == [1, 0, 5, 2, 4]  # row of 000001.jpg
    assert ds.num_classes == 1
    by_smile = load_dataset(f"celeba-dialog:{dialog_tree}", resolution=8, target="Smiling")
    # only even Smiling levels occur in the fixture: the label space keeps those, with their level as id
    assert by_smile.class_names == ["Smiling 0", "Smiling 2", "Smiling 4"] and by_smile.class_ids == [0, 2, 4]
    np.testing.assert_array_equal(np.array(by_smile.class_ids)[by_smile.labels], by_smile.attributes[:, 3])


def test_celeba_dialog_bad_level_names_the_line(dialog_tree):
    path = dialog_tree / "combined_annotation.txt"
    lines = path.read_text().splitlines()
    lines[3] = "000003.jpg 1 0 9 2 4"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SynthaugError, match="combined_annotation.txt line 4 has a level outside 0-5"):
        load_dataset(f"celeba-dialog:{dialog_tree}")


def test_unparsable_annotation_line_names_file_and_line(cub_tree):
    path = cub_tree / "image_class_labels.txt"
    lines = path.read_text().splitlines()
    lines[4] = "5 two"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SynthaugError, match="image_class_labels.txt line 5 has 'two' where a whole number"):
        read_catalog(DataConfig(spec=f"cub:{cub_tree}"))
    lines[4] = "5"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SynthaugError, match="image_class_labels.txt line 5 has 1 fields where 2"):
        read_catalog(DataConfig(spec=f"cub:{cub_tree}"))


def test_missing_files_and_empty_classes(cub_tree):
    shutil.rmtree(cub_tree / "images" / "003.Anna_Hummingbird")
    ds = load_dataset(f"cub:{cub_tree}", resolution=8)
    assert ds.num_classes == 2 and len(ds.skipped) == 4
    assert "file not found (images.txt line 9)" in ds.skipped[0][1]
    assert any("1 class has no readable images" in n and "'Anna Hummingbird' (classes.txt line 3)" in n for n in ds.notes)
    with pytest.raises(SynthaugError, match="could not be read"):
        load_dataset(f"cub:{cub_tree}", resolution=8, strict=True)
    shutil.rmtree(cub_tree / "images")
    with pytest.raises(SynthaugError, match="None of the 12 images"):
        load_dataset(f"cub:{cub_tree}", resolution=8)


def test_missing_layout_file_names_it(cub_tree):
    (cub_tree / "classes.txt").unlink()
    with pytest.raises(SynthaugError, match=r"classes\.txt is missing; expected the layout"):
        load_dataset(f"cub:{cub_tree}")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope:/x", "Unknown dataset format 'nope'"),
        ("cub", "needs a path"),
        ("digits:/tmp", "takes no path"),
        ("cub:/does/not/exist", "does not exist; expected a folder"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(SynthaugError, match=message):
        load_dataset(spec)


def test_option_a_format_does_not_have_is_an_error(cub_tree):
    with pytest.raises(SynthaugError, match="cub format has no 'target' option"):
        load_dataset(f"cub:{cub_tree}", target="identity")


def test_spec_parsing_resolves_paths(tmp_path):
    fmt, root = parse_spec(f"imagefolder:{tmp_path}/x/../y")
    assert fmt.name == "imagefolder" and root == (tmp_path / "y").resolve()


def test_stratified_split_is_deterministic_and_keeps_each_class_on_both_sides():
    labels = np.repeat(np.arange(5), [1, 2, 5, 10, 50])
    a, b = stratified_split(labels, 0.2, seed=7), stratified_split(labels, 0.2, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, stratified_split(labels, 0.2, seed=8))
    for c, n_test in zip(range(5), [0, 1, 1, 2, 10]):
        assert (a[labels == c] == "test").sum() == n_test


def test_assign_splits_prefers_official_and_explains_fallback():
    labels = np.array([0, 0, 1, 1])
    official = np.array(["train", "test", "train", "test"])
    splits, note = assign_splits(labels, official, 2)
    assert note is None and list(splits) == list(official)
    splits, note = assign_splits(labels, official, 2, mode="stratified")
    assert note.startswith("A seeded stratified split")
    with pytest.raises(SynthaugError, match="no official split"):
        assign_splits(labels, np.array([""] * 4), 2, mode="official")


def test_shots_are_deterministic_nested_and_leave_test_alone():
    labels = np.repeat(np.arange(3), 20)
    splits = np.where(np.arange(60) % 4 == 0, "test", "train")
    five = select_shots(labels, splits, 5, seed=1)
    ten = select_shots(labels, splits, 10, seed=1)
    assert np.all(five <= ten)  # nested
    np.testing.assert_array_equal(five, select_shots(labels, splits, 5, seed=1))
    for c in range(3):
        assert ((labels == c) & (splits == "train") & five).sum() == 5
    assert np.all(five[splits == "test"])


def test_load_dataset_shots_per_class(cub_tree):
    ds = load_dataset(f"cub:{cub_tree}", resolution=8, shots_per_class=1)
    assert list(ds.class_counts("train")) == [1, 1, 1] and list(ds.class_counts("test")) == [2, 2, 2]


def test_class_lookup_exact_normalised_groups_and_suggestions():
    names = ["Allen's Hummingbird (Adult Male)", "Allen's Hummingbird (Female, immature)", "Anna's Hummingbird"]
    groups = [("Allen's Hummingbird", [0, 1])]
    assert resolve_name("Anna's Hummingbird", names, groups).classes == (2,)
    assert resolve_name("annas  HUMMINGBIRD", names, groups).classes == (2,)
    match = resolve_name("allen's hummingbird", names, groups)
    assert match.group and match.classes == (0, 1)
    with pytest.raises(SynthaugError, match="No class named 'Alens Humingbird'.*did you mean \"Allen's Hummingbird"):
        resolve_name("Alens Humingbird", names, groups)


# -- odd files, folder names and images ----------------------------------------------------------------

ODD_NAMES = ["a b", "café ünï", "x.y.z", "it's \"quoted\""]


def jpeg_bytes(size=(100, 100), colour=(10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


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


# -- classes too small for a split or a setting --------------------------------------------------------

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


def test_shots_per_class_larger_than_a_class_has_is_noted(tmp_path):
    for name, count in (("cat", 10), ("dog", 3)):
        for k in range(count):
            write_image(tmp_path / "pets" / name / f"{k}.png", COLOURS[k % 3])
    spec = f"imagefolder:{tmp_path / 'pets'}"
    ds = load_dataset(spec, resolution=8, shots_per_class=5)  # dog: 2 training images after the 20% test split
    assert list(ds.class_counts("train")) == [5, 2]
    assert ("shots_per_class = 5 is more than 1 of the 2 classes has for training (fewest: 'dog' with 2); it keeps all its "
            "training images.") in ds.notes
    ds = load_dataset(spec, resolution=8, shots_per_class=50)
    assert any(n.startswith("shots_per_class = 50 is more than any class has for training (the most is 8)") for n in ds.notes)
    assert not any("shots_per_class" in n for n in load_dataset(spec, resolution=8, shots_per_class=2).notes)


# -- layouts missing a part, strict loading, non-finite annotations, a damaged cache -------------------

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


def test_a_bit_flipped_dataset_cache_is_named_and_rebuilt(imagefolder_tree, caplog):
    first = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    expected = np.array(first.images)  # a copy: first.images maps the file damaged below
    images = first.cache_path / "images.npy"
    flip_byte(images, images.stat().st_size // 2)  # a pixel, not the header: np.load alone would not notice
    with caplog.at_level(logging.WARNING):
        again = load_dataset(f"imagefolder:{imagefolder_tree}", resolution=8)
    assert not again.from_cache and f"Dataset cache {first.cache_path} is damaged" in caplog.text
    np.testing.assert_array_equal(again.images, expected)
