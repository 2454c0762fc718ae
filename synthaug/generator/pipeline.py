"""A trained generator, loaded from its run folder, that draws images: :class:`Generator`.

Run folder (EMA weights, condition schema, recipe) -> ``Generator.sample`` -> uint8 images with labels.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthaug.errors import SynthaugError
from synthaug.device import default_device, inference_dtype, out_of_memory_advice
from synthaug.conditions import ConditionSchema
from synthaug.generator.sampling import check_steps, sample_images, steps_run
from synthaug.recipe import DEFAULT_STRENGTH, STRENGTH_RANGE, SamplingConfig, valid_strength
from synthaug.runs import Run, open_run
from synthaug.seeds import derive_seed

log = logging.getLogger(__name__)

# How long load() waits for a training that is swapping ema/ (two renames; it takes milliseconds).
LOAD_RETRIES, LOAD_RETRY_WAIT_S = 50, 0.1


def sampling_oom(sampling: SamplingConfig) -> str:
    """What to do when drawing runs out of GPU memory (see ``device.out_of_memory_advice``)."""
    smaller = max(1, sampling.network_batch // 2)
    return (f"running {sampling.network_batch} rows per network call; set sampling.network_batch to {smaller} "
            f"(--set sampling.network_batch={smaller}); images drawn with another network batch may differ in their "
            "last bits from these.")


@dataclass(frozen=True)
class Condition:
    """One thing to draw: a class, or a vector of attribute levels (null level = unspecified)."""

    key: str  # stable, dot-free name used in sample keys and seeds, e.g. "c380" or "a-bangs3-smiling5"
    value: tuple[int, ...]  # (class,) or the attribute levels
    label: int  # the class label in the real dataset's label space (-1 when undefined)
    class_name: str
    class_id: int
    attributes: dict[str, int] | None = None

    def sample_key(self, index: int) -> str:
        """The WebDataset key of image ``index`` of this condition (dot-free: webdataset splits names at dots)."""
        from synthaug.shards import sample_key

        return sample_key(self.key, index)


class Generator:
    """A trained generator, ready to sample.

    >>> gen = Generator.load("runs/digits")                       # doctest: +SKIP
    >>> images, labels = gen.sample(["3", "7"], n=16, seed=0)     # doctest: +SKIP
    >>> images.shape, images.dtype                                # doctest: +SKIP
    (torch.Size([16, 1, 8, 8]), torch.uint8)
    """

    def __init__(self, run: Run, denoiser: torch.nn.Module, schema: ConditionSchema, scheduler_config: dict,
                 device: torch.device, autocast_dtype: torch.dtype | None = None, sampling: SamplingConfig | None = None):
        self.run = run
        self.sampling = sampling or SamplingConfig()  # the run's recipe's [sampling] defaults
        self.denoiser = denoiser
        self.schema = schema
        self.scheduler_config = scheduler_config
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.weights_sha256 = ""  # set by load(): sha256 over the EMA weight files
        self.kimg = None  # set by load(): the images the EMA weights were trained on (thousands), as recorded with them

    def prompt(self, condition: Condition) -> str | None:
        """The text a text-conditioned generator draws ``condition`` from (None for the class/attribute U-Net)."""
        return self.denoiser.prompt(condition.value)

    def check_sampling(self, sampling: SamplingConfig) -> None:
        """Refuse, with one sentence, sampler settings this run cannot draw with (an unknown sampler, more
        steps than its noise schedule allows): call it before anything is written."""
        check_steps(sampling.sampler, sampling.steps, self.scheduler_config)

    @classmethod
    def load(cls, run: str | Path | Run, device: str | torch.device | None = None) -> Generator:
        """Load the EMA weights of a trained run folder (or an opened :class:`~synthaug.runs.Run`, whose recipe and
        condition schema are then not read again) onto ``device`` (default: a GPU if present).

        On a GPU that supports it, the network runs under bf16 autocast. A training that is writing the
        run replaces ``ema/`` by two renames (``ema`` -> ``ema.old``, new -> ``ema``); a load that meets
        the swap, or sees ``ema/`` change under it, waits a moment and reads it again, so the weights,
        their sha256 and the scheduler config always come from one complete ``ema/``. Weights of another step than
        run.json records are refused, unless a training of the run is going on (it writes run.json next); a note
        says when training is still going on.
        """
        path = run.path if isinstance(run, Run) else Path(run)
        for attempt in range(LOAD_RETRIES + 1):
            before = folder_identity(path / "ema")
            try:
                gen = cls._load_once(run, device)
                if folder_identity(path / "ema") == before:
                    if gen.run.training():
                        log.warning("%s is still being trained (a synthaug train holds %s); drawing from its latest "
                                    "snapshot, %s kimg.", path, gen.run.lock_file, gen.kimg)
                    return gen
            except (SynthaugError, OSError, ValueError):
                now = folder_identity(path / "ema")
                swapping = now != before or (now is None and (path / "ema.old").exists())
                if not swapping:
                    raise  # a real problem (missing, damaged), not a swap in progress
                if attempt == LOAD_RETRIES:
                    raise SynthaugError(
                        f"{path / 'ema'} is being replaced (a training of this run is writing it, or was killed while "
                        "it did); wait for the training to finish, or run synthaug train for this run again."
                    ) from None
            time.sleep(LOAD_RETRY_WAIT_S)
        raise SynthaugError(f"{path / 'ema'} kept changing while it was read; load it again once its training has finished.")

    @classmethod
    def _load_once(cls, run: str | Path | Run, device) -> Generator:
        run = open_run(run)
        weights_sha256 = run.weights_sha256()  # checks every weight file before it is used
        record = run.weights_record()  # the step of these weights, covered by the checksums just checked
        if not run.training():
            run.check_consistent(record)
        from synthaug.generator.backends import load_model

        device = default_device(device)
        recipe = run.recipe()
        schema = run.schema()
        denoiser = load_model(run.ema_dir, recipe.generator, schema, device).eval()
        scheduler_config = json.loads((run.ema_dir / "scheduler" / "scheduler_config.json").read_text())
        gen = cls(run, denoiser, schema, scheduler_config, device, inference_dtype(device), recipe.sampling)
        gen.weights_sha256 = weights_sha256
        gen.kimg = record.get("kimg", run.info().get("kimg"))
        return gen

    # -- conditions -------------------------------------------------------------------------
    def class_condition(self, index: int) -> Condition:
        s = self.schema
        return Condition(f"c{s.class_ids[index]}", (index,), index, s.class_names[index], s.class_ids[index])

    def resolve_classes(self, names: list[str | int]) -> list[Condition]:
        """Conditions for class names (groups such as NABirds species expand to their classes)."""
        if self.schema.kind != "class":
            raise SynthaugError("This run is attribute-conditional; ask for attributes ({attributes} bangs=3,smiling=5).",
                                arguments=("attributes",))
        out: list[Condition] = []
        for name in names:
            for c in self.schema.resolve(str(name)).classes:
                if all(o.value != (c,) for o in out):
                    out.append(self.class_condition(c))
        return out

    def all_classes(self) -> list[Condition]:
        if self.schema.kind != "class":
            raise SynthaugError("This run is attribute-conditional; {all_classes} needs a class-conditional run.",
                                arguments=("all_classes",))
        return [self.class_condition(c) for c in range(self.schema.num_classes)]

    def attribute_condition(self, text: str | dict[str, int]) -> Condition:
        """A condition from 'bangs=3,smiling=5' (or a dict); unnamed attributes stay unspecified."""
        if isinstance(text, dict):
            text = ",".join(f"{k}={v}" for k, v in text.items())
        s = self.schema
        levels = s.parse_attributes(text)
        named = {s.attribute_names[a]: lv for a, lv in enumerate(levels) if lv < s.attribute_levels[a]}
        key = "a-" + "-".join(f"{''.join(ch for ch in k.lower() if ch.isalnum())}{v}" for k, v in named.items())
        label = s.label_of_attributes(levels)
        name = s.class_names[label] if label >= 0 else ", ".join(f"{k}={v}" for k, v in named.items())
        return Condition(key, levels, label, name, s.class_ids[label] if label >= 0 else -1, named)

    # -- sampling ---------------------------------------------------------------------------
    def sample_conditions(self, conditions: list[Condition], seeds: list[int], sampling: SamplingConfig) -> np.ndarray:
        """uint8 (B, H, W, C) images, one per (condition, seed), drawn ``sampling.batch_size`` at a time."""
        out = []
        with out_of_memory_advice(sampling_oom(sampling)):
            for start in range(0, len(seeds), sampling.batch_size):
                chunk = conditions[start : start + sampling.batch_size]
                value = torch.tensor([c.value for c in chunk], dtype=torch.long)
                value = value[:, 0] if self.schema.kind == "class" else value
                out.append(sample_images(self.denoiser, value, self.schema.null(1), seeds[start : start + sampling.batch_size],
                                         self.scheduler_config, sampling, autocast_dtype=self.autocast_dtype))
        return np.concatenate(out) if out else np.zeros((0, self.schema.resolution, self.schema.resolution, self.schema.channels), np.uint8)

    def vary_conditions(self, sources: np.ndarray, conditions: list[Condition], strengths: list[float], seeds: list[int],
                        sampling: SamplingConfig) -> tuple[np.ndarray, list[int]]:
        """Real-guided variations: uint8 (B, H, W, C) images, each of its source (B, H, W, C uint8) redrawn toward its
        condition at its strength with its seed; and the sampler steps each ran. Images of one strength are drawn
        ``sampling.batch_size`` at a time; an image does not depend on which others share its batch."""
        out = np.zeros((len(seeds), self.schema.resolution, self.schema.resolution, self.schema.channels), np.uint8)
        with out_of_memory_advice(sampling_oom(sampling)):
            for strength in sorted(set(strengths)):
                rows = [i for i, v in enumerate(strengths) if v == strength]
                for start in range(0, len(rows), sampling.batch_size):
                    chunk = rows[start : start + sampling.batch_size]
                    value = torch.tensor([conditions[i].value for i in chunk], dtype=torch.long)
                    value = value[:, 0] if self.schema.kind == "class" else value
                    pixels = torch.from_numpy(np.ascontiguousarray(sources[chunk])).permute(0, 3, 1, 2).to(self.device)
                    with torch.inference_mode():
                        init = self.denoiser.encode(pixels)
                    out[chunk] = sample_images(self.denoiser, value, self.schema.null(1), [seeds[i] for i in chunk],
                                               self.scheduler_config, sampling, autocast_dtype=self.autocast_dtype,
                                               init=init, strength=strength)
        return out, [steps_run(sampling.steps, v) if v < 1 else sampling.steps for v in strengths]

    def vary(self, images, conditions: list[str | int | dict], strength: float = DEFAULT_STRENGTH, seed: int = 0,
             guidance: float | None = None, sampler: str | None = None, steps: int | None = None) -> torch.Tensor:
        """Real-guided variations (SDEdit) of ``images``, one per image, toward each image's condition.

        Args:
            images: uint8 (N, C, H, W) tensor or (N, H, W, C) array at the run's resolution.
            conditions: per image a class name or index, or an attribute dict / "bangs=3,smiling=5" string.
            strength: in (0, 1]: how far each image is noised (the share of the sampler's steps run); 1 is plain
                generation from the image's seed.
            seed: image i of a condition has the seed ``derive_seed(seed, condition key, i)``.

        Returns:
            uint8 images (N, C, H, W).

        >>> gen.vary(real_images, ["3"] * len(real_images), strength=0.4)   # doctest: +SKIP
        """
        if not valid_strength(strength):
            raise SynthaugError(f"strength must lie in {STRENGTH_RANGE}, not {strength}.")
        array = images.permute(0, 2, 3, 1).cpu().numpy() if torch.is_tensor(images) else np.asarray(images)
        size = (self.schema.resolution, self.schema.resolution, self.schema.channels)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != size:
            raise SynthaugError(f"vary() takes uint8 images of {size[0]}x{size[1]} px with {size[2]} channel(s), the run's "
                                f"resolution; got {array.dtype} {tuple(array.shape)}.")
        if len(conditions) != len(array):
            raise SynthaugError(f"vary() got {len(array)} images and {len(conditions)} conditions; give one condition per image.")
        conds = [self.attribute_condition(c) if isinstance(c, dict) or (isinstance(c, str) and "=" in c)
                 else self.resolve_classes([c])[0] for c in conditions]
        seen: dict[str, int] = {}
        seeds = []
        for c in conds:
            seeds.append(derive_seed(seed, c.key, seen.get(c.key, 0)))
            seen[c.key] = seen.get(c.key, 0) + 1
        sampling = self.sampling.replace(guidance=guidance, sampler=sampler, steps=steps, seed=seed)
        self.check_sampling(sampling)
        out, _ = self.vary_conditions(array, conds, [strength] * len(conds), seeds, sampling)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def sample(self, classes: list[str | int] | None = None, n: int = 16, seed: int = 0,
               guidance: float | None = None, sampler: str | None = None, steps: int | None = None,
               attributes: str | dict | None = None, network_batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` images spread evenly over ``classes`` (all classes when None) or one attribute condition.

        Reproducibility: an image's bytes depend on its seed, condition, sampler settings and ``network_batch``
        (the rows of every network call; a convolution's rounding depends on the batch shape). `synthaug generate`
        always uses the run's ``sampling.network_batch`` (256), so a set's bytes never depend on the batch size.
        A small request here runs on the next power of two of its rows instead (n=1: 2 rows with guidance, not
        256), which is as reproducible (the same call gives the same bytes) but may differ from the same seed's
        image in a shard in the last bits; pass ``network_batch=self.sampling.network_batch`` to match a shard.

        Returns:
            (uint8 images (n, C, H, W), int64 labels (n,) in the real dataset's label space).
            Image i of a condition has the seed ``derive_seed(seed, condition.key, i)``, the same
            seed `synthaug generate --seed` gives it.
        """
        if n <= 0:
            raise SynthaugError(f"n must be positive, not {n}.")
        if attributes is not None:
            conds = [self.attribute_condition(attributes)]
        elif classes is None:
            conds = self.all_classes()
        else:
            conds = self.resolve_classes(list(classes))
        specs = plan_conditions(conds, split_evenly(n, len(conds)), seed)
        sampling = self.sampling.replace(guidance=guidance, sampler=sampler, steps=steps, seed=seed)
        if network_batch is None:  # small requests: the next power of two of the rows in flight, not a full batch
            rows = min(n, sampling.batch_size) * (1 if sampling.guidance == 1.0 else 2)
            network_batch = min(sampling.network_batch, 1 << max(0, rows - 1).bit_length())
        sampling = sampling.replace(network_batch=network_batch)
        images = self.sample_conditions([s[0] for s in specs], [s[2] for s in specs], sampling)
        labels = torch.tensor([s[0].label for s in specs], dtype=torch.long)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels


def folder_identity(path: Path) -> tuple[int, int, int] | None:
    """Which folder is at ``path`` now (a swap puts a new folder there); None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` counts that differ by at most one (the first ones get the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def plan_conditions(conditions: list[Condition], counts: list[int], base_seed: int) -> list[tuple[Condition, int, int]]:
    """(condition, index, seed) for every image, round-robin over conditions so shards mix classes."""
    out = []
    for i in range(max(counts, default=0)):
        for cond, count in zip(conditions, counts):
            if i < count:
                out.append((cond, i, derive_seed(base_seed, cond.key, i)))
    return out
