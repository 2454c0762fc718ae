"""Real data already in WebDataset shards (wds:) or in a Hugging Face datasets folder (hf:): counts, labels,
class names, splits, the shared decode cache, and bad input as one sentence with exit code 1."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import webdataset as wds
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
