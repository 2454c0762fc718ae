"""Real data already in WebDataset shards (wds:) or in a Hugging Face datasets folder (hf:): counts, labels,
class names, splits, the shared decode cache, and bad input (also fuzzed shards, specs and folders) as one sentence
with exit code 1."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import cli, mean_colour, one_sentence_error
from synthaug import SynthaugError, load_dataset
from synthaug.data import FORMATS, read_catalog
from synthaug.data.config import DataConfig

NAMES = ["red", "green", "blue"]
RGB = [(220, 20, 20), (20, 220, 20), (20, 20, 220)]


def encoded(colour, fmt: str = "PNG", size=(20, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def write_shard(path, samples: list[dict]) -> None:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def sample(key: str, c: int, image: str = "png", cls: bool = True, meta: dict | None = None) -> dict:
    fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}[image]
    out = {"__key__": key, image: encoded(RGB[c], fmt)}
    if cls:
        out["cls"] = str(c).encode()
    if meta is not None:
        out["json"] = json.dumps(meta).encode()
    return out


@pytest.fixture
def shards(tmp_path):
    """Two training shards (4 images per class in all, mixed image types) and a test shard (1 per class)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    kinds = ["png", "jpg", "webp", "jpeg"]
    for s in range(2):
        write_shard(folder / f"train-{s:06d}.tar",
                    [sample(f"s{s}k{k:02d}", k % 3, kinds[k % 4], meta={"label": NAMES[k % 3], "class_name": NAMES[k % 3]})
                     for k in range(6)])
    write_shard(folder / "test-000000.tar", [sample(f"t{c}", c, meta={"label": NAMES[c], "class_name": NAMES[c]}) for c in range(3)])
    (folder / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return folder


def assert_colours_match_labels(ds) -> None:
    """Every decoded image has its label's colour: the bytes were read from the right tar offsets."""
    for i in range(len(ds)):
        name = ds.class_names[ds.labels[i]]
        assert np.allclose(mean_colour(ds.images[i]), RGB[NAMES.index(name)], atol=12), ds.sources[i]


# -- wds: ----------------------------------------------------------------------------------------------

def test_wds_counts_labels_class_names_and_split_by_pattern(shards):
    spec = f"wds:{shards}/train-{{000000..000001}}.tar|{shards}/test-000000.tar"
    ds = load_dataset(spec, resolution=8)
    assert len(ds) == 15 and ds.class_names == NAMES and ds.class_ids == [0, 1, 2]
    assert list(ds.class_counts("train")) == [4, 4, 4] and list(ds.class_counts("test")) == [1, 1, 1]
    assert not any("stratified" in n for n in ds.notes)  # the shard patterns are the official split
    assert ds.sources[0] == "train-000000.tar/s0k00.png" and ds.sources[-1] == "test-000000.tar/t2.png"
    assert ds.images.shape == (15, 8, 8, 3) and ds.name == "wds-shards"
    assert_colours_match_labels(ds)
    # the same decode cache and the usual options
    again = load_dataset(spec, resolution=8)
    assert again.from_cache and again.cache_path == ds.cache_path
    few = load_dataset(spec, resolution=16, shots_per_class=2)
    assert few.resolution == 16 and list(few.class_counts("train")) == [2, 2, 2] and list(few.class_counts("test")) == [1, 1, 1]
    assert few.resolve("GREEN").classes == (1,)
    assert_colours_match_labels(few)


def test_wds_labels_from_a_json_field_and_class_names_from_the_json(shards):
    (shards / "classes.txt").unlink()
    ds = load_dataset(f"wds:{shards}/train-*.tar", resolution=8, label_key="label")  # string labels: the names
    assert ds.class_names == sorted(NAMES) and list(ds.class_counts()) == [4, 4, 4]
    assert any("stratified" in n for n in ds.notes)  # one pattern: no official split
    assert_colours_match_labels(ds)
    by_index = load_dataset(f"wds:{shards}/train-{{000000..000001}}.tar", resolution=8)  # .cls + class_name fields
    assert by_index.class_names == NAMES
    assert_colours_match_labels(by_index)


def test_wds_without_class_names_names_classes_by_index(tmp_path):
    write_shard(tmp_path / "a.tar", [sample(f"k{k}", k % 2 * 2) for k in range(4)])  # labels 0 and 2 only
    ds = load_dataset(f"wds:{tmp_path}/a.tar", resolution=8)
    assert ds.class_names == ["0", "2"] and ds.class_ids == [0, 2] and list(ds.labels) == [0, 1, 0, 1]
    assert any("named by their index" in n for n in ds.notes)


def test_two_shard_sets_in_one_folder_keep_their_own_caches(shards):
    train = load_dataset(f"wds:{shards}/train-*.tar", resolution=8)
    test = load_dataset(f"wds:{shards}/test-*.tar", resolution=8)
    assert train.cache_path != test.cache_path and train.cache_path.exists()
    assert load_dataset(f"wds:{shards}/train-*.tar", resolution=8).from_cache


def test_wds_is_listed_and_takes_only_its_options(shards):
    assert {"wds", "hf"} <= set(FORMATS)
    assert FORMATS["wds"].options == ("label_key",)
    with pytest.raises(SynthaugError, match="The imagefolder format has no 'label_key' option"):
        read_catalog(DataConfig(spec=f"imagefolder:{shards}", label_key="label"))
    result = cli("datasets")
    assert result.exit_code == 0 and "wds" in result.output and "hf" in result.output


def test_wds_unreadable_image_is_skipped_or_with_strict_one_sentence(tmp_path):
    samples = [sample(f"k{k}", k % 2) for k in range(4)]
    samples[1]["png"] = b"\x89PNG not really"
    write_shard(tmp_path / "a.tar", samples)
    ds = load_dataset(f"wds:{tmp_path}/a.tar", resolution=8)
    assert len(ds) == 3 and [s for s, _ in ds.skipped] == ["a.tar/k1.png"]
    line = one_sentence_error(cli("inspect", f"wds:{tmp_path}/a.tar", "--strict", "-r", "8"))
    assert "1 image file could not be read" in line and "a.tar/k1.png" in line


def test_wds_bad_input_is_one_sentence(tmp_path, shards):
    assert "No shards match" in one_sentence_error(cli("inspect", f"wds:{tmp_path}/nothing-{{0..3}}.tar"))
    assert "1 of the 3 shards" in one_sentence_error(cli("inspect", f"wds:{shards}/train-{{000000..000002}}.tar"))
    write_shard(tmp_path / "nolabel.tar", [sample("k0", 0, cls=False)])
    assert "has no .cls label" in one_sentence_error(cli("inspect", f"wds:{tmp_path}/nolabel.tar"))
    write_shard(tmp_path / "noimage.tar", [{"__key__": "k0", "txt": b"hello", "cls": b"0"}])
    assert "has no image" in one_sentence_error(cli("inspect", f"wds:{tmp_path}/noimage.tar"))
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar file" * 40)
    assert "is not a readable tar file" in one_sentence_error(cli("inspect", f"wds:{tmp_path}/broken.tar"))
    with pytest.raises(SynthaugError, match=r"has no field 'species' \(its fields: class_name, label\)"):
        load_dataset(f"wds:{shards}/train-*.tar", label_key="species")
    (shards / "classes.txt").write_text("red\ngreen\n")
    with pytest.raises(SynthaugError, match="Label 2 is beyond the 2 classes in"):
        load_dataset(f"wds:{shards}/train-*.tar")


# -- hf: -----------------------------------------------------------------------------------------------

@pytest.fixture
def hf_folders(tmp_path):
    """A DatasetDict saved with save_to_disk, a single Dataset with two ClassLabels, and a parquet folder."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES),
                                  "kind": datasets.ClassLabel(names=["warm", "cool"]), "caption": datasets.Value("string")})

    def rows(labels):
        return {"image": [{"bytes": encoded(RGB[c]), "path": None} for c in labels], "label": labels,
                "kind": [int(c > 0) for c in labels], "caption": [NAMES[c] for c in labels]}

    train = datasets.Dataset.from_dict(rows([0, 1, 2] * 4), features=features)
    test = datasets.Dataset.from_dict(rows([0, 1, 2, -1]), features=features)  # -1: unlabelled, as on the hub
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "saved"))
    train.save_to_disk(str(tmp_path / "single"))
    (tmp_path / "parquet" / "data").mkdir(parents=True)
    train.to_parquet(str(tmp_path / "parquet" / "data" / "train-00000-of-00001.parquet"))
    test.to_parquet(str(tmp_path / "parquet" / "data" / "test-00000-of-00001.parquet"))
    yield tmp_path
    datasets.enable_progress_bars()


@pytest.mark.parametrize("folder", ["saved", "parquet"])
def test_hf_folder_counts_labels_names_and_splits(hf_folders, folder):
    spec = f"hf:{hf_folders / folder}"
    ds = load_dataset(spec, resolution=8, label_key="label")
    assert ds.class_names == NAMES and len(ds) == 15
    assert list(ds.class_counts("train")) == [4, 4, 4] and list(ds.class_counts("test")) == [1, 1, 1]
    assert any("1 image has no label" in n for n in ds.notes)
    assert ds.sources[0] == "train[0]" and ds.name == f"hf-{folder}"
    assert_colours_match_labels(ds)
    again = load_dataset(spec, resolution=8, label_key="label", shots_per_class=1)
    assert again.from_cache and list(again.class_counts("train")) == [1, 1, 1]
    assert again.resolve("Blue").classes == (2,)


def test_hf_label_feature_is_chosen_by_option(hf_folders):
    line = one_sentence_error(cli("inspect", f"hf:{hf_folders / 'single'}"))
    assert "has several ClassLabel features (label, kind); choose one with data.label_key" in line
    kind = load_dataset(f"hf:{hf_folders / 'single'}", resolution=8, label_key="kind")
    assert kind.class_names == ["warm", "cool"] and list(kind.class_counts()) == [4, 8]
    caption = load_dataset(f"hf:{hf_folders / 'single'}", resolution=8, label_key="caption")  # a plain string column
    assert caption.class_names == sorted(NAMES)
    assert_colours_match_labels(caption)


def test_hf_bad_input_is_one_sentence(hf_folders, tmp_path):
    with pytest.raises(SynthaugError, match=r"has no feature 'species' \(its features: image, label, kind, caption\)"):
        load_dataset(f"hf:{hf_folders / 'single'}", label_key="species")
    with pytest.raises(SynthaugError, match="is .*not a label"):
        load_dataset(f"hf:{hf_folders / 'single'}", label_key="image")
    (tmp_path / "empty").mkdir()
    assert "holds neither a dataset written by save_to_disk nor .parquet files" in one_sentence_error(
        cli("inspect", f"hf:{tmp_path / 'empty'}"))
    assert "does not exist" in one_sentence_error(cli("inspect", f"hf:{tmp_path / 'missing'}"))


def test_hf_without_the_datasets_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    line = one_sentence_error(cli("inspect", f"hf:{tmp_path}"))
    assert line == "Error: The hf: format needs the datasets package; install it with pip install 'synthaug[hf]'."


# -- fuzzed wds: and hf: data --------------------------------------------------------------------------

def png_bytes(colour=(10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), colour).save(buffer, "PNG")
    return buffer.getvalue()


GOOD_PNG = png_bytes()


LABELS = [b"0", b"1", b"2", b"-1", b"nan", b"x", b"99999999999999999999", b"1.5", b" 1 ", b"\xff\xfe", b""]


METAS = [b'{"label": 1}', b'{"label": "red", "class_name": "red"}', b'{"label": null}', b"[1]", b'{"label": 1.5}',
         b'{"label": true}', b"\xff", b'{"class_name": "green", "label": "green"}', b'{"label": -3}', b"{"]


SAMPLES = st.lists(st.tuples(
    st.sampled_from(["k0", "k1", "k2", "k0", "a.b", "d/k4"]),  # keys: repeated, dotted, in a folder
    st.sampled_from(["png", "jpg", "webp", "PNG", "txt"]),
    st.sampled_from([GOOD_PNG, GOOD_PNG, GOOD_PNG[:40], b"", b"\x89PNG not really"]),
    st.one_of(st.none(), st.sampled_from(LABELS)),
    st.one_of(st.none(), st.sampled_from(METAS)),
), max_size=6)


PATTERNS = ["a.tar", "*.tar", "a.tar|b.tar", "{a,b}.tar", "a.tar|b.tar|c.tar", "{0..3}.tar", "[ab].tar", "", "a.tar|",
            "nothing.tar", "{a..}.tar", "a.tar|*.tar"]


def write_tar(path: Path, samples, damage: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, ext, image, cls, meta in samples:
            for name, data in ((f"{key}.{ext}", image), (f"{key}.cls", cls), (f"{key}.json", meta)):
                if data is not None:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else raw[:600] + b"\xff" + raw[601:] if damage == "flipped" else raw)


def loads_or_one_sentence(spec: str, **options) -> None:
    """A dataset spec loads, or fails with a SynthaugError of one sentence; any other exception fails the test."""
    try:
        load_dataset(spec, resolution=8, **options)
    except SynthaugError as e:
        assert "\n" not in str(e) and str(e).endswith("."), str(e)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=SAMPLES, b=SAMPLES, damage=st.sampled_from(["", "truncated", "flipped"]), pattern=st.sampled_from(PATTERNS),
       classes=st.sampled_from([None, "red\ngreen\n", "", "x"]), label_key=st.sampled_from(["", "label", "class_name", "nope"]))
def test_fuzzed_wds_shards_and_specs_load_or_fail_with_one_sentence(tmp_path_factory, a, b, damage, pattern, classes, label_key):
    folder = tmp_path_factory.mktemp("wds")
    write_tar(folder / "a.tar", a, damage)
    write_tar(folder / "b.tar", b, "")
    if classes is not None:
        (folder / "classes.txt").write_text(classes)
    loads_or_one_sentence("wds:" + "|".join(str(folder / p) if p else "" for p in pattern.split("|")), label_key=label_key)


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory):
    """One small dataset, written by save_to_disk and as parquet."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("hf")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes((40 * i, 0, 0)), "path": None} for i in range(4)],
                                     "label": [0, 1, 0, 1]}, features=features)
    ds.save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    ds.to_parquet(str(root / "parquet" / "train-0.parquet"))
    return root


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), layout=st.sampled_from(["saved", "parquet"]),
       how=st.sampled_from(["truncated", "flipped", "garbage", "deleted", "empty", "kept"]),
       extra=st.sampled_from([None, "state.json", "dataset_dict.json", "x.parquet", "sub/y.parquet"]),
       label_key=st.sampled_from(["", "label", "image", "nope"]))
def test_fuzzed_hf_folders_load_or_fail_with_one_sentence(hf_saved, tmp_path_factory, caplog, data, layout, how, extra, label_key):
    folder = shutil.copytree(hf_saved / layout, tmp_path_factory.mktemp("hf") / layout)
    victim = data.draw(st.sampled_from(sorted(p for p in folder.rglob("*") if p.is_file())))
    raw = victim.read_bytes()
    changed = {"truncated": raw[: len(raw) // 2], "flipped": raw[: len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 0xFF]) + raw[len(raw) // 2 + 1:],
               "garbage": bytes(range(64)), "empty": b"", "kept": raw}
    victim.unlink() if how == "deleted" else victim.write_bytes(changed[how])
    if extra:
        (folder / extra).parent.mkdir(parents=True, exist_ok=True)
        (folder / extra).write_bytes(b"{not json" if extra.endswith(".json") else bytes(range(32)))
    caplog.clear()
    loads_or_one_sentence(f"hf:{folder}", label_key=label_key)
    assert not datasets_log_lines(caplog)


def datasets_log_lines(caplog) -> list[str]:
    """What the datasets package logged (its handler prints it on stderr, before synthaug's one sentence)."""
    return [r.getMessage() for r in caplog.records if r.name.startswith("datasets") and r.levelno >= logging.WARNING]


def test_a_parquet_file_that_is_not_parquet_is_one_sentence_and_nothing_else(tmp_path, caplog):
    pytest.importorskip("datasets")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-0.parquet").write_bytes(b"not parquet at all " * 8)
    with pytest.raises(SynthaugError, match=r"The parquet files in .* could not be read \(ArrowInvalid: Parquet magic bytes"):
        load_dataset(f"hf:{tmp_path / 'data'}", resolution=8)
    assert datasets_log_lines(caplog) == []  # was: "Failed to read schema from ..." printed before the sentence
