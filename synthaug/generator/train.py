"""Train a conditional diffusion generator: recipe + real training split -> a run folder.

One flat loop (seed -> data -> model -> optimizer/EMA -> resume -> loop -> log/snapshot). All the
randomness of step k (which images, noise, timesteps, dropped conditions, flips) is drawn from a
generator seeded by (seed, k) for the whole global batch, so a resumed run continues exactly where
an uninterrupted one would, and the trajectory does not depend on how the batch is split over
devices or accumulation steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from synthaug import progress
from synthaug.data import load_dataset
from synthaug.device import out_of_memory_advice
from synthaug.errors import SynthaugError
from synthaug.files import (
    check_output_path,
    exclusive_lock,
    folder_atomic,
    reserve_space,
    sha256_file,
    write_checksums,
    write_text_atomic,
)
from synthaug.generator.align import alignment_loss
from synthaug.generator.augment import apply_augmentations, draw_augmentations, lognormal_timesteps, power_ema, power_ema_gamma
from synthaug.generator.backends import Backend, build_model, describe_backend
from synthaug.conditions import ConditionSchema, encode_dataset, schema_from_dataset
from synthaug.generator.loss import DiffusionLoss
from synthaug.generator.sampling import loss_prediction, sample_images
from synthaug.grids import save_png, spread_classes, tile_images
from synthaug.recipe import Recipe
from synthaug.runs import SNAPSHOT_RECORD, Run, prepare_training, record_training, weights_intact
from synthaug.seeds import derive_seed

log = logging.getLogger(__name__)

def clock() -> float:
    """Seconds on the training loop's clock (read once per step; the time budget and images/s use it)."""
    return time.perf_counter()


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed("train", seed, step))


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("epoch", seed, epoch)))


def batch_rows(step: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """The dataset rows of optimizer step ``step``: consecutive slices of per-epoch permutations."""
    rows, start = [], step * batch
    while len(rows) < batch:
        epoch, offset = divmod(start, n)
        take = epoch_order(seed, epoch, n)[offset : offset + batch - len(rows)]
        rows.extend(take.tolist())
        start += len(take)
    return torch.tensor(rows, dtype=torch.long)


def drop_conditions(cond: torch.Tensor, null: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Replace conditions by the null with probability ``p`` (whole condition); attributes are also
    dropped one by one with probability ``p``, so partly specified attribute vectors are trained too."""
    whole = torch.rand(len(cond), generator=g, device=cond.device) < p
    if cond.ndim == 1:
        return torch.where(whole, null, cond)
    each = torch.rand(cond.shape, generator=g, device=cond.device) < p
    return torch.where(whole[:, None] | each, null, cond)


def frozen_names(model: Backend) -> set[str]:
    """The parameters the backend does not train (a base model's), which its training state leaves out."""
    trainable = {id(p) for p in model.trainable_parameters()}
    return {name for name, p in model.named_parameters() if id(p) not in trainable}


def trainable_state(model: Backend) -> dict:
    """The model's state without its frozen parameters (those are read again from the base model)."""
    frozen = frozen_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def load_trainable_state(model: Backend, state: dict) -> None:
    frozen = frozen_names(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - frozen:
        raise SynthaugError("The saved training state does not fit this generator; start over with --fresh.")


def device_budget(device: torch.device) -> int:
    """Bytes of training data held whole on ``device``: a quarter of a GPU's free memory, or on the CPU
    $SYNTHAUG_RESIDENT_BYTES (256 MiB); a larger training set is streamed from its memory-mapped cache."""
    from synthaug.images import resident_bytes

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(free // 4, resident_bytes() * 16)
    return resident_bytes()


class StepShares(torch.utils.data.Dataset):
    """Item i: this process's share of the batch of step ``first + i``, gathered from a memory-mapped array (the
    decode cache (N, H, W, C) uint8 -> (b, C, H, W), or the latent cache (F, N, ...) -> (F, b, ...))."""

    def __init__(self, source, latents: bool, seed: int, batch: int, n: int, share: slice, first: int, steps: int):
        self.source, self.latents, self.seed, self.batch, self.n = source, latents, seed, batch, n
        self.share, self.first, self.steps = share, first, steps

    def __len__(self) -> int:
        return self.steps - self.first

    def __getitem__(self, i: int) -> torch.Tensor:
        from synthaug.images import as_tensor

        rows = batch_rows(self.first + i, self.batch, self.n, self.seed)[self.share].numpy()
        if self.latents:
            return torch.from_numpy(np.ascontiguousarray(self.source[:, rows]))
        pixels = self.source.gather(rows) if hasattr(self.source, "gather") else np.asarray(self.source)[rows]
        return as_tensor(pixels).permute(0, 3, 1, 2).contiguous()


class TrainingImages:
    """The training set as the backend denoises it, one step's share at a time.

    Held on the device when it fits :func:`device_budget` (the fast path: every image as uint8, or every VAE
    latent, in device memory; one indexing per step). Else streamed: a ``DataLoader`` whose workers gather each
    step's rows from the memory-mapped cache ahead of time, into pinned memory, copied to the device without
    blocking. Both paths hand the loop the same numbers. A backend whose ``encode`` is costly (a VAE) has every
    image, and its mirror image when flipping, encoded once, in batches, into an on-disk latent cache
    (``latent_cache``) when streamed.
    """

    def __init__(self, model: Backend, source, flip: bool, device: torch.device, seed: int, batch: int, share: slice,
                 first_step: int, steps: int, latent_cache: Path | None = None, workers: int | None = None):
        self.model, self.flip, self.device = model, flip, device
        self.seed, self.batch, self.share, self.n = seed, batch, share, len(source)
        views = 2 if flip else 1
        c, h, w = (source.shape[3], source.shape[1], source.shape[2])
        size = self.n * (views * 4 * int(np.prod(model.sample_shape)) if model.encode_once else c * h * w)
        self.streamed = size > device_budget(device)
        self.latents = None
        if model.encode_once:
            self.latents = self.encode_all(source, views, latent_cache if self.streamed else None)
        elif not self.streamed:
            from synthaug.images import to_device_images

            self.images = to_device_images(source, h, device)  # (N, C, H, W) uint8, filled in place (square images)
        held = "latents" if model.encode_once else "images"
        if self.streamed:
            workers = workers if workers is not None else min(4, max(1, len(os.sched_getaffinity(0)) - 1))
            data = StepShares(self.latents if model.encode_once else source, model.encode_once, seed, batch, self.n, share,
                              first_step, steps)
            self.loader = iter(torch.utils.data.DataLoader(data, batch_size=None, num_workers=workers,
                                                           pin_memory=device.type == "cuda",
                                                           prefetch_factor=4 if workers else None))
            log.info("Training data: %d %s (%.1f GB) streamed from the memory-mapped cache by %d DataLoader workers.",
                     self.n, held, size / 1e9, workers)
        else:
            log.info("Training data: %d %s (%.1f MB) held on %s.", self.n, held, size / 1e6, device)

    def encode_all(self, source, views: int, cache: Path | None):
        """Every image (and its mirror image) encoded once, in batches: on the device, or into the latent cache file."""
        from synthaug.images import as_tensor, chunks_of

        shape = (views, self.n, *self.model.sample_shape)
        if cache is not None and cache.is_file():
            try:
                cached = np.load(cache, mmap_mode="r")
                if cached.shape == shape:
                    log.info("Read the VAE latents from %s.", cache)
                    return cached
            except (OSError, ValueError):
                pass
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
        out = (np.lib.format.open_memmap(cache.with_suffix(".partial"), mode="w+", dtype=np.float32, shape=shape)
               if cache is not None else torch.empty(shape, device=self.device))
        if cache is not None:
            reserve_space(cache.with_suffix(".partial"))  # a full disk: an error naming the file, not a SIGBUS
        start = 0
        with progress.task(f"encoding {self.n} images with the VAE", total=self.n) as bar, torch.no_grad():
            for chunk in chunks_of(source, 64):
                x = as_tensor(chunk).permute(0, 3, 1, 2).to(self.device)
                for v, view in enumerate((x, x.flip(3))[:views]):
                    z = self.model.encode(view)
                    if cache is not None:
                        out[v, start : start + len(x)] = z.float().cpu().numpy()
                    else:
                        out[v, start : start + len(x)] = z
                start += len(x)
                bar.advance(len(x))
        if cache is None:
            return out
        out.flush()
        del out
        os.replace(cache.with_suffix(".partial"), cache)
        return np.load(cache, mmap_mode="r")

    def step_share(self, step: int, rows: torch.Tensor) -> torch.Tensor:
        """This process's share of step ``step``'s batch (``rows``: the step's global rows, on the device)."""
        if self.streamed:
            return next(self.loader).to(self.device, non_blocking=True)
        mine = rows[self.share]
        return self.latents[:, mine] if self.latents is not None else self.images[mine]

    def take(self, share: torch.Tensor, part: slice, mirrored: torch.Tensor) -> torch.Tensor:
        """x0 of the micro-batch ``part`` of a share: its latents (mirror images' where ``mirrored``), or its pixels
        (mirrored) scaled by the backend."""
        if self.latents is not None:
            return share[:, part][mirrored.long(), torch.arange(len(mirrored), device=mirrored.device)]
        x = share[part]
        return self.model.encode(torch.where(mirrored[:, None, None, None], x.flip(3), x))


def latent_cache_path(recipe: Recipe, run: Run, schema: ConditionSchema) -> Path:
    """Where a latent backend's training latents are cached: keyed by the base model's sha256 (VAE included), the
    real images (their pixels by source file, and the decode settings) and the flip."""
    import hashlib

    from synthaug.cache import cache_root

    base = run.info().get("text", {}).get("base_model_sha256") or recipe.generator.base_model
    key = json.dumps([base, schema.train_pixels_sha256, dataclasses.asdict(recipe.data), recipe.generator.flip])
    return cache_root() / "latents" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"


def grid_conditions(schema: ConditionSchema, per_row: int = 8, max_rows: int = 10) -> tuple[torch.Tensor, int]:
    """Conditions for a sample grid: a row per class (evenly spread), or per attribute with its levels."""
    if schema.kind == "class":
        return torch.tensor(np.repeat(spread_classes(schema.num_classes, max_rows), per_row)), per_row
    rows = []
    width = max(schema.attribute_levels)
    for a, levels in enumerate(schema.attribute_levels):
        for level in range(width):
            row = list(schema.attribute_levels)  # null elsewhere
            row[a] = min(level, levels - 1)
            rows.append(row)
    return torch.tensor(rows), width


def save_grid(denoiser: Backend, schema: ConditionSchema, scheduler_config: dict, recipe: Recipe, path: Path, autocast) -> None:
    cond, per_row = grid_conditions(schema)
    s = recipe.sampling
    seeds = [derive_seed(s.seed, "grid column", i % per_row) for i in range(len(cond))]  # a column shares its noise
    images = sample_images(denoiser, cond, schema.null(1), seeds, scheduler_config, s, autocast_dtype=autocast)
    save_png(tile_images(images, per_row), path, min_side=512)


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema, use: bool = True):
    """Inside the block, ``model`` holds its EMA weights (diffusers' store / copy_to / restore: no copy of the
    model, which for sd-lora would be the whole Stable Diffusion U-Net); its training mode is restored too."""
    if not use:
        yield model
        return
    params, training = model.trainable_parameters(), model.training
    ema.store(params)
    ema.copy_to(params)
    try:
        yield model
    finally:
        ema.restore(params)
        model.train(training)


def save_weights(run: Run, model: Backend, ema, train_sched, step: int, nimg: int) -> None:
    """The raw and the EMA weights (diffusers layout) with the noise schedule and the step they are of
    (``snapshot.json``, which generate checks against run.json), each folder atomically."""
    for folder in (run.model_dir, run.ema_dir):
        with folder_atomic(folder) as tmp, ema_weights(model, ema, folder == run.ema_dir):
            model.save_pretrained(tmp)
            train_sched.save_pretrained(tmp / "scheduler")
            (tmp / SNAPSHOT_RECORD).write_text(json.dumps({"step": step, "nimg": nimg, "kimg": round(nimg / 1000, 3)}) + "\n")
            write_checksums(tmp)  # checked before the weights are used


def save_snapshot(run: Run, model: Backend, ema, optimizer, lr_sched, train_sched, step: int, nimg: int, finished: bool,
                  grid: str | None = None, processes: int = 1, seconds: float = 0.0, loss: tuple[float, int] = (0.0, 0)) -> None:
    """Weights (raw and EMA, diffusers layout), then the full training state, each folder atomically; then
    run.json (progress, the processes that trained, ``grid``: the latest sample grid of the current settings, relative
    to the run folder, and ``train_seconds``: the training loop's wall time so far, over every resumption). ``loss``:
    the loss summed over the steps since the last log line and their count, which a resumed run's next line includes."""
    save_weights(run, model, ema, train_sched, step, nimg)
    with folder_atomic(run.state_dir) as tmp:
        state = {
            "model": trainable_state(model),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_sched.state_dict(),
            "step": step,
            "nimg": nimg,
            "train_seconds": seconds,
            "loss_sum": loss[0],
            "loss_count": loss[1],
        }
        torch.save(state, tmp / "training_state.pt")
        meta = {"step": step, "nimg": nimg, "finished": finished, "train_seconds": round(seconds, 3),
                "sha256": sha256_file(tmp / "training_state.pt")}
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    info = run.info()
    info.update(kimg=round(nimg / 1000, 3), step=step, finished=finished, processes=processes, train_seconds=round(seconds, 3))
    info.update({"grid": grid} if grid else {})
    if not grid:
        info.pop("grid", None)
    write_text_atomic(run.info_file, json.dumps(info, indent=1))


def next_point(nimg: int, first: float, every: float, batch: int) -> int:
    """Images seen at the next point after ``nimg`` of a schedule (log lines, grids, snapshots): the end of the step
    that reaches ``first`` images, then of the step that reaches ``every`` images more, and so on. A function of the
    images seen since the run began, so a resumed run logs, draws and snapshots where an uninterrupted one does.

    >>> [next_point(n, 50, 96, 32) for n in (0, 64, 96, 160)]
    [64, 160, 160, 256]
    """
    def steps(n: float) -> int:
        return max(1, math.ceil(n / batch - 1e-9))  # 1e-9: 0.032 kimg * 1000 is 32 images, not 32.000000000000004

    start, period = steps(first) * batch, steps(every) * batch
    return start if nimg < start else start + ((nimg - start) // period + 1) * period


def dataset_label(spec: str) -> str:
    """A dataset spec short enough for a progress bar: ``cub:/data/CUB_200_2011`` -> ``cub:CUB_200_2011``."""
    kind, sep, path = spec.partition(":")
    return f"{kind}:{Path(path).name or path}" if sep and path else spec


def build_training(recipe: Recipe, device: torch.device):
    """What training a recipe starts from, each part checked: the real training split (and low-data subset), its
    condition schema, the freshly initialised network with its noise schedule, and the loss. Writes nothing, so
    anything wrong in the recipe or the data is found before a run folder is touched.

    Returns:
        (dataset, schema, model, train_sched, loss_fn, align): ``align`` is the frozen encoder of representation
        alignment (:class:`~synthaug.generator.align.AlignmentTarget`), or None without ``generator.align_encoder``.
    """
    g_cfg = recipe.generator
    dataset = load_dataset(recipe.data).split("train")  # the real training split (and low-data subset) only
    schema = schema_from_dataset(dataset, g_cfg.condition)
    align = None
    if g_cfg.align_encoder:  # its weights are loaded (or the missing package named) before anything is written
        from synthaug.generator.align import AlignmentTarget
        from synthaug.generator.model import PRESETS

        align = AlignmentTarget(g_cfg, schema, len(g_cfg.channel_mult or PRESETS[g_cfg.preset].channel_mult))
    torch.manual_seed(g_cfg.seed)
    model, train_sched = build_model(g_cfg, schema, device, align.dim if align else 0)  # sd-lora: the base model's schedule
    # the loss trains what the saved schedule says the network predicts (epsilon or v), never another
    loss_fn = DiffusionLoss(loss_prediction(train_sched.config), g_cfg.loss, g_cfg.min_snr_gamma)
    return dataset, schema, model, train_sched, loss_fn, align


def check_run_folder(recipe: Recipe) -> None:
    """Refuse, before any work, a run folder (``recipe.run_dir``) that cannot be made: :func:`train_generator` checks
    it first (the command line too, before it prints the recipe, so that the mistake is all it prints)."""
    check_output_path(recipe.run_path, "run_dir")


def train_generator(recipe: Recipe, fresh: bool = False) -> Run:
    """Train (or resume) the generator of ``recipe`` in its run folder.

    Args:
        recipe: the resolved recipe; its ``data`` training split is the only real data used, and its ``run_dir``
            (checked first: :func:`check_run_folder`) is the run folder.
        fresh: delete what the run folder holds and start over.

    Returns:
        The trained :class:`~synthaug.runs.Run`.
    """
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    check_run_folder(recipe)
    g_cfg = recipe.generator
    run = Run(recipe.run_path)
    mixed = g_cfg.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())  # cpu: see process_state
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    if g_cfg.batch_size % world:
        raise SynthaugError(f"generator.batch_size {g_cfg.batch_size} does not split over {world} devices; use a multiple of {world}.")
    per_device = g_cfg.batch_size // world
    micro = g_cfg.batch_per_device or per_device
    if per_device % micro:
        raise SynthaugError(f"Each device's share of the batch ({per_device}) is not a multiple of generator.batch_per_device ({micro}).")
    accum = per_device // micro

    run.check_trainable()  # a folder that is not a synthaug run is neither created into nor overwritten
    # 1. everything that can fail on the recipe, before the run folder is made or touched (--fresh included): the
    #    data, its conditions, the model (preset, resolution, base model) and its objective
    dataset, schema, model, train_sched, loss_fn, align = build_training(recipe, device)
    if accelerator.is_main_process:
        for note in dataset.notes:  # what the data layer decided (splits, skipped files, short classes)
            log.info("%s: %s", recipe.data.spec, note)
    total_steps = max(1, math.ceil(g_cfg.duration_kimg * 1000 / g_cfg.batch_size))
    total_nimg = total_steps * g_cfg.batch_size
    budget_s = g_cfg.duration_minutes * 60  # 0: no time budget

    run.path.mkdir(parents=True, exist_ok=True)
    lock = exclusive_lock(run.lock_file, f"the run folder {run.path}") if accelerator.is_main_process else contextlib.nullcontext()
    with lock:
        # 2. the run folder: start over, resume, or begin
        start = prepare_training(run, recipe, schema, total_steps, fresh, accelerator.is_main_process,
                                 accelerator.wait_for_everyone)
        state, trained_steps, trained_s, out_of_time = start.state, start.steps, start.seconds, start.out_of_time
        finished_without_state = start.finished_without_state

        # 3. the run's description, noise schedule, optimizer, EMA (the data comes in 4.)
        conds = torch.from_numpy(encode_dataset(schema, dataset)).to(device)
        null = schema.null(1, device)[0]
        if accelerator.is_main_process:
            record_training(run, recipe, schema, lambda: describe_backend(g_cfg, schema))
            if align is not None and "prior" not in (info := run.info()):
                info["prior"] = {"kind": "representation alignment", **align.describe()}
                write_text_atomic(run.info_file, json.dumps(info, indent=1))
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        num_timesteps = train_sched.config.num_train_timesteps
        alphas_cumprod = train_sched.alphas_cumprod.to(device)
        params = model.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=g_cfg.lr, weight_decay=g_cfg.weight_decay,
                                      fused=device.type in ("cuda", "cpu"))  # one kernel for all parameters
        warmup_steps = int(g_cfg.warmup_kimg * 1000 / g_cfg.batch_size)
        lr_sched = get_scheduler("cosine" if g_cfg.lr_schedule == "cosine" else "constant_with_warmup", optimizer,
                                 num_warmup_steps=warmup_steps, num_training_steps=total_steps)
        if g_cfg.ema_std:  # EDM2's power-function EMA: its window is a fixed share of the run so far
            ema = power_ema(EMAModel, power_ema_gamma(g_cfg.ema_std))(params, decay=1.0, foreach=True)
        else:
            ema = EMAModel(params, decay=g_cfg.ema_decay, use_ema_warmup=True, power=g_cfg.ema_power, foreach=True)

        # 4. resume
        step = nimg = 0
        carried = (0.0, 0)
        if finished_without_state:
            step, nimg = trained_steps, trained_steps * g_cfg.batch_size
            log.info("%s has finished training (its training state was removed); nothing to do.", run.path)
        if state is not None:
            load_trainable_state(model, state["model"])
            ema.load_state_dict(state["ema"])
            ema.to(device)
            optimizer.load_state_dict(state["optimizer"])
            lr_sched.load_state_dict(state["lr_scheduler"])
            step, nimg = state["step"], state["nimg"]
            carried = (state.get("loss_sum", 0.0), state.get("loss_count", 0))  # the steps since the last log line
            log.info("Resuming %s at %.1f kimg (step %d).", run.path, nimg / 1000, step)
            info = run.info()
            finished = step >= total_steps or out_of_time
            if accelerator.is_main_process and (info.get("step"), info.get("finished")) != (step, finished):
                # a kill (or a full disk) between the state's swap and run.json's write left run.json behind the
                # state: say what the state holds, since manifests and the benchmark copy run.json's kimg
                info.update(kimg=round(nimg / 1000, 3), step=step, finished=finished, train_seconds=round(trained_s, 3))
                write_text_atomic(run.info_file, json.dumps(info, indent=1))
            if accelerator.is_main_process and not weights_intact(run, step):
                # a damaged or missing model/ or ema/ (which generate refuses), or weights a failed snapshot wrote past
                # the state, are rewritten from the state
                log.warning("Rewriting the weights in %s and %s from the training state.", run.model_dir, run.ema_dir)
                save_weights(run, model, ema, train_sched, step, nimg)
        del state
        # what the network denoises: held on the device, or streamed (a VAE backend encodes the images, and their
        # mirror images, once here)
        if out_of_time:
            log.info("%s has used its time budget (%.2f of generator.duration_minutes = %g); nothing to do.", run.path,
                     trained_s / 60, g_cfg.duration_minutes)
        data = None
        if nimg < total_nimg and not out_of_time:
            data = TrainingImages(model, dataset.images, g_cfg.flip, device, g_cfg.seed, g_cfg.batch_size,
                                  slice(rank * per_device, (rank + 1) * per_device), step, total_steps,
                                  latent_cache_path(recipe, run, schema) if model.encode_once else None)
        targets = None
        if data is not None and align is not None:  # the encoder's features of every training image, computed once
            if not accelerator.is_main_process:
                accelerator.wait_for_everyone()  # the first process computes and caches them; the others read
            targets = align.features(dataset.images, schema.train_pixels_sha256, g_cfg.flip).to(device)
            if accelerator.is_main_process:
                accelerator.wait_for_everyone()
        net = torch.compile(model) if g_cfg.compile else model
        net, optimizer = accelerator.prepare(net, optimizer)
        autocast = torch.bfloat16 if mixed == "bf16" else torch.float16 if mixed == "fp16" else None

        # 5. the loop: logs, grids and snapshots at points of the images seen since the run began (the first log line
        #    comes early, within 2% of the run, so a log shows progress at once)
        first_log, batch = min(g_cfg.log_every_kimg * 1000, max(g_cfg.batch_size, 0.02 * total_nimg)), g_cfg.batch_size
        next_log = next_point(nimg, first_log, g_cfg.log_every_kimg * 1000, batch)
        next_snapshot = next_point(nimg, g_cfg.snapshot_every_kimg * 1000, g_cfg.snapshot_every_kimg * 1000, batch)
        next_grid = next_point(nimg, g_cfg.grid_every_kimg * 1000, g_cfg.grid_every_kimg * 1000, batch)
        # the latest sample grid, recorded in run.json at each snapshot; none when this run draws none
        grid = run.info().get("grid") if g_cfg.grid_every_kimg else None
        loss_sum, loss_count, last_good = torch.tensor(float(carried[0]), device=device), int(carried[1]), (step, nimg)
        align_sum, align_count = torch.zeros((), device=device), 0  # the alignment loss since the last log line
        loop_start = tick_time = clock()
        tick_nimg = nimg
        smaller = max((d for d in range(1, micro) if per_device % d == 0), default=0)
        oom = (f"training {micro} images per step on each device; set generator.batch_per_device to {smaller} (or another "
               f"divisor of {per_device}): the batch stays {g_cfg.batch_size} through gradient accumulation, and the same "
               "command resumes from the last snapshot." if smaller else
               "training one image per step; use a smaller generator.preset or data.resolution.")
        what = f"training on {dataset_label(recipe.data.spec)}" + (f" for {g_cfg.duration_minutes:g} min" if budget_s else "")
        # the bar counts images seen, or with a time budget the budget's seconds (its eta is then the budget's end)
        with out_of_memory_advice(oom), progress.task(what, total=budget_s or total_nimg) as bar:
            bar.resume(min(trained_s, budget_s) if budget_s else nimg)
            shown = min(trained_s, budget_s)
            while nimg < total_nimg and not out_of_time:
                # (a) all randomness of this step, drawn for the global batch
                g = step_generator(g_cfg.seed, step, device)
                rows = batch_rows(step, g_cfg.batch_size, len(dataset), g_cfg.seed).to(device)
                if g_cfg.noise_sampling == "lognormal":
                    t_all = lognormal_timesteps(g_cfg.batch_size, alphas_cumprod, g_cfg.lognormal_mean, g_cfg.lognormal_std,
                                                g, device)
                else:
                    t_all = torch.randint(0, num_timesteps, (g_cfg.batch_size,), generator=g, device=device)
                noise_all = torch.randn((g_cfg.batch_size, *model.sample_shape), generator=g, device=device)
                cond_all = drop_conditions(conds[rows], null, g_cfg.cond_drop_prob, g)
                flip_all = torch.rand(g_cfg.batch_size, generator=g, device=device) < (0.5 if g_cfg.flip else 0.0)
                aug_all = (draw_augmentations(g_cfg.batch_size, g_cfg.augment, model.sample_shape[-1], g, device)
                           if g_cfg.augment else None)
                net.train()
                share = data.step_share(step, rows)
                for m in range(accum):
                    sl = slice(rank * per_device + m * micro, rank * per_device + (m + 1) * micro)
                    x0 = data.take(share, slice(m * micro, (m + 1) * micro), flip_all[sl])
                    t, noise = t_all[sl], noise_all[sl]
                    extra = ()
                    if aug_all is not None:
                        x0, labels = apply_augmentations(x0, aug_all[sl])
                        extra = (labels,)
                    x_t = train_sched.add_noise(x0, noise, t)
                    if device.type == "cuda":
                        x_t = x_t.contiguous(memory_format=torch.channels_last)
                    with accelerator.no_sync(net) if m < accum - 1 else torch.enable_grad():
                        if targets is None:
                            out = net(x_t, t, cond_all[sl], *extra)
                            loss = loss_fn(out, x0, noise, alphas_cumprod[t])
                            objective = loss
                        else:  # representation alignment: toward the encoder's features of the (mirrored) clean images
                            out, projected = net(x_t, t, cond_all[sl], *extra, tokens=align.grid)
                            loss = loss_fn(out, x0, noise, alphas_cumprod[t])
                            aligned = alignment_loss(projected, targets[flip_all[sl].long(), rows[sl]])
                            objective = loss + g_cfg.align_weight * aligned
                            align_sum += aligned.detach()
                            align_count += 1
                        accelerator.backward(objective / accum)
                    loss_sum += loss.detach()
                    loss_count += 1
                if g_cfg.grad_clip:
                    accelerator.clip_grad_norm_(net.parameters(), g_cfg.grad_clip)
                optimizer.step()
                lr_sched.step()
                optimizer.zero_grad(set_to_none=True)
                ema.step(params)
                step += 1
                nimg += g_cfg.batch_size
                if not budget_s:
                    bar.advance(g_cfg.batch_size)

                # (b) log, grid and snapshot on their schedules (the only host-device syncs)
                done = nimg >= total_nimg
                now = clock()
                seconds = trained_s + now - loop_start
                if budget_s and not done and (world == 1 or step % 16 == 0):
                    # every step on one process (a host clock, no device sync); several processes agree every 16 steps
                    over = seconds >= budget_s
                    if world > 1:
                        over = accelerator.reduce(torch.tensor(float(over), device=device), "sum").item() > 0
                    out_of_time = done = over
                log_now, snapshot_now = nimg >= next_log or done, nimg >= next_snapshot or done
                if budget_s:
                    bar.advance(min(seconds, budget_s) - shown)
                    shown = min(seconds, budget_s)
                if log_now or snapshot_now:
                    # the loss of every step since the last check, summed on the device: the only host-device sync
                    summed = accelerator.reduce(loss_sum, "mean").item()
                    mean_loss = summed / max(loss_count, 1)
                    if not math.isfinite(mean_loss):  # never snapshot a diverged model
                        raise SynthaugError(
                            f"Training diverged: the loss became {mean_loss} between step {last_good[0]} and step {step}; "
                            f"the last good state (step {last_good[0]}, {last_good[1] / 1000:.1f} kimg) is kept in "
                            f"{run.state_dir}; lower generator.lr and run the same command again."
                        )
                if log_now:
                    ips = (nimg - tick_nimg) / max(now - tick_time, 1e-9)
                    if accelerator.is_main_process:
                        entry = {"kimg": round(nimg / 1000, 3), "step": step, "loss": round(mean_loss, 6),
                                 "images_per_s": round(ips, 1), "lr": lr_sched.get_last_lr()[0], "time": time.time(),
                                 "train_s": round(seconds, 2)}
                        if align_count:
                            entry["align_loss"] = round(align_sum.item() / align_count, 6)
                        with open(run.log_file, "a") as f:
                            f.write(json.dumps(entry) + "\n")
                    bar.advance(0, info=(f"{nimg / 1000:,.1f} kimg  " if budget_s else "") + f"{ips:,.0f} img/s  loss {mean_loss:.4f}")
                    loss_sum.zero_()
                    loss_count = 0
                    align_sum.zero_()
                    align_count = 0
                    tick_time, tick_nimg = now, nimg
                    next_log = next_point(nimg, first_log, g_cfg.log_every_kimg * 1000, batch)
                if g_cfg.grid_every_kimg and (nimg >= next_grid or done):  # 0: no grids
                    # before the snapshot, so the snapshot's run.json names the grid of its own step
                    if accelerator.is_main_process:
                        grid = f"{run.grids_dir.name}/grid-{nimg // 1000:06d}kimg.png"
                        with ema_weights(model, ema):
                            save_grid(model.eval(), schema, dict(train_sched.config), recipe, run.path / grid, autocast)
                    next_grid = next_point(nimg, g_cfg.grid_every_kimg * 1000, g_cfg.grid_every_kimg * 1000, batch)
                if snapshot_now:
                    if accelerator.is_main_process:
                        save_snapshot(run, model, ema, optimizer, lr_sched, train_sched, step, nimg, finished=done, grid=grid,
                                      processes=world, seconds=seconds, loss=(0.0, 0) if log_now else (summed, loss_count))
                    accelerator.wait_for_everyone()
                    last_good = (step, nimg)
                    next_snapshot = next_point(nimg, g_cfg.snapshot_every_kimg * 1000, g_cfg.snapshot_every_kimg * 1000, batch)
        accelerator.wait_for_everyone()
    # no accelerator.end_training(): it destroys the process group, which the caller (the benchmark) still uses
    return run
