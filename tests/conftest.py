"""Shared fixtures and helpers: tiny dataset trees in each published layout, the real subsets when present, tiny
trained runs and shard sets, caches, and the command line run in-process with its one-sentence errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthaug.recipe import SamplingConfig
from synthaug.synthesis import GenerateRequest

SHARED_DATA = Path(os.environ.get("SYNTHAUG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# One colour per class, far apart, so a label can be read back from pixels.
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (230, 210, 30), (200, 40, 200), (30, 200, 210)]


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Keep every test's dataset caches out of the user's ~/.cache."""
    old = os.environ.get("SYNTHAUG_CACHE")
    os.environ["SYNTHAUG_CACHE"] = str(tmp_path_factory.mktemp("synthaug-cache"))
    yield
    if old is None:
        os.environ.pop("SYNTHAUG_CACHE", None)
    else:
        os.environ["SYNTHAUG_CACHE"] = old


@pytest.fixture
def fid_weights():
    """The standard FID Inception weights (offline package or cache); tests that need them skip without."""
    from synthaug.errors import SynthaugError
    from synthaug.weights.fid_inception import fid_weights_path

    try:
        return fid_weights_path()
    except SynthaugError as e:
        pytest.skip(str(e))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def write_image(path: Path, colour=(200, 30, 30), size=(40, 30), box=None, box_colour=(255, 255, 255), mode="RGB", fmt=None):
    """A solid image of ``colour``; with ``box`` (x, y, w, h) a rectangle of ``box_colour`` painted on it."""
    a = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    a[:] = colour
    if box is not None:
        x, y, w, h = box
        a[y : y + h, x : x + w] = box_colour
    im = Image.fromarray(a)
    if mode != "RGB":
        im = im.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def bars(n: int, seed: int, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Vertical (0) vs horizontal (1) bars on noise: (n, 8, 8, channels) uint8 images and (n, 1) labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, 8, 8, channels)).astype(np.uint8)
    y = np.arange(n) % 2
    x[y == 0, :, 3:5] = 230
    x[y == 1, 3:5, :] = 230
    return x, y[:, None]


def mean_colour(image: np.ndarray) -> np.ndarray:
    return image.reshape(-1, image.shape[-1]).mean(axis=0)


@pytest.fixture
def cub_tree(tmp_path) -> Path:
    """3 classes x 4 images, 2 train + 2 test each; the bird (white box) fills a box in the image."""
    root = tmp_path / "CUB_200_2011"
    names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Anna_Hummingbird"]
    images, labels, splits, boxes = [], [], [], []
    n = 0
    for c, name in enumerate(names):
        for k in range(4):
            n += 1
            rel = f"{name}/{name.split('.')[1]}_{k:04d}.jpg"
            write_image(root / "images" / rel, COLOURS[c], size=(60, 40), box=(40, 10, 16, 20), fmt="PNG")
            images.append(f"{n} {rel}")
            labels.append(f"{n} {c + 1}")
            splits.append(f"{n} {1 if k < 2 else 0}")
            boxes.append(f"{n} 40.0 10.0 16.0 20.0")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{i + 1} {n}" for i, n in enumerate(names)) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(splits) + "\n")
    (root / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    return root


@pytest.fixture
def imagefolder_tree(tmp_path) -> Path:
    root = tmp_path / "cars"
    for split, count in (("train", 3), ("test", 2)):
        for c, name in enumerate(["Acura RL Sedan 2012", "BMW M3 Coupe 2012"]):
            for k in range(count):
                write_image(root / split / name / f"{k}.png", COLOURS[c])
    return root


@pytest.fixture
def celeba_tree(tmp_path) -> Path:
    """4 identities x 5 faces; the official partition puts identity 4 only in test (as CelebA does)."""
    root = tmp_path / "celeba"
    identity, partition, attrs = [], [], []
    names = ["Smiling", "Young", "Eyeglasses"]
    n = 0
    for ident in range(1, 5):
        for k in range(5):
            n += 1
            name = f"{n:06d}.jpg"
            write_image(root / "img_align_celeba" / name, COLOURS[ident - 1], size=(36, 44))
            identity.append(f"{name} {ident}")
            partition.append(f"{name} {2 if ident == 4 else (0 if k < 3 else 1)}")
            if n <= 12:
                attrs.append(f"{name} " + " ".join(["1" if k % 2 else "-1", "1", "-1"]))
    (root / "identity_CelebA.txt").write_text("\n".join(identity) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    (root / "list_attr_celeba.txt").write_text(f"{len(attrs)}\n{' '.join(names)} \n" + "\n".join(attrs) + "\n")
    return root


@pytest.fixture
def dialog_tree(celeba_tree) -> Path:
    rows = ["img_name Bangs Eyeglasses No_Beard Smiling Young"]
    for n in range(1, 21):
        rows.append(f"{n:06d}.jpg {n % 6} 0 5 {(n * 2) % 6} {5 - n % 6}")
    (celeba_tree / "combined_annotation.txt").write_text("\n".join(rows) + "\n")
    return celeba_tree


@pytest.fixture
def real_nabirds_tree(shared_data, tmp_path):
    """The complete real NABirds metadata, with small generated images at the real paths of the
    Allen's Hummingbird categories (380, 679) only."""
    meta = shared_data / "nabirds-meta"
    root = tmp_path / "nabirds"
    root.mkdir()
    for f in meta.iterdir():
        (root / f.name).symlink_to(f)
    wanted = {line.split()[0] for line in (meta / "image_class_labels.txt").read_text().splitlines()
              if line.split()[1] in ("380", "679")}
    for line in (meta / "images.txt").read_text().splitlines():
        uuid, rel = line.split()
        if uuid in wanted:
            write_image(root / "images" / rel, (120, 60, 30), size=(32, 24), fmt="JPEG")
    return root


# A tiny NABirds tree: species 228 with two variant categories, 152 with one, and a plain species.
CLASSES = {
    0: "Birds",
    19: "Swifts and Hummingbirds",
    228: "Allen's Hummingbird",
    380: "Allen's Hummingbird (Adult Male)",
    679: "Allen's Hummingbird (Female, immature)",
    152: "Anna's Hummingbird",
    375: "Anna's Hummingbird (Adult Male)",
    500: "Anhinga",
}
PARENTS = {19: 0, 228: 19, 380: 228, 679: 228, 152: 19, 375: 152, 500: 0}


@pytest.fixture
def nabirds_tree(tmp_path):
    root = tmp_path / "nabirds"
    rows = {k: [] for k in ("images", "labels", "split", "boxes", "sizes")}
    for n, leaf in enumerate([380, 380, 380, 679, 679, 679, 375, 375, 500, 500]):
        uuid = f"0000000{n}-aaaa-bbbb-cccc-dddddddddddd"
        rel = f"{leaf:04d}/{uuid.replace('-', '')}.jpg"
        # on disk at half the listed size: boxes must scale
        write_image(root / "images" / rel, COLOURS[n % 3], size=(50, 40), box=(30, 5, 10, 10), fmt="PNG")
        rows["images"].append(f"{uuid} {rel}")
        rows["labels"].append(f"{uuid} {leaf}")
        rows["split"].append(f"{uuid} {0 if n % 3 == 2 else 1}")
        rows["boxes"].append(f"{uuid} 60 10 20 20")
        rows["sizes"].append(f"{uuid} 100 80")
    files = {"images": "images.txt", "labels": "image_class_labels.txt", "split": "train_test_split.txt",
             "boxes": "bounding_boxes.txt", "sizes": "sizes.txt"}
    for key, name in files.items():
        (root / name).write_text("\n".join(rows[key]) + "\n")
    (root / "classes.txt").write_text("".join(f"{i} {n}\n" for i, n in CLASSES.items()))
    (root / "hierarchy.txt").write_text("".join(f"{c} {p}\n" for c, p in PARENTS.items()))
    return root


# A generator small enough to train in seconds on a CPU: U-Net 8 x (1, 2), 32 images a step.
TINY = [
    "generator.base_channels=8",
    "generator.batch_size=32",
    "generator.duration_kimg=0.128",  # 4 steps
    "generator.log_every_kimg=0.032",  # every step
    "generator.snapshot_every_kimg=0.064",
    "generator.grid_every_kimg=0",
    "generator.warmup_kimg=0.032",
    "sampling.steps=3",
    "sampling.network_batch=8",
    "sampling.batch_size=16",
]


def tiny_recipe(run_dir, *extra, source=None):
    from synthaug.recipe import load_recipe

    return load_recipe(source, [*TINY, f"run_dir={run_dir}", *extra])


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A tiny generator trained for 4 steps on the digits (session-wide: several tests sample it)."""
    from synthaug.generator.train import train_generator

    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    return train_generator(tiny_recipe(run_dir))


# A run trained for two steps (a snapshot and a grid at the end), for tests that need a finished run to copy.
TWO_STEPS = ("generator.duration_kimg=0.064", "generator.grid_every_kimg=0.064")


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A finished 2-step digits run, trained under umask 022; tests work on copies of it (:func:`copy_of`)."""
    from synthaug.generator.train import train_generator

    old = os.umask(0o022)
    try:
        return train_generator(tiny_recipe(tmp_path_factory.mktemp("finished") / "run", *TWO_STEPS)).path
    finally:
        os.umask(old)


def copy_of(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


# -- shard sets ------------------------------------------------------------------------------------

SAMPLING = SamplingConfig(steps=2, network_batch=8, batch_size=8, images_per_shard=4)
REQUEST = GenerateRequest(classes=("2", "5"), num=16)  # the `generated` set: 16 digits in 4 shards of 4


@pytest.fixture(scope="session")
def generated(digits_run, tmp_path_factory):
    from synthaug.synthesis import generate_shards

    out = tmp_path_factory.mktemp("generated") / "s"
    generate_shards(digits_run.path, REQUEST, out, SAMPLING)
    return out


@pytest.fixture
def shard_set(generated, tmp_path):
    """A copy of a finished set, for one test to change."""
    return shutil.copytree(generated, tmp_path / "s")


# -- files and caches ------------------------------------------------------------------------------

def files_of(folder: Path, leave_out: tuple[str, ...] = (".lock",)) -> dict:
    """Every file under ``folder`` with its sha256 (but the lock file): the same before and after means untouched."""
    from synthaug.files import sha256_file

    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in leave_out}


def snapshot(run: Path) -> dict:
    """Every file of a run folder with its sha256 (but the lock, and recipe.toml, which records the run_dir
    of the copy that last trained)."""
    return files_of(run, leave_out=(".lock", "recipe.toml"))


def flip_byte(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHAUG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def unwritable_cache(tmp_path, monkeypatch):
    """A cache path under a file: nothing can be created there, even by root (chmod would not stop root)."""
    (tmp_path / "blocker").write_text("a file, not a folder")
    monkeypatch.setenv("SYNTHAUG_CACHE", str(tmp_path / "blocker" / "cache"))


@pytest.fixture
def fake_inception(monkeypatch):
    """Inception replaced by a cheap, deterministic feature map; ``calls`` counts the images it was run on."""
    import torch

    from synthaug.weights import fid_inception as fi

    calls = []

    def run(images, weights, device):
        calls.append(len(images))
        x = torch.from_numpy(np.asarray(images, dtype=np.float64)).reshape(len(images), -1)
        return x.mean(1, keepdim=True) * torch.linspace(0, 1, fi.FEATURE_DIM, dtype=torch.float64)

    monkeypatch.setattr(fi, "inception_features", run)
    return calls


# -- the command line ------------------------------------------------------------------------------

def cli(*args, env=None):
    """`synthaug ARGS` run in-process by Typer's CliRunner (paths may be given as Path objects); a traceback in
    its output fails the test."""
    from typer.testing import CliRunner

    from synthaug.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300", **(env or {})})
    assert "Traceback" not in result.output, result.output
    return result


def count_reads(monkeypatch, folder: Path, names: tuple[str, ...]) -> list[str]:
    """A list that grows by a file's name each time one of ``names`` in ``folder`` is read (Path.read_text)."""
    reads, read_text, folder = [], Path.read_text, folder.resolve()

    def counted(path, *args, **kwargs):
        if path.name in names and path.parent.resolve() == folder:
            reads.append(path.name)
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    return reads


def error_line(result) -> str:
    """The one error sentence of a failed command: exit code 1, the last line of the output, and the only line
    that starts with Error: (what the command printed before failing, such as log lines, may come first)."""
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 1 and lines[-1].startswith("Error: "), result.output
    assert sum(line.startswith("Error: ") for line in lines) == 1, result.output
    return lines[-1]


def one_sentence_error(result) -> str:
    """:func:`error_line` of a command that printed nothing else: one line, one sentence."""
    line = error_line(result)
    assert len([x for x in result.output.splitlines() if x.strip()]) == 1 and line.endswith((".", "?")), result.output
    return line
