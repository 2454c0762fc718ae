"""The real subsets in ../shared/data, read in their published layouts (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from conftest import write_image
from synthaug import load_dataset
from synthaug.data import DataConfig, read_catalog

pytestmark = pytest.mark.data


def test_cub100(shared_data):
    ds = load_dataset(f"cub:{shared_data / 'cub100'}", resolution=32)
    assert len(ds) == 5902 and ds.num_classes == 100
    assert (ds.splits == "train").sum() == 2903 and (ds.splits == "test").sum() == 2999
    assert {"Anna Hummingbird", "Ruby throated Hummingbird", "Rufous Hummingbird"} <= set(ds.class_names)
    assert ds.images.shape == (5902, 32, 32, 3) and not ds.skipped
    assert ds.images.std() > 20  # real photos, not blank decodes
    again = load_dataset(f"cub:{shared_data / 'cub100'}", resolution=32)
    assert again.from_cache
    np.testing.assert_array_equal(again.images, ds.images)


def test_celeba6k_identity_and_attributes(shared_data):
    ds = load_dataset(f"celeba:{shared_data / 'celeba6k'}", resolution=16)
    assert len(ds) == 6000 and ds.num_classes == 200
    # identities are disjoint across the official partition, so a stratified split is used
    assert np.all(ds.class_counts("train") == 24) and np.all(ds.class_counts("test") == 6)
    smiling = load_dataset(f"celeba:{shared_data / 'celeba6k'}", resolution=16, target="Smiling")
    assert len(smiling) == 548 and smiling.attributes.shape == (548, 40)
    assert smiling.attribute_names[31] == "Smiling"
    np.testing.assert_array_equal(smiling.labels, smiling.attributes[:, 31])


def test_stanford_cars_real_devkit(shared_data, tmp_path):
    devkit = shared_data / "stanford-cars-devkit"
    root = tmp_path / "stanford_cars"
    (root / "devkit").mkdir(parents=True)
    for name in ("cars_meta.mat", "cars_train_annos.mat"):
        (root / "devkit" / name).symlink_to(devkit / name)
    rows = scipy.io.loadmat(devkit / "cars_train_annos.mat", squeeze_me=True)["annotations"]
    for row in rows[:30]:
        # small stand-ins at the real file names, large enough to hold the real boxes
        write_image(root / "cars_train" / row["fname"], (90, 90, 90), size=(int(row["bbox_x2"]) + 5, int(row["bbox_y2"]) + 5), fmt="JPEG")
    catalog = read_catalog(DataConfig(spec=f"stanford-cars:{root}"))
    assert len(catalog.class_names) == 196 and len(catalog) == 8144
    assert catalog.class_names[0] == "AM General Hummer SUV 2000"
    assert catalog.labels[0] == 13  # class 14 in the devkit, 1-based
    ds = load_dataset(f"stanford-cars:{root}", resolution=16)
    assert len(ds) == 30 and len(ds.skipped) == 8144 - 30
    assert sorted(ds.class_ids) == sorted({int(r["class"]) for r in rows[:30]})
    assert any("test split is unavailable" in n for n in ds.notes)
