"""timm classifiers trained on uint8 images held in memory (real, augmented, or mixed with synthetic),
and their scores on a real test split.

Targets are (N, A) integer arrays with ``levels[a]`` values for head a: a class label is one head,
CelebA-Dialog attributes are five heads of six levels (the face study's attribute estimator).
Every run is seeded; the same seed draws the same batches and augmentations.

Two protocols: ``finetune`` trains every weight; ``linear-probe`` trains only a linear head on a frozen ImageNet
backbone (:class:`LinearProbe`), whose features are extracted once per image set and cached in memory and under
``cache_root()/probe-features``, so every seed, arm and worker process reuses them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthaug import progress
from synthaug.errors import SynthaugError
from synthaug.seeds import derive_seed

log = logging.getLogger(__name__)

PROTOCOLS = ("finetune", "linear-probe")  # recipe.ClassifierProtocol declares the same


@dataclass(frozen=True)
class ClassifierConfig:
    """How one classifier is trained: the classifier keys of a recipe's ``[benchmark]`` section
    (:meth:`from_benchmark`), plus two fixed training details. Every arm of a benchmark gets the same budget."""

    model: str  # a timm model name
    pretrained: str  # none, offline (ImageNet weights from registry packages) or hub
    resolution: int  # input side; images are resized once with antialiasing
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int = 20
    label_smoothing: float = 0.1
    protocol: str = "finetune"  # or linear-probe: a frozen backbone's cached features and a linear head
    probe_views: int = 4  # linear-probe with classic augmentation: augmented views cached per image

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise SynthaugError(f"The classifier protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}.")
        if self.protocol == "linear-probe" and self.pretrained == "none":
            raise SynthaugError("benchmark.protocol linear-probe trains only a head on a frozen backbone, which needs "
                                "ImageNet weights; set benchmark.pretrained to offline or hub.")
        if self.probe_views < 1:
            raise SynthaugError("benchmark.probe_views must be at least 1.")

    def describe(self) -> str:
        """The protocol in words, for reports."""
        if self.protocol == "linear-probe":
            return (f"{self.model}, frozen ImageNet backbone ({self.pretrained} weights) + linear probe (features cached; "
                    f"{self.probe_views} augmented views per image for classic augmentation)")
        if self.pretrained == "none":
            return f"{self.model}, trained from scratch"
        return f"{self.model}, fine-tuned from ImageNet weights ({self.pretrained})"

    @classmethod
    def from_benchmark(cls, b=None, **changes) -> ClassifierConfig:
        """The classifier of a ``[benchmark]`` section (default: the embedded digits recipe's), with ``changes``.

        >>> ClassifierConfig.from_benchmark(steps=10).model
        'test_resnet'
        """
        from synthaug.recipe import BenchmarkConfig

        b = b or BenchmarkConfig()
        config = cls(model=b.classifier, pretrained=b.pretrained, resolution=b.classifier_resolution, steps=b.steps,
                     batch_size=b.batch_size, lr=b.lr, weight_decay=b.weight_decay, protocol=b.protocol,
                     probe_views=b.probe_views)
        return dataclasses.replace(config, **changes)


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """A uint8 piece of images as a CPU tensor; a read-only piece of a memory map is copied first (torch wants
    writable memory)."""
    pixels = np.ascontiguousarray(pixels)
    return torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())


def resize_batch(pixels: np.ndarray, resolution: int, device: torch.device) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, R, R) uint8 on ``device``, resized with antialiasing (bilinear)."""
    x = as_tensor(pixels).permute(0, 3, 1, 2)
    if x.shape[-1] != resolution:
        x = F.interpolate(x.float(), size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x.contiguous().to(device)


def chunks_of(images, size: int = 1024):
    """Consecutive pieces of (N, H, W, C) images: an array, or a dataset's row view read piece by piece."""
    if hasattr(images, "iter_chunks"):
        yield from images.iter_chunks(size)
    else:
        for start in range(0, len(images), size):
            yield images[start : start + size]


def to_device_images(images, resolution: int, device: torch.device) -> torch.Tensor:
    """(N, H, W, C) uint8 (an array or a dataset's row view) -> (N, C, R, R) uint8 on ``device``, resized once."""
    out = torch.empty((len(images), images.shape[3], resolution, resolution), dtype=torch.uint8, device=device)
    start = 0
    for chunk in chunks_of(images):  # filled in place: the set is in memory once, never twice
        out[start : start + len(chunk)] = resize_batch(chunk, resolution, device)
        start += len(chunk)
    return out


def resident_bytes() -> int:
    """Classifier inputs up to this size are held whole on the device ($SYNTHAUG_RESIDENT_BYTES, default 256 MiB:
    a CUB-sized set at 64 px, 72 MB, is well inside); larger ones are read from their memory-mapped source a batch
    at a time, so memory stays flat as datasets grow (benchmarks/bench_memory.py)."""
    import os

    return int(float(os.environ.get("SYNTHAUG_RESIDENT_BYTES", 1 << 28)))


RELEASE_BYTES = 16 << 20  # a streamed set's memory-mapped pages are dropped from RSS after this much is read


class Images:
    """Classifier inputs: uint8 images (N, C, R, R) at the classifier's resolution and integer targets (N, A),
    on one device; or several such parts pooled (real + synthetic), addressed as one.

    A set that fits in :func:`resident_bytes` is held whole on the device (``x``): the fast path, one
    indexing per batch. A larger one keeps its source, the dataset's memory-mapped (N, H, W, C) row view,
    and reads each batch from it (``gather``), resized as it comes, so memory does not grow with the data.
    """

    def __init__(self, x: torch.Tensor | None, y: torch.Tensor, source=None, resolution: int = 0, parts: list | None = None,
                 origin: tuple[Images, torch.Tensor] | None = None):
        self.x, self.y, self.source, self.resolution, self.parts = x, y, source, resolution, parts
        # (the set, its rows) this one was taken from: a linear probe takes its features from the larger set's
        self.origin = origin
        self.read_bytes = 0  # read from ``source`` since its pages were last released (see gather)
        self.digest: str | None = None  # sha256 of the pixels, computed once (see image_digest)

    @classmethod
    def of(cls, images, targets, resolution: int, device: torch.device) -> Images:
        """From (N, H, W, C) uint8 images (an array or a row view) and (N, A) targets."""
        y = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=device)
        if len(images) * images.shape[3] * resolution * resolution <= resident_bytes():
            return cls(to_device_images(images, resolution, device), y)
        return cls(None, y, images, resolution)

    @classmethod
    def concat(cls, parts: list[Images]) -> Images:
        """Several sets addressed as one (rows of the first, then of the second, ...). The parts are kept, so a linear
        probe reuses each part's features."""
        if all(p.x is not None for p in parts):
            return cls(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), parts=list(parts))
        return cls(None, torch.cat([p.y for p in parts]), parts=list(parts))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def channels(self) -> int:
        if self.x is not None:
            return int(self.x.shape[1])
        return self.parts[0].channels if self.parts else int(self.source.shape[3])

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The images of ``rows`` (a 1-d index tensor), (B, C, R, R) uint8 on the device, in the order asked."""
        if self.x is not None:
            return self.x[rows.to(self.x.device)]
        if self.parts is None:
            if not hasattr(self.source, "gather"):
                return resize_batch(np.asarray(self.source)[rows.cpu().numpy()], self.resolution, self.device)
            pixels = self.source.gather(rows.cpu().numpy())
            # scattered rows fault in (and read ahead) pages all over the map, which would stay in this process's
            # RSS: drop them once every RELEASE_BYTES read (they stay in the OS page cache); training and
            # prediction both read through here, pooled sets through each part's own gather
            self.read_bytes += pixels.nbytes
            if self.read_bytes >= RELEASE_BYTES:
                self.source.release()
                self.read_bytes = 0
            return resize_batch(pixels, self.resolution, self.device)
        out, start = None, 0
        for part in self.parts:
            mine = (rows >= start) & (rows < start + len(part))
            if mine.any():
                pixels = part.gather(rows[mine] - start)
                out = pixels.new_empty((len(rows), *pixels.shape[1:])) if out is None else out
                out[mine.to(pixels.device)] = pixels
            start += len(part)
        return out

    def take(self, rows) -> Images:
        """A subset (an index array or tensor): an indexed copy when resident, a narrower view when streamed."""
        rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        origin = (self, rows)
        if self.x is not None:
            rows = rows.to(self.x.device)
            return Images(self.x[rows], self.y[rows], origin=origin)
        if self.parts is None and hasattr(self.source, "select"):
            return Images(None, self.y[rows.to(self.device)], self.source.select(rows.numpy()), self.resolution, origin=origin)
        return Images(self.gather(rows), self.y[rows.to(self.device)], origin=origin)

    def chunks(self, size: int):
        """Consecutive (B, C, R, R) pieces, in order (what prediction reads)."""
        for start in range(0, len(self), size):
            if self.x is not None:
                yield self.x[start : start + size]
            else:
                yield self.gather(torch.arange(start, min(start + size, len(self))))


def augment(x: torch.Tensor, g: torch.Generator, flip: bool) -> torch.Tensor:
    """Classic augmentation, drawn per image: random resized crop (area 0.6-1, aspect 3/4-4/3),
    optional horizontal flip, and brightness / contrast / saturation jitter of +-20%. ``x`` in [0, 1].

    What torchvision's v2 ``RandomResizedCrop``, ``RandomHorizontalFlip`` and ``ColorJitter`` do, but for a
    whole batch at once on its device (one ``grid_sample``), drawn from the run's own generator so a seed
    gives the same augmentations on any machine; torchvision's per-image transforms draw from the global
    RNG, one image at a time."""
    b, c = x.shape[:2]
    dev = x.device

    def uniform(lo, hi, shape=(b,)):
        return lo + (hi - lo) * torch.rand(shape, generator=g, device=dev)

    area, log_ratio = uniform(0.6, 1.0), uniform(math.log(3 / 4), math.log(4 / 3))
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    tx, ty = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
    sign = torch.where(torch.rand(b, generator=g, device=dev) < 0.5, -1.0, 1.0) if flip else torch.ones(b, device=dev)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * sign, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    x = x * uniform(0.8, 1.2).view(b, 1, 1, 1)  # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * uniform(0.8, 1.2).view(b, 1, 1, 1)  # contrast
    if c == 3:
        gray = x.mean(dim=1, keepdim=True)
        x = gray + (x - gray) * uniform(0.8, 1.2).view(b, 1, 1, 1)  # saturation
    return x.clamp(0, 1)


def optimization_step(loss: torch.Tensor, optimizer, schedule) -> None:
    """One step of a classifier's (or a probe head's) AdamW and learning-rate schedule on ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()


def check_finite(loss: torch.Tensor) -> None:
    """A training that ended on a non-finite loss is an error the user can fix."""
    if not math.isfinite(loss.item()):
        raise SynthaugError(f"The classifier's loss became {loss.item()}; lower benchmark.lr.")


def head_loss(logits: torch.Tensor, targets: torch.Tensor, levels: list[int], smoothing: float) -> torch.Tensor:
    """Mean cross-entropy over the heads; the logits of head a are a contiguous block of levels[a]."""
    losses, start = [], 0
    for a, n in enumerate(levels):
        losses.append(F.cross_entropy(logits[:, start : start + n], targets[:, a], label_smoothing=smoothing))
        start += n
    return torch.stack(losses).mean()


# -- the linear-probe protocol: a frozen backbone's features, extracted once per image set --------------------

PROBE_CHUNK = 256  # images per backbone call; augmented views are drawn per chunk, so it is part of the cache key
FEATURE_MEMO_BYTES = 1 << 30  # features kept in this process (least recently used dropped first); the rest on disk


class LinearProbe(nn.Module):
    """A frozen timm backbone (ImageNet weights, eval mode, pooled features) and a trainable linear head.

    ``spec`` identifies the backbone (model, pretrained, input channels); it is written beside the saved head."""

    def __init__(self, backbone: nn.Module, num_outputs: int, spec: dict):
        super().__init__()
        self.backbone, self.spec = backbone, spec
        self.head = nn.Linear(backbone.num_features, num_outputs)
        self.backbone.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()  # frozen: its batch-norm statistics never move
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalized images (B, C, R, R); training and prediction use cached features instead."""
        with torch.no_grad():
            features = self.backbone(x)
        return self.head(features)


_BACKBONES: dict[tuple, nn.Module] = {}
_FEATURES: OrderedDict[str, torch.Tensor] = OrderedDict()


def frozen_backbone(model: str, pretrained: str, in_chans: int, device: torch.device) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``: it returns pooled features), with ImageNet weights,
    frozen, in eval mode; built once per process and shared by every probe (it never changes)."""
    from synthaug.weights.timm_imagenet import create_classifier

    key = (model, pretrained, in_chans, str(device))
    if key not in _BACKBONES:
        backbone = create_classifier(model, num_classes=0, in_chans=in_chans, pretrained=pretrained)
        _BACKBONES[key] = backbone.to(device, memory_format=torch.channels_last).requires_grad_(False).eval()
    return _BACKBONES[key]


def make_probe(config: ClassifierConfig, num_outputs: int, in_chans: int, device: torch.device) -> LinearProbe:
    """A :class:`LinearProbe` of ``config``'s backbone; its head is initialised from torch's global RNG."""
    backbone = frozen_backbone(config.model, config.pretrained, in_chans, device)
    spec = {"model": config.model, "pretrained": config.pretrained, "in_chans": in_chans}
    return LinearProbe(backbone, num_outputs, spec).to(device)


def image_digest(images: Images) -> str:
    """sha256 of a set's uint8 classifier inputs and their shape, read piece by piece, computed once per object."""
    if images.digest is None:
        h = hashlib.sha256()
        for chunk in images.chunks(PROBE_CHUNK):
            h.update(repr(tuple(chunk.shape)).encode())
            h.update(chunk.cpu().numpy().tobytes())
        images.digest = h.hexdigest()
    return images.digest


def _view_spec(views: int, flip: bool) -> dict:
    """Which inputs a feature set holds: the images themselves (views 0), or ``views`` augmented copies of each,
    drawn from a fixed seed per chunk of :data:`PROBE_CHUNK` images (the same for every seed and arm)."""
    return {"views": views, "flip": flip, "chunk": PROBE_CHUNK} if views else {"views": 0}


def extract_features(probe: LinearProbe, images: Images, views: int = 0, flip: bool = False) -> torch.Tensor:
    """(N, V, D) float32 backbone features of every image (V = 1 without views), one backbone call per chunk and view."""
    from synthaug.weights.timm_imagenet import input_normalization

    device = images.device
    backbone = probe.backbone
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in input_normalization(backbone))
    out = []
    for k, chunk in enumerate(images.chunks(PROBE_CHUNK)):
        x = chunk.float() / 255.0
        g = torch.Generator(device=device).manual_seed(derive_seed("probe-views", k))
        inputs = [augment(x, g, flip) for _ in range(views)] if views else [x]
        out.append(torch.stack([backbone(((v - mean) / std).contiguous(memory_format=torch.channels_last)).float()
                                for v in inputs], dim=1))
    return torch.cat(out) if out else torch.zeros(0, max(views, 1), backbone.num_features, device=device)


@contextlib.contextmanager
def _waiting_lock(path: Path):
    """An exclusive lock that waits: the benchmark's worker processes take turns on one feature file, so one
    extracts and the others read."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError:  # a cache that cannot be written costs time, not correctness: extract without the lock
        yield
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remember(key: str, features: torch.Tensor) -> torch.Tensor:
    _FEATURES[key] = features
    _FEATURES.move_to_end(key)
    total = sum(f.numel() * f.element_size() for f in _FEATURES.values())
    while len(_FEATURES) > 1 and total > FEATURE_MEMO_BYTES:
        _, dropped = _FEATURES.popitem(last=False)
        total -= dropped.numel() * dropped.element_size()
    return features


def probe_features(probe: LinearProbe, images: Images, views: int = 0, flip: bool = False,
                   cache: bool = True) -> torch.Tensor:
    """(N, V, D) features of ``images`` (see :func:`extract_features`), extracted once per image set.

    A set taken from a larger one (:meth:`Images.take`) uses that set's features, pooled sets their parts'. Others
    are looked up by the sha256 of their pixels, the backbone and the views: in this process, then in
    ``cache_root()/probe-features`` (shared by processes, written atomically with its checksum), else extracted and
    kept in both. ``cache=False`` extracts without keeping (images seen once, such as a filter's candidates).
    """
    if images.origin is not None and cache:
        parent, rows = images.origin
        return probe_features(probe, parent, views, flip)[rows.to(images.device)]
    if images.parts is not None and cache:
        return torch.cat([probe_features(probe, part, views, flip) for part in images.parts])
    # created outside inference mode so training can use them (predict runs under inference_mode)
    with torch.inference_mode(False), torch.no_grad():
        if not cache:
            return extract_features(probe, images, views, flip)
        import json
        import timm

        identity = {**probe.spec, **_view_spec(views, flip), "images": image_digest(images), "timm": timm.__version__}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        if key in _FEATURES:
            _FEATURES.move_to_end(key)
            return _FEATURES[key]
        return _remember(key, _features_on_disk(key, probe, images, views, flip).to(images.device))


def _features_on_disk(key: str, probe: LinearProbe, images: Images, views: int, flip: bool) -> torch.Tensor:
    from safetensors.torch import load, save

    from synthaug.cache import cache_root, usable_cache_file, write_cache_file

    path = cache_root() / "probe-features" / f"{key}.safetensors"
    with _waiting_lock(path.with_name(f"{key}.lock")):
        if (usable := usable_cache_file(path)) is not None:
            try:
                return load(usable.read_bytes())["features"].clone()
            except (OSError, KeyError, RuntimeError, ValueError) as e:  # a damaged file: extract again
                log.warning("The cached features in %s are unreadable (%s); extracting them again.", usable, e)
        features = extract_features(probe, images, views, flip)
        write_cache_file(path, save({"features": features.cpu().contiguous()}))
        return features


def train_linear_probe(images: Images, levels: list[int], config: ClassifierConfig, seed: int, *, augment_images: bool,
                       flip: bool, synthetic: Images | None, mix_probability: float | None,
                       description: str) -> LinearProbe:
    """:func:`train_classifier` for ``config.protocol == "linear-probe"``: the same batches of rows (pooled or mixed
    alike), drawn from cached features; with ``augment_images`` each row takes one of its ``config.probe_views``
    augmented views at random."""
    from diffusers.optimization import get_scheduler

    device = images.device
    probe = make_probe(config, sum(levels), images.channels, device)  # the shared frozen backbone: built before seeding
    seed = derive_seed("classifier", seed)
    torch.manual_seed(seed)
    probe.head.reset_parameters()  # the head's initialisation depends on the seed only
    views = config.probe_views if augment_images else 0
    if synthetic is not None and mix_probability is None:  # one pool, drawn uniformly
        images, synthetic = Images.concat([images, synthetic]), None
    feats = probe_features(probe, images, views, flip)  # (N, V, D)
    syn_feats = probe_features(probe, synthetic, views, flip) if synthetic is not None else None
    optimizer = torch.optim.AdamW(probe.head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=min(config.warmup_steps, config.steps // 2),
                             num_training_steps=config.steps)
    g = torch.Generator(device=device).manual_seed(seed)
    num_views = feats.shape[1]
    probe.train()
    with progress.task(description, total=config.steps, transient=True) as bar:
        for _ in range(config.steps):
            if syn_feats is not None:
                from_synth = torch.rand(config.batch_size, generator=g, device=device) < mix_probability
                i_real = torch.randint(0, len(images), (config.batch_size,), generator=g, device=device)
                i_syn = torch.randint(0, len(synthetic), (config.batch_size,), generator=g, device=device)
                v_real, v_syn = torch.randint(0, num_views, (2, config.batch_size), generator=g, device=device)
                x = torch.where(from_synth[:, None], syn_feats[i_syn, v_syn], feats[i_real, v_real])
                y = torch.where(from_synth[:, None], synthetic.y[i_syn], images.y[i_real])
            else:
                rows = torch.randint(0, len(images), (config.batch_size,), generator=g, device=device)
                view = torch.randint(0, num_views, (config.batch_size,), generator=g, device=device)
                x, y = feats[rows, view], images.y[rows]
            loss = head_loss(probe.head(x), y, levels, config.label_smoothing)
            optimization_step(loss, optimizer, schedule)
            bar.advance()
    check_finite(loss)
    return probe.eval()


def train_classifier(
    images: Images | torch.Tensor,
    targets: torch.Tensor | None,
    levels: list[int],
    config: ClassifierConfig,
    seed: int,
    *,
    augment_images: bool = False,
    flip: bool = False,
    synthetic: Images | tuple[torch.Tensor, torch.Tensor] | None = None,
    mix_probability: float | None = None,
    description: str = "classifier",
) -> torch.nn.Module:
    """Train one timm classifier for ``config.steps`` steps: every weight (``config.protocol`` finetune), or a linear
    head on a frozen backbone's cached features (linear-probe; :func:`train_linear_probe`).

    Args:
        images: :class:`Images` (targets None), or (N, C, R, R) uint8 on the training device (see
            :func:`to_device_images`) with ``targets`` (N, A) int64 on the same device.
        levels: the number of values of each target head.
        config: model, budget and optimizer.
        seed: seeds the initialisation, the batches and the augmentation.
        augment_images: apply classic augmentation (:func:`augment`) to every batch.
        flip: allow horizontal flips in the augmentation (not for digits).
        synthetic: extra (images, targets) pooled with the real ones; each batch draws uniformly
            from the pool, or, with ``mix_probability`` p, each image comes from the synthetic set
            with probability p.
        description: the progress bar's label.
    """
    from diffusers.optimization import get_scheduler

    from synthaug.weights.timm_imagenet import create_classifier, input_normalization

    images = images if isinstance(images, Images) else Images(images, targets)
    if synthetic is not None and not isinstance(synthetic, Images):
        synthetic = Images(*synthetic)
    if config.protocol == "linear-probe":
        return train_linear_probe(images, levels, config, seed, augment_images=augment_images, flip=flip,
                                  synthetic=synthetic, mix_probability=mix_probability, description=description)
    device = images.device
    seed = derive_seed("classifier", seed)  # the same seed starts every arm from the same weights and batches
    torch.manual_seed(seed)
    model = create_classifier(config.model, num_classes=sum(levels), in_chans=images.channels, pretrained=config.pretrained)
    # channels-last: several times faster for depthwise convolutions (EfficientNet, MobileNet), on CPU and GPU
    model = model.to(device, memory_format=torch.channels_last)
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in input_normalization(model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=min(config.warmup_steps, config.steps // 2),
                             num_training_steps=config.steps)
    g = torch.Generator(device=device).manual_seed(seed)
    if synthetic is not None and mix_probability is None:  # one pool, drawn uniformly
        images, synthetic = Images.concat([images, synthetic]), None
    model.train()
    with progress.task(description, total=config.steps, transient=True) as bar:
        for _ in range(config.steps):
            if synthetic is not None and mix_probability is not None:
                from_synth = torch.rand(config.batch_size, generator=g, device=device) < mix_probability
                i_real = torch.randint(0, len(images), (config.batch_size,), generator=g, device=device)
                i_syn = torch.randint(0, len(synthetic), (config.batch_size,), generator=g, device=device)
                x = torch.where(from_synth[:, None, None, None], synthetic.gather(i_syn), images.gather(i_real))
                y = torch.where(from_synth[:, None], synthetic.y[i_syn], images.y[i_real])
            else:
                rows = torch.randint(0, len(images), (config.batch_size,), generator=g, device=device)
                x, y = images.gather(rows), images.y[rows]
            x = x.float() / 255.0
            if augment_images:
                x = augment(x, g, flip)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            loss = head_loss(model(x), y, levels, config.label_smoothing)
            optimization_step(loss, optimizer, schedule)
            bar.advance()
    check_finite(loss)
    return model.eval()


def _probe_logits(model: LinearProbe, images: Images | torch.Tensor, batch_size: int, cache: bool):
    """A probe's logits, a chunk at a time, from the images' cached features (extracted once per image set)."""
    if not isinstance(images, Images):
        images = Images(images, torch.zeros(len(images), 1, dtype=torch.long, device=images.device))
    features = probe_features(model, images, cache=cache)[:, 0]  # (N, D): the images themselves
    for chunk in features.split(batch_size):
        yield model.head(chunk)


@torch.inference_mode()
def head_probabilities(model: torch.nn.Module, images: Images | torch.Tensor, levels: list[int], batch_size: int = 256,
                       cache: bool = True) -> list[torch.Tensor]:
    """Per head, the softmax probabilities (N, levels[a]) for (N, C, R, R) uint8 images (a tensor or :class:`Images`).

    A :class:`LinearProbe` reads the images' cached features (``cache=False``: extracted, not kept; for images seen once).
    """
    from synthaug.weights.timm_imagenet import input_normalization

    device = images.device
    if isinstance(model, LinearProbe):
        pieces = _probe_logits(model, images, batch_size, cache)
    else:
        mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in input_normalization(model))
        pieces = (model(((chunk.float() / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last))
                  for chunk in (images.chunks(batch_size) if isinstance(images, Images) else images.split(batch_size)))
    out: list[list[torch.Tensor]] = [[] for _ in levels]
    for logits in pieces:
        logits = logits.float()
        start = 0
        for a, n in enumerate(levels):
            out[a].append(logits[:, start : start + n].softmax(dim=1))
            start += n
    return [torch.cat(head) if head else torch.zeros(0, n, device=device) for head, n in zip(out, levels)]


def predict(model: torch.nn.Module, images: Images | torch.Tensor, levels: list[int], batch_size: int = 256) -> torch.Tensor:
    """(N, A) predicted level of each head for (N, C, R, R) uint8 images."""
    return torch.stack([p.argmax(dim=1) for p in head_probabilities(model, images, levels, batch_size)], dim=1)


def save_classifier(model: torch.nn.Module, folder: Path, info: dict) -> None:
    """A trained classifier's weights (safetensors) and ``info.json`` (its config and what it was trained on),
    written as one folder atomically, with checksums checked by :func:`load_classifier`. Of a :class:`LinearProbe`
    only the head is written, and ``info["linear_probe"]`` names its frozen backbone."""
    import json

    from safetensors.torch import save_file

    from synthaug.files import folder_atomic, write_checksums

    state = model.state_dict()
    if isinstance(model, LinearProbe):
        state, info = model.head.state_dict(), {**info, "linear_probe": model.spec}
    with folder_atomic(folder) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors")
        (tmp / "info.json").write_text(json.dumps(info, indent=1, default=float) + "\n")
        write_checksums(tmp)


def load_classifier(folder: Path, config: ClassifierConfig, levels: list[int], in_chans: int,
                    device: torch.device) -> tuple[torch.nn.Module, dict] | None:
    """A classifier :func:`save_classifier` wrote, or None when there is none or it is damaged (then train again).

    For ``config.protocol`` linear-probe: the saved head on the frozen backbone ``info.json`` names, rebuilt."""
    import json

    from safetensors.torch import load_file

    from synthaug.files import verify_checksums
    from synthaug.weights.timm_imagenet import create_classifier

    folder = Path(folder)
    if not (folder / "info.json").is_file():
        return None
    try:
        verify_checksums(folder)
        info = json.loads((folder / "info.json").read_text())
        if config.protocol == "linear-probe":
            probe = make_probe(config, sum(levels), in_chans, device)
            if info.get("linear_probe") != probe.spec:
                raise ValueError(f"it holds no linear probe on {probe.spec}")
            probe.head.load_state_dict(load_file(folder / "model.safetensors"))
            return probe.eval(), info
        # the same pretrained setting as in training: it sets the input normalization the weights expect
        model = create_classifier(config.model, num_classes=sum(levels), in_chans=in_chans, pretrained=config.pretrained)
        model.load_state_dict(load_file(folder / "model.safetensors"))
    except (SynthaugError, OSError, ValueError, RuntimeError) as e:
        log.warning("The classifier in %s is damaged (%s); training it again.", folder, e)
        return None
    return model.to(device, memory_format=torch.channels_last).eval(), info


def score(pred: np.ndarray, truth: np.ndarray, levels: list[int]) -> dict:
    """Top-1 accuracy and macro-F1 (means over heads), and accuracy per level of each head.

    For a single head the per-level accuracies are the per-class accuracies.
    """
    from sklearn.metrics import f1_score

    pred, truth = np.asarray(pred).reshape(len(pred), -1), np.asarray(truth).reshape(len(truth), -1)
    accs, f1s, per_level = [], [], []
    for a, n in enumerate(levels):
        accs.append(float((pred[:, a] == truth[:, a]).mean()))
        present = np.unique(truth[:, a])  # macro over the levels the test split has
        f1s.append(float(f1_score(truth[:, a], pred[:, a], labels=present, average="macro", zero_division=0)))
        per_level.append([float((pred[truth[:, a] == v, a] == v).mean()) if np.any(truth[:, a] == v) else None for v in range(n)])
    return {"top1": float(np.mean(accs)), "macro_f1": float(np.mean(f1s)), "per_head_top1": accs, "per_level": per_level}
