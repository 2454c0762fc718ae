"""What every benchmark script shares: the machine it ran on, where results go, and the real data.

Benchmarks import this as ``from harness import ...`` (they run as ``python benchmarks/bench_X.py``,
which puts this folder on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(os.environ.get("SYNTHAUG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def machine() -> str:
    """The CPU (and GPU, when there is one) in words, with the cores this process may use."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    text = f"{cpu}, {len(os.sched_getaffinity(0))} cores usable"
    try:
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
        text += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        pass
    return text


def private_cache() -> Path:
    """Point synthaug's dataset cache at a fresh folder so every run starts from the same state."""
    path = Path(tempfile.mkdtemp(prefix="synthaug-bench-cache-"))
    os.environ["SYNTHAUG_CACHE"] = str(path)
    return path


@contextmanager
def timer(into: dict, key: str):
    """``with timer(result, "train_s"):`` stores the block's wall-clock seconds in ``result[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = round(time.perf_counter() - start, 3)


def write_result(name: str, result: dict, out: Path | None = None) -> Path:
    """``results/<name>.json`` (or ``out``) with the machine and date added; prints where it went."""
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), **result}
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}")
    return out


def logged_throughput(run, from_step: int = 0) -> tuple[float, float]:
    """(images, seconds) between the first line of a run's ``log.jsonl`` at or after ``from_step`` and
    the last: training throughput without start-up, the first steps, or the final snapshot."""
    log = [json.loads(line) for line in run.log_file.read_text().splitlines()]
    warm = [e for e in log if e["step"] >= from_step]
    first, last = warm[0], warm[-1]
    return (last["kimg"] - first["kimg"]) * 1000, last["time"] - first["time"]


# -- the digits quality yardstick shared by the sampling benchmarks -------------------------------
def trained_digits_run(folder: Path, kimg: float = 0.0) -> Path:
    """``recipes/digits.toml`` trained into ``folder`` (``kimg`` > 0 shortens it); reused when finished."""
    from synthaug.generator.train import train_generator
    from synthaug.recipe import load_recipe

    overrides = [f"run_dir={folder}"] + ([f"generator.duration_kimg={kimg}"] if kimg else [])
    recipe = load_recipe(RECIPES / "digits.toml", overrides)
    info = folder / "run.json"
    if info.is_file() and json.loads(info.read_text()).get("finished"):
        print(f"reusing the trained run {folder}")
        return folder
    start = time.perf_counter()
    train_generator(recipe, fresh=True)
    print(f"trained {folder} in {time.perf_counter() - start:.0f} s")
    return folder


class DigitsYardstick:
    """Conditioning accuracy (an RBF SVM trained on the real training digits, 98.6% on the real test
    split) and FID/KID against the real test split, each next to its real-vs-real floor at the same n."""

    def __init__(self, fid_images: int):
        from sklearn.svm import SVC

        from synthaug import load_dataset
        from synthaug.weights.fid_inception import fid_weights_path

        ds = load_dataset("digits")
        self.train, self.test = ds.split("train"), ds.split("test")
        self.judge = SVC(gamma="scale").fit(self.flat(self.train.images), self.train.labels)
        self.judge_accuracy = float(self.judge.score(self.flat(self.test.images), self.test.labels))
        self.weights = fid_weights_path()
        self.fid_images = fid_images

    @staticmethod
    def flat(images):
        return images.reshape(len(images), -1) / 255.0

    def __call__(self, images, labels) -> dict:
        import numpy as np
        import torch

        from synthaug.quality import fid_kid_with_floor

        pred = self.judge.predict(self.flat(images))
        quality = fid_kid_with_floor(images, self.train.images, self.test.images, self.weights, torch.device("cpu"),
                                     max_images=self.fid_images, kid_subset_size=1000)
        return {"conditioning_accuracy": round(float(np.mean(pred == labels)), 4),
                **{k: round(v, 5) if isinstance(v, float) else v for k, v in quality.items()}}
