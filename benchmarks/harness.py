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
from dataclasses import dataclass
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
    split) and FID/KID against the real test split with 95% jackknife intervals, each next to its
    real-vs-real floor (real training vs the same real test digits) at the same n."""

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

        pred = self.judge.predict(self.flat(images))
        quality = fid_with_floor(images, self.train.images, self.test.images, self.weights, self.fid_images)
        return {"conditioning_accuracy": round(float(np.mean(pred == labels)), 4), **quality}


def fid_with_floor(synthetic, real_train, real_test, weights, max_images: int, device: str = "cpu", seed: int = 0) -> dict:
    """``synthaug.quality.fid_kid_with_floor`` (FID/KID vs the real test images and the real-vs-real floor at the
    same n, with 95% jackknife intervals; real features cached), rounded for a result file."""
    import torch

    from synthaug.quality import fid_kid_with_floor

    q = fid_kid_with_floor(synthetic, real_train, real_test, weights, torch.device(device), max_images, 1000, seed)
    return rounded(q)


def rounded(values: dict, digits: int = 5) -> dict:
    """Floats (and lists of floats) rounded for a result file."""
    return {k: [round(float(x), digits) for x in v] if isinstance(v, list) else round(float(v), digits) if isinstance(v, float) else v
            for k, v in values.items()}


def spread(values: list[float]) -> dict:
    """The median of repeated measurements with their spread: min, max and the interquartile range."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": round(float(med), 2), "min": round(float(v.min()), 2), "max": round(float(v.max()), 2),
            "iqr": [round(float(q1), 2), round(float(q3), 2)], "runs": [round(float(x), 2) for x in v]}


# -- the reference: a class-conditional UNet2DModel trained the way diffusers' examples train ------
@dataclass(frozen=True)
class ReferenceMethod:
    """How the reference trains: diffusers' ``examples/unconditional_image_generation/train_unconditional.py``
    (its defaults: DDPM linear beta schedule, epsilon prediction, MSE, AdamW lr 1e-4 with betas (0.95, 0.999),
    weight decay 1e-6 and eps 1e-8, 500 warm-up steps, gradient clipping at 1, ``EMAModel`` with decay
    0.9999, inv_gamma 1 and power 3/4, ``--random_flip`` off), with class labels dropped to the null class
    10% of the time so it can be sampled with classifier-free guidance."""

    lr: float = 1e-4
    lr_schedule: str = "constant"  # after the warm-up; the example's "cosine" needs the run's length in advance
    warmup_steps: int = 500
    schedule: str = "linear"
    prediction: str = "epsilon"
    flip: bool = False
    cond_drop_prob: float = 0.1
    ema_max_decay: float = 0.9999


@dataclass
class ReferenceStep:
    """What the reference loop reports after each optimizer step."""

    step: int
    images: int  # images seen so far
    data_s: float  # seconds spent waiting for batches so far
    model: object
    ema: object
    noise_scheduler: object


def reference_files(dataset, folder: Path, native: bool = True) -> list[tuple[str, int]]:
    """(file, label) of every training image as the reference reads it.

    ``native``: the dataset's own files where it has them (the example's way: decode and resize every
    step). Otherwise (and for the in-memory digits) the decoded training images, exactly the pixels
    synthaug trains on, written once as PNGs at the training resolution.
    """
    import numpy as np
    from PIL import Image

    train = dataset.split("train")
    if native and all(Path(s).is_file() for s in train.sources[:5]):
        return list(zip(train.sources, train.labels.tolist()))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (image, label) in enumerate(zip(train.images, train.labels.tolist())):
        path = folder / f"{i:05d}.png"
        image = np.asarray(image)
        Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(path)
        out.append((str(path), label))
    return out


def reference_training(files, schema, model, method: ReferenceMethod, batch_size: int, device: str,
                       num_steps: int | None = None, precision: str | None = None, seed: int = 0):
    """The diffusers-example loop over ``files``, yielding a :class:`ReferenceStep` after every optimizer step;
    the caller times it and stops it (``num_steps`` only sizes a cosine schedule).

    Data: a ``DataLoader`` (the example's ``num_workers=0``) over the image files, opened with PIL and put
    through torchvision's Resize, CenterCrop, optional RandomHorizontalFlip, ToTensor and Normalize every
    step; then ``add_noise``, MSE on the noise, ``accelerator.backward``, clipping, AdamW, the LR schedule,
    ``EMAModel`` and ``loss.detach().item()`` every step, all through ``accelerate`` in ``precision`` (default:
    bf16 on a GPU, as synthaug trains there; float32 on a CPU).
    """
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from PIL import Image
    from torchvision import transforms

    from synthaug.generator.sampling import training_scheduler

    if method.prediction != "epsilon":
        raise ValueError("the reference trains epsilon prediction, as the diffusers example does by default")
    mode = "RGB" if schema.channels == 3 else "L"
    augmentations = transforms.Compose([
        transforms.Resize(schema.resolution, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(schema.resolution),
        transforms.RandomHorizontalFlip() if method.flip else transforms.Lambda(lambda x: x),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            path, label = files[i]
            return {"input": augmentations(Image.open(path).convert(mode)), "label": label}

    precision = precision or ("bf16" if device == "cuda" else "no")
    accelerator = Accelerator(mixed_precision=precision, cpu=device == "cpu")
    torch.manual_seed(seed)
    noise_scheduler = training_scheduler(method.schedule, 1000, method.prediction)
    optimizer = torch.optim.AdamW(model.parameters(), lr=method.lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    # shuffled epochs of whole batches, as the example's loader gives; a set smaller than one batch (a few shots per
    # class) repeats within an epoch, so every step still has the batch synthaug's side has (drop_last alone would
    # give no batch at all)
    sampler = torch.utils.data.RandomSampler(Files(), num_samples=max(len(files), batch_size))
    loader = torch.utils.data.DataLoader(Files(), batch_size=batch_size, sampler=sampler, num_workers=0, drop_last=True)
    lr_scheduler = get_scheduler("cosine" if method.lr_schedule == "cosine" else "constant_with_warmup", optimizer=optimizer,
                                 num_warmup_steps=method.warmup_steps, num_training_steps=num_steps or 10**9)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=method.ema_max_decay, use_ema_warmup=True,
                   inv_gamma=1.0, power=3 / 4)
    null = schema.num_classes
    step, images, data_s = 0, 0, 0.0
    model.train()
    while True:
        batches = iter(loader)
        while True:
            t_data = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            data_s += time.perf_counter() - t_data
            clean = batch["input"]
            labels = torch.where(torch.rand(len(clean), device=clean.device) < method.cond_drop_prob, null, batch["label"])
            noise = torch.randn(clean.shape, device=clean.device)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(clean),), device=clean.device)
            noisy = noise_scheduler.add_noise(clean, noise, timesteps)
            with accelerator.accumulate(model):
                loss = F.mse_loss(model(noisy, timesteps, labels).float(), noise)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            ema.step(accelerator.unwrap_model(model).parameters())
            loss.detach().item()  # the example logs it every step
            step += 1
            images += len(clean)
            yield ReferenceStep(step, images, data_s, accelerator.unwrap_model(model), ema, noise_scheduler)
