"""Recipes: TOML files whose sections mirror frozen dataclasses.

Precedence: dataclass defaults < recipe file < ``--set section.key=value`` overrides. Unknown
sections or keys (with the closest known name), values of the wrong type and named values outside
their ``Literal`` set are errors that name the key, raised when the recipe is read. The defaults are
the embedded digits recipe (``recipes/digits.toml`` states them explicitly).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from synthaug.data.config import MAX_SEED, DataConfig, Level, Split, bounded, check_bounds, check_choice, check_choices
from synthaug.errors import SynthaugError

# The allowed values of every enumerated recipe key, declared once here; the modules that implement
# them (generator.model.PRESETS, generator.sampling.SAMPLER_CLASSES, ...) are tested to agree.
# unet: the class/attribute U-Net; text-unet: a pixel U-Net on a frozen text encoder's embeddings
# (Imagen-style); sd-lora: LoRA on a pretrained Stable Diffusion U-Net, in its VAE's latent space.
Backend = Literal["unet", "text-unet", "sd-lora"]
Preset = Literal["tiny", "small", "base"]
Prediction = Literal["epsilon", "v"]
Loss = Literal["mse", "l1"]
Schedule = Literal["cosine", "linear"]
NoiseSampling = Literal["uniform", "lognormal"]  # training noise levels: uniform timesteps, or EDM's log-normal sigma
LrSchedule = Literal["constant", "cosine"]  # constant or cosine decay, after the warm-up
ConditionKind = Literal["auto", "class", "attributes"]
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]  # auto: bf16 on a GPU that has it
Sampler = Literal["ddpm", "ddim", "dpm++2m", "unipc", "euler"]
Pretrained = Literal["none", "offline", "hub"]  # offline: registry-package ImageNet weights; hub: timm download
# finetune: every weight of the classifier trains; linear-probe: a frozen ImageNet backbone whose features are
# extracted once per image set, with only a linear head trained per seed (affordable on a CPU)
ClassifierProtocol = Literal["finetune", "linear-probe"]

BACKENDS = typing.get_args(Backend)
PRESETS = typing.get_args(Preset)
PREDICTIONS = typing.get_args(Prediction)
LOSSES = typing.get_args(Loss)
CONDITION_KINDS = typing.get_args(ConditionKind)
SAMPLERS = typing.get_args(Sampler)
PRETRAINED = typing.get_args(Pretrained)
PROTOCOLS = typing.get_args(ClassifierProtocol)
SPLITS = typing.get_args(Split)
LEVELS = typing.get_args(Level)

PROBE_NEEDS_WEIGHTS = ("benchmark.protocol linear-probe trains only a head on a frozen backbone, which needs ImageNet "
                       "weights; set benchmark.pretrained to offline or hub.")

# The sd-lora backend keeps its base model's noise schedule, so these keys do not apply to it.
BASE_MODEL_SCHEDULE_KEYS = ("prediction", "schedule", "num_timesteps")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SynthaugError(message)


@dataclass(frozen=True)
class GeneratorConfig:
    """The ``[generator]`` section: model size, objective and training schedule.

    Progress is counted in images seen: ``duration_kimg`` thousand images in all, batches of
    ``batch_size`` images per optimizer step (split over devices, with gradient accumulation when
    ``batch_per_device`` is smaller than a device's share).
    """

    backend: Backend = "unet"
    base_model: str = ""  # sd-lora: a local Stable Diffusion folder (diffusers layout) or a hub id
    text_encoder: str = ""  # text-unet: a local T5 or CLIP text encoder folder (with its tokenizer)
    prompt_template: str = "a photo of a {class}"  # text backends: the prompt of a class
    lora_rank: int = bounded(4, 1, 1024)  # sd-lora: rank of the LoRA on the U-Net's attention projections
    preset: Preset = "tiny"
    base_channels: int = bounded(0, 0, 4096)  # 0: the preset's
    channel_mult: tuple[int, ...] = bounded((), 1, 64)  # (): the preset's
    layers_per_block: int = bounded(0, 0, 16)  # 0: the preset's
    dropout: float = bounded(0.0, 0, 0.99)
    condition: ConditionKind = "auto"
    cond_drop_prob: float = bounded(0.1, 0, 0.99)  # probability of the null condition, for classifier-free guidance
    prediction: Prediction = "v"  # sd-lora: its base model's
    loss: Loss = "mse"
    min_snr_gamma: float = bounded(0.0, 0, 1000)  # > 0: Min-SNR-gamma weighting (e.g. 5); 0: none (with v and lognormal: EDM's weighting)
    schedule: Schedule = "cosine"  # the noise schedule; sd-lora: its base model's
    num_timesteps: int = bounded(1000, 2, 100_000)  # sd-lora: its base model's
    noise_sampling: NoiseSampling = "lognormal"  # EDM's ln(sigma) ~ N(lognormal_mean, lognormal_std); or uniform timesteps
    lognormal_mean: float = bounded(-1.2, -10, 10)
    lognormal_std: float = bounded(1.2, 0, 10)
    duration_kimg: float = bounded(100.0, 0, 1e7)
    # > 0: train for this many minutes of wall-clock time (the training loop's, summed over resumptions), stopping
    # at duration_kimg at the latest; the learning-rate schedule still runs over duration_kimg
    duration_minutes: float = bounded(0.0, 0, 1e6)
    batch_size: int = bounded(256, 1, 65536)
    batch_per_device: int = bounded(0, 0, 65536)  # 0: batch_size / number of devices (no accumulation)
    lr: float = bounded(2e-3, 0, 10)
    lr_schedule: LrSchedule = "cosine"
    warmup_kimg: float = bounded(5.0, 0, 1e7)
    weight_decay: float = bounded(0.0, 0, 10)
    grad_clip: float = bounded(1.0, 0, 1e6)
    ema_decay: float = 0.999  # the ceiling of the EMA decay, reached after the warm-up ramp
    ema_power: float = bounded(0.75, 0, 10)  # EMA warm-up: decay = 1 - (1 + step) ** -ema_power until the ceiling
    ema_std: float = 0.0  # > 0: EDM2's power-function EMA of this relative width instead (ema_decay, ema_power unused)
    flip: bool = False  # random horizontal flips (the samples are flipped too)
    # representation alignment (REPA), a pretrained prior: a timm ImageNet encoder's name (offline weights for
    # tf_efficientnet_lite0, mobilenetv2_100) whose features of the clean training images the U-Net's bottleneck,
    # through a small projector, is pulled toward; "" (the default): no alignment, a generator from scratch
    align_encoder: str = ""
    align_pretrained: Pretrained = "offline"  # where the encoder's ImageNet weights come from (offline or hub)
    align_weight: float = bounded(0.5, 0, 100)  # the alignment loss's weight beside the diffusion loss (REPA: 0.5)
    align_resolution: int = bounded(128, 32, 1024)  # the encoder's input size in pixels (training images upsampled)
    align_grid: int = bounded(4, 1, 64)  # tokens per side that are aligned (at most the U-Net bottleneck's side)
    augment: float = 0.0  # unet: EDM's non-leaky augmentation, each transform with this probability (samples unaffected)
    mixed_precision: MixedPrecision = "auto"
    compile: bool = False  # torch.compile the U-Net
    seed: int = bounded(0, 0, MAX_SEED)
    log_every_kimg: float = bounded(5.0, 0, 1e7)
    snapshot_every_kimg: float = bounded(50.0, 0, 1e7)
    grid_every_kimg: float = bounded(50.0, 0, 1e7)

    def __post_init__(self):
        check_choices(self, "generator")
        _check(self.duration_kimg > 0, "generator.duration_kimg must be positive.")
        _check(self.duration_minutes >= 0, "generator.duration_minutes must be 0 (train for duration_kimg) or a positive "
               "number of minutes.")
        _check(self.batch_size > 0, "generator.batch_size must be positive.")
        _check(self.batch_per_device >= 0, "generator.batch_per_device must be 0 (auto) or positive.")
        _check(self.lr > 0, "generator.lr must be positive.")
        _check(0 <= self.cond_drop_prob < 1, "generator.cond_drop_prob must lie in [0, 1).")
        _check(self.num_timesteps >= 2, "generator.num_timesteps must be at least 2.")
        _check(0 < self.ema_decay < 1, "generator.ema_decay must lie between 0 and 1.")
        _check(0 <= self.ema_std <= 0.28, "generator.ema_std must be 0 (off) or a relative width up to 0.28, e.g. 0.05-0.1.")
        _check(0 <= self.augment <= 1, "generator.augment must be a probability between 0 and 1.")
        _check(self.augment == 0 or self.backend == "unet",
               f"generator.augment works with the unet backend only; set it to 0 for {self.backend}.")
        _check(self.lognormal_std > 0, "generator.lognormal_std must be positive.")
        if self.align_encoder:
            _check(self.backend == "unet", f"generator.align_encoder works with the unet backend only; remove it for "
                   f"{self.backend}.")
            _check(self.augment == 0, "generator.align_encoder aligns with features of the clean training images, which "
                   "generator.augment transforms; set generator.augment to 0 or remove align_encoder.")
            _check(self.align_weight > 0, "generator.align_weight must be positive when generator.align_encoder is set "
                   "(remove align_encoder for no alignment).")
            _check(self.align_pretrained != "none", "generator.align_pretrained must be offline or hub: an encoder "
                   "without ImageNet weights brings no prior.")
            import timm

            close = difflib.get_close_matches(self.align_encoder, timm.list_models(), n=3, cutoff=0.6)
            _check(timm.is_model(self.align_encoder), f"generator.align_encoder: timm has no model named "
                   f"{self.align_encoder!r}; " + (f"did you mean {', '.join(close)}?" if close else
                                                  "use tf_efficientnet_lite0 or mobilenetv2_100 (offline weights)."))
            _check(self.align_resolution % 32 == 0, f"generator.align_resolution must be a multiple of 32 (the "
                   f"encoder's stride), such as 128, not {self.align_resolution}.")
        for key in ("log_every_kimg", "snapshot_every_kimg", "grid_every_kimg", "warmup_kimg", "grad_clip", "weight_decay", "dropout"):
            _check(getattr(self, key) >= 0, f"generator.{key} must not be negative.")
        _check(all(m > 0 for m in self.channel_mult), "generator.channel_mult entries must be positive.")
        _check(self.base_channels >= 0, "generator.base_channels must not be negative.")
        _check(self.layers_per_block >= 0, "generator.layers_per_block must not be negative.")
        _check(self.backend != "sd-lora" or bool(self.base_model),
               "The sd-lora backend needs generator.base_model, a local Stable Diffusion folder or a hub id.")
        if self.backend == "sd-lora":  # a default value passes: resolved recipe.toml files state every key
            for key in BASE_MODEL_SCHEDULE_KEYS:
                _check(getattr(self, key) == GeneratorConfig.__dataclass_fields__[key].default,
                       f"generator.{key} is not used by the sd-lora backend, which keeps its base model's noise "
                       "schedule; remove it.")
        _check(self.backend != "text-unet" or bool(self.text_encoder),
               "The text-unet backend needs generator.text_encoder, a local T5 or CLIP text encoder folder.")
        _check(self.lora_rank > 0, "generator.lora_rank must be positive.")
        try:
            self.prompt_template.format(**{"class": "x"})
        except (KeyError, IndexError, ValueError):
            raise SynthaugError(f"generator.prompt_template {self.prompt_template!r} may only contain the placeholder "
                                "{class}, e.g. \"a photo of a {class}, a bird\".") from None
        check_bounds(self, "generator")


# Real-guided variations (SDEdit): a real image is noised to this share of the noise schedule, then denoised toward its
# condition; 1 is plain sampling from the image's seed, and 0 would return the image itself.
DEFAULT_STRENGTH = 0.5
STRENGTH_RANGE = "(0, 1]"


def valid_strength(value: float) -> bool:
    """Whether ``value`` is a variation strength: in (0, 1]."""
    return 0 < value <= 1


@dataclass(frozen=True)
class SamplingConfig:
    """The ``[sampling]`` section: how `synthaug generate` draws images.

    Every image has its own seed derived from (seed, condition, index); the network always runs on
    ``network_batch`` rows (padded), so an image's bytes do not depend on ``batch_size`` or on how
    many processes share the work.
    """

    sampler: Sampler = "dpm++2m"
    steps: int = bounded(20, 1, 10_000)
    guidance: float = bounded(2.0, 0, 100)  # classifier-free guidance scale: 1 = conditional only, 0 = unconditional
    seed: int = bounded(0, 0, MAX_SEED)
    batch_size: int = bounded(256, 1, 65536)  # images in flight per process
    network_batch: int = bounded(256, 1, 65536)  # rows per network call (part of the reproducibility contract)
    images_per_shard: int = bounded(1000, 1, 10**6)

    def __post_init__(self):
        check_choices(self, "sampling")
        _check(self.steps > 0, "sampling.steps must be positive.")
        _check(self.guidance >= 0 and math.isfinite(self.guidance),
               "sampling.guidance: the guidance scale must be 0 or more (1 means no guidance).")
        _check(self.batch_size > 0, "sampling.batch_size must be positive.")
        _check(self.network_batch > 0, "sampling.network_batch must be positive.")
        _check(self.images_per_shard > 0, "sampling.images_per_shard must be positive.")
        _check(self.seed >= 0, "sampling.seed must not be negative.")
        check_bounds(self, "sampling")

    def replace(self, **chosen) -> SamplingConfig:
        """These settings with every given (not None) value replaced: how command options and library
        arguments override a run's recipe."""
        return dataclasses.replace(self, **{k: v for k, v in chosen.items() if v is not None})


@dataclass(frozen=True)
class BenchmarkConfig:
    """The ``[benchmark]`` section: which classifiers, arms, seeds and low-data settings to measure.

    Every classifier gets the same budget (``steps`` batches of ``batch_size``), whatever its arm.
    """

    classifier: str = "test_resnet"  # a timm model name
    pretrained: Pretrained = "none"
    protocol: ClassifierProtocol = "finetune"  # linear-probe: frozen backbone (needs pretrained weights) + linear head
    probe_views: int = bounded(4, 1, 64)  # linear-probe with classic augmentation: augmented views per image whose features are cached
    probe_views_per_seed: bool = True  # each seed draws its own augmented views (a source of noise the intervals then cover)
    synthetic_draws_per_seed: bool = True  # each seed trains on its own draw of every synthetic set (generation x seeds)
    classifier_resolution: int = bounded(16, 1, 4096)
    steps: int = bounded(120, 1, 10**7)
    batch_size: int = bounded(64, 1, 65536)
    lr: float = bounded(2e-3, 0, 10)
    weight_decay: float = bounded(0.05, 0, 10)
    seeds: int = bounded(8, 2, 1000)
    shots_per_class: tuple[int, ...] = bounded((10,), 0, 10**6)  # 0 = every training image
    synthetic_ratios: tuple[float, ...] = bounded((0.5, 1.0), 0, 100)  # synthetic images per real image
    mix_probability: float = 0.0  # > 0 adds an arm drawing each batch image from synthetic with this probability
    augment_flip: bool = False  # horizontal flips in the classic augmentation (not for digits)
    # Choices made on the validation split (data.val_fraction), never on the test split:
    guidance_sweep: tuple[float, ...] = bounded((1.5, 3.0), 0, 100)  # guidance scales tried
    strengths: tuple[float, ...] = (0.4, 0.7)  # real-guided variation strengths tried (empty: no variation arms)
    min_confidences: tuple[float, ...] = (0.9,)  # confidence-filter thresholds tried (empty: no filtered arm)
    max_draws: int = bounded(8, 1, 1000)  # a filtered image draws at most this many candidates
    sweep_ratio: float = bounded(0.5, 0, 100)  # synthetic images per real image in the arms that compare the candidates
    real_multiples: tuple[int, ...] = bounded((2, 4), 2, 100)  # "worth N real images": real-only arms with this many times the shots
    workers: int = bounded(0, 0, 1024)  # single-threaded CPU processes that train classifiers side by side (0: one per core; 1 on a GPU)
    judge_steps: int = bounded(300, 1, 10**7)  # the conditioning-accuracy classifier, trained on every real training image
    low_shot_duration_kimg: float = bounded(30.0, 0, 1e7)  # generator training for shots_per_class > 0 (0: the recipe's)
    fid_max_images: int = bounded(100, 2, 10**7)  # at most this many images per side of an FID/KID
    kid_subset_size: int = bounded(1000, 2, 10**7)  # clamped to the smaller set
    fid_weights: str = ""  # "": offline package or cache; a path; or "download" (torch-fidelity, needs internet)

    def __post_init__(self):
        check_choices(self, "benchmark")
        _check(self.seeds >= 2, "benchmark.seeds must be at least 2 (intervals and paired tests need them).")
        for key in ("steps", "batch_size", "judge_steps"):
            _check(getattr(self, key) > 0, f"benchmark.{key} must be positive.")
        _check(self.classifier_resolution > 0, "benchmark.classifier_resolution must be positive.")
        _check(self.protocol != "linear-probe" or self.pretrained != "none", PROBE_NEEDS_WEIGHTS)
        _check(self.probe_views >= 1, "benchmark.probe_views must be at least 1.")
        _check(len(self.shots_per_class) > 0 and all(k >= 0 for k in self.shots_per_class),
               "benchmark.shots_per_class must list 0 (all) or positive counts.")
        _check(all(r > 0 for r in self.synthetic_ratios), "benchmark.synthetic_ratios must be positive.")
        _check(0 <= self.mix_probability < 1, "benchmark.mix_probability must lie in [0, 1).")
        _check(all(g >= 0 for g in self.guidance_sweep), "benchmark.guidance_sweep: the guidance scales must be 0 or more.")
        _check(self.sweep_ratio > 0, "benchmark.sweep_ratio must be positive.")
        for key in ("fid_max_images", "kid_subset_size"):
            _check(getattr(self, key) > 1, f"benchmark.{key} must be at least 2.")
        _check(self.low_shot_duration_kimg >= 0, "benchmark.low_shot_duration_kimg must not be negative.")
        _check(all(map(valid_strength, self.strengths)), f"benchmark.strengths must lie in {STRENGTH_RANGE}; e.g. [0.3, 0.5, 0.7].")
        _check(all(0 < v < 1 for v in self.min_confidences), "benchmark.min_confidences must lie in (0, 1); e.g. [0.5, 0.9].")
        _check(self.max_draws >= 1, "benchmark.max_draws must be at least 1.")
        _check(self.workers >= 0, "benchmark.workers must be 0 (one per CPU core) or positive.")
        _check(all(m > 1 for m in self.real_multiples), "benchmark.real_multiples must be whole numbers above 1; e.g. [2, 4].")
        check_bounds(self, "benchmark")


def runs_root() -> Path:
    """Where runs live by default: $SYNTHAUG_RUNS, else ./runs (the one rule train, generate and benchmark follow)."""
    return Path(os.environ.get("SYNTHAUG_RUNS") or "runs")


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: which data, which generator, how to sample."""

    name: str = "digits"
    run_dir: str = ""  # default: <runs_root()>/<name> ($SYNTHAUG_RUNS, else ./runs)
    data: DataConfig = field(default_factory=lambda: DataConfig(spec="digits", resolution=8, val_fraction=0.1))
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def __post_init__(self):
        _check(bool(self.name) and all(c.isalnum() or c in "-_" for c in self.name),
               f"Recipe name {self.name!r} must be letters, digits, '-' or '_'.")

    @property
    def run_path(self) -> Path:
        """``run_dir``, else ``<runs_root()>/<name>``: where train writes the run and generate looks for it."""
        path = Path(self.run_dir) if self.run_dir else runs_root() / self.name
        try:
            return path.expanduser()  # run_dir = "~/runs/x": in the home folder, not in a folder named ~
        except RuntimeError:  # no home folder to be found: the path as written
            return path


SECTIONS = {"data": DataConfig, "generator": GeneratorConfig, "sampling": SamplingConfig, "benchmark": BenchmarkConfig}
# Where a recipe's default differs from the library's: a recipe holds out 10% of each class's training images
# as a validation split (the benchmark chooses guidance, strength and filter threshold there), while
# load_dataset() keeps the dataset's own splits unless asked.
RECIPE_DEFAULTS = {"data": {"val_fraction": 0.1}}


def _coerce(value, hint, key: str):
    """``value`` as type ``hint``, or an error naming ``key``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return check_choice(value, hint, key)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise SynthaugError(f"{key} must be a list, not {value!r}.")
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise SynthaugError(f"{key} must be true or false, not {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SynthaugError(f"{key} must be a whole number, not {value!r}.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SynthaugError(f"{key} must be a number, not {value!r}.")
        try:
            number = float(value)
        except OverflowError:  # a whole number too large for a float
            number = math.inf
        if not math.isfinite(number):
            raise SynthaugError(f"{key} must be a finite number, not {value!r}.")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise SynthaugError(f"{key} must be a string, not {value!r}.")
        return value
    raise TypeError(f"unsupported recipe type {hint}")


def _unknown_key(key: str, prefix: str, names: set[str]) -> SynthaugError:
    """The error for an unknown key: the closest known name in its section (a typo), else the same key
    in another section (a key in the wrong place), else the list of known keys."""
    section = prefix.rstrip(".")
    close = difflib.get_close_matches(key, sorted(names), n=1)
    elsewhere = [f"{name}.{key}" for name, cls in SECTIONS.items()
                 if name != section and key in {f.name for f in dataclasses.fields(cls)}]
    if close or elsewhere:
        return SynthaugError(f"Unknown recipe key {prefix + key!r}; did you mean {(prefix + close[0]) if close else elsewhere[0]!r}?")
    if section:
        return SynthaugError(f"Unknown recipe key {prefix + key!r}; the [{section}] keys are: {', '.join(sorted(names))}.")
    return SynthaugError(f"Unknown recipe key {key!r}; the top level holds {', '.join(sorted(names - set(SECTIONS)))} "
                         f"and the sections {', '.join(f'[{name}]' for name in SECTIONS)}.")


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown_key(key, prefix, names)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def recipe_from_dict(data: dict) -> Recipe:
    """Build a :class:`Recipe` from parsed TOML, checking every key and type."""
    top = {k: v for k, v in data.items() if k not in SECTIONS}
    sections = {}
    for name, cls in SECTIONS.items():
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise SynthaugError(f"Recipe key {name!r} must be a [{name}] section.")
        sections[name] = _build(cls, {**RECIPE_DEFAULTS.get(name, {}), **values}, f"{name}.")
    return dataclasses.replace(_build(Recipe, top, ""), **sections)


def recipe_to_dict(recipe: Recipe) -> dict:
    out = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in SECTIONS}
    for name in SECTIONS:
        out[name] = dataclasses.asdict(getattr(recipe, name))
    return out


def toml_value(value) -> str:
    """A Python value (bool, number, string, list) as a TOML literal that tomllib reads back as the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's; TOML also forbids a raw DEL, which JSON leaves as it is
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def recipe_to_toml(recipe: Recipe) -> str:
    """The fully resolved recipe as TOML that :func:`load_recipe` reads back to the same recipe."""
    data = recipe_to_dict(recipe)
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if k not in SECTIONS]
    for name in SECTIONS:
        lines += ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in data[name].items()]
    return "\n".join(lines) + "\n"


def parse_override(text: str) -> tuple[list[str], object]:
    """'generator.lr=2e-4' -> (['generator', 'lr'], 2e-4); a value that is not TOML is a string."""
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise SynthaugError(f"--set {text!r} is not KEY=VALUE; write e.g. --set generator.lr=2e-4.")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return [p.strip() for p in key.strip().split(".")], value


def _is_text_key(keys: list[str]) -> bool:
    """Whether a dotted recipe key holds text (a string or one of named values)."""
    cls = Recipe
    if len(keys) == 2 and keys[0] in SECTIONS:
        cls, keys = SECTIONS[keys[0]], keys[1:]
    hint = typing.get_type_hints(cls).get(keys[0]) if len(keys) == 1 else None
    return hint is str or typing.get_origin(hint) is Literal


def recipe_files() -> list[Path]:
    """The recipes a name can refer to: ./recipes/*.toml first, then the source checkout's recipes/."""
    folders = [Path.cwd() / "recipes", Path(__file__).resolve().parents[1] / "recipes"]
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    return list(found.values())


def find_recipe(name: str) -> Path:
    """A recipe path, or a name looked up in ./recipes/ and in the source checkout's recipes/."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    by_name = {p.stem: p for p in recipe_files()}
    if path.is_dir() and name not in by_name:
        if (path / "recipe.toml").is_file():  # a run folder
            raise SynthaugError(f"{path} is a folder, not a recipe file; to continue the run in it, use "
                                f"`synthaug train {path / 'recipe.toml'} --out {path}`.")
        raise SynthaugError(f"{path} is a folder, not a recipe file; give a .toml path or a recipe name such as digits.")
    if path.suffix == ".toml":
        raise SynthaugError(f"Recipe file {path} does not exist; give a .toml path or a recipe name such as digits.")
    if name in by_name:
        return by_name[name]
    raise SynthaugError(f"No recipe named {name!r}; give a .toml path or one of: {', '.join(sorted(by_name)) or 'digits'}.")


def load_recipe(source: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Recipe:
    """Read a recipe (a path, a name, or None for the embedded digits defaults) and apply overrides.

    >>> load_recipe(None, ["generator.lr=1e-4"]).generator.lr
    0.0001
    """
    data: dict = {}
    if source is not None:
        path = find_recipe(str(source))
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SynthaugError(f"{path} is not valid TOML ({e}); fix the file.") from None
    for text in overrides:
        keys, value = parse_override(text)
        if _is_text_key(keys) and not isinstance(value, str):
            value = text.partition("=")[2].strip()  # e.g. --set data.target=inf means the text "inf"
        target = data
        for k in keys[:-1]:
            target = target.setdefault(k, {})
            if not isinstance(target, dict):
                raise SynthaugError(f"--set {text!r}: {k!r} is not a section.")
        target[keys[-1]] = value
    return recipe_from_dict(data)
