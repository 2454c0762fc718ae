"""NABirds: leaf categories vs species, bounding boxes, species lookup; a tree built from the real metadata."""

from __future__ import annotations

import pytest

from conftest import mean_colour
from synthaug import SynthaugError, load_dataset
from synthaug.data import DataConfig, read_catalog

def test_leaf_categories_by_default_with_species_groups(nabirds_tree):
    ds = load_dataset(f"nabirds:{nabirds_tree}", resolution=8)
    assert ds.class_ids == [375, 380, 500, 679]
    assert list(ds.class_counts()) == [2, 3, 2, 3]
    groups = {g.name: g for g in ds.groups}
    assert set(groups) == {"Allen's Hummingbird", "Anna's Hummingbird"}
    assert groups["Allen's Hummingbird"].id == 228
    assert [ds.class_names[m] for m in groups["Allen's Hummingbird"].members] == [
        "Allen's Hummingbird (Adult Male)", "Allen's Hummingbird (Female, immature)"]


def test_species_name_resolves_to_its_categories(nabirds_tree):
    ds = load_dataset(f"nabirds:{nabirds_tree}", resolution=8)
    match = ds.resolve("allen's hummingbird")
    assert match.group and [ds.class_ids[c] for c in match.classes] == [380, 679]
    assert [ds.class_ids[c] for c in ds.resolve("Anhinga").classes] == [500]
    with pytest.raises(SynthaugError, match="did you mean \"Allen's Hummingbird\""):
        ds.resolve("Allens Humingbird")


def test_species_level_merges_categories(nabirds_tree):
    ds = load_dataset(f"nabirds:{nabirds_tree}", resolution=8, level="species")
    assert ds.class_names == ["Anna's Hummingbird", "Allen's Hummingbird", "Anhinga"]
    assert ds.class_ids == [152, 228, 500] and list(ds.class_counts()) == [2, 6, 2]
    with pytest.raises(SynthaugError, match="level 'genus' is not known"):
        load_dataset(f"nabirds:{nabirds_tree}", level="genus")


def test_boxes_crop_and_scale_with_sizes_txt(nabirds_tree):
    ds = load_dataset(f"nabirds:{nabirds_tree}", resolution=8)
    assert all(mean_colour(im).min() > 200 for im in ds.images)  # every crop is the white box


def test_hierarchy_naming_an_unknown_class_is_an_error(nabirds_tree):
    with open(nabirds_tree / "hierarchy.txt", "a") as f:
        f.write("999 0\n")
    with pytest.raises(SynthaugError, match="hierarchy.txt names class 999"):
        read_catalog(DataConfig(spec=f"nabirds:{nabirds_tree}"))


@pytest.mark.data
def test_real_nabirds_metadata_and_allens_hummingbird(real_nabirds_tree):
    catalog = read_catalog(DataConfig(spec=f"nabirds:{real_nabirds_tree}"))
    assert len(catalog) == 48562 and len(catalog.class_names) == 555
    species = read_catalog(DataConfig(spec=f"nabirds:{real_nabirds_tree}", level="species"))
    assert len(species.class_names) == 404
    ds = load_dataset(f"nabirds:{real_nabirds_tree}", resolution=16)
    assert ds.class_ids == [380, 679] and len(ds) == 177
    assert len(ds.skipped) == 48562 - 177
    match = ds.resolve("Allen's Hummingbird")
    assert [ds.class_names[c] for c in match.classes] == [
        "Allen's Hummingbird (Adult Male)", "Allen's Hummingbird (Female, immature)"]
    assert any("553 classes have no readable images" in n for n in ds.notes)
