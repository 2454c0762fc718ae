"""timm classifiers trained on uint8 images held in memory (real, augmented, or mixed with synthetic),
and their scores on a real test split.

Targets are (N, A) integer arrays with ``levels[a]`` values for head a: a class label is one head,
CelebA-Dialog attributes are five heads of six levels (the face study's attribute estimator).
Every run is seeded; the same seed draws the same batches and augmentations.

Two protocols: ``finetune`` trains every weight; ``linear-probe`` trains only a linear head on a frozen ImageNet
backbone (:class:`LinearProbe`), whose features are extracted once per image set and cached
(:mod:`synthaug.probe_features`), so every seed, arm and worker process reuses them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthaug import progress
from synthaug.augmentation import augment
from synthaug.errors import SynthaugError
from synthaug.images import Images
from synthaug.probe_features import probe_features
from synthaug.seeds import derive_seed
from synthaug.recipe import PROBE_NEEDS_WEIGHTS, PROTOCOLS  # declared once, with the recipe keys

log = logging.getLogger(__name__)



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
    views_per_seed: bool = True  # each seed draws its own augmented views (else one set of views for every seed)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise SynthaugError(f"The classifier protocol must be one of {', '.join(PROTOCOLS)}, not {self.protocol!r}.")
        if self.protocol == "linear-probe" and self.pretrained == "none":
            raise SynthaugError(PROBE_NEEDS_WEIGHTS)
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
                     probe_views=b.probe_views, views_per_seed=b.probe_views_per_seed)
        return dataclasses.replace(config, **changes)


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


@dataclass(frozen=True)
class Batch:
    """The rows of one training batch: ``rows`` of the (pooled) training set; or, when each image comes from the
    synthetic set with a probability, ``rows`` of the real images, ``synthetic_rows`` and which to take
    (``from_synthetic``)."""

    rows: torch.Tensor  # (B,)
    from_synthetic: torch.Tensor | None = None  # (B,) bool
    synthetic_rows: torch.Tensor | None = None  # (B,)

    def pick(self, real: torch.Tensor, synthetic: torch.Tensor | None = None) -> torch.Tensor:
        """Per row, the real value or (where drawn so) the synthetic one: ``real`` and ``synthetic`` are what the
        batch's rows give (indexed already), of any shape (B, ...)."""
        if self.from_synthetic is None:
            return real
        mask = self.from_synthetic.view(-1, *([1] * (real.dim() - 1)))
        return torch.where(mask, synthetic, real)


def draw_batch(g: torch.Generator, size: int, n: int, n_synthetic: int | None = None,
               mix_probability: float | None = None) -> Batch:
    """The rows of one batch of ``size``, drawn uniformly from ``n`` pooled images, or (``mix_probability`` p and
    ``n_synthetic``) each from the synthetic set with probability p: the one way both classifier loops (fine-tuning
    and the linear probe) draw their batches, so one seed draws the same rows in both."""
    device = g.device
    if n_synthetic is not None and mix_probability is not None:
        from_synthetic = torch.rand(size, generator=g, device=device) < mix_probability
        rows = torch.randint(0, n, (size,), generator=g, device=device)
        synthetic_rows = torch.randint(0, n_synthetic, (size,), generator=g, device=device)
        return Batch(rows, from_synthetic, synthetic_rows)
    return Batch(torch.randint(0, n, (size,), generator=g, device=device))


def head_loss(logits: torch.Tensor, targets: torch.Tensor, levels: list[int], smoothing: float) -> torch.Tensor:
    """Mean cross-entropy over the heads; the logits of head a are a contiguous block of levels[a]."""
    losses, start = [], 0
    for a, n in enumerate(levels):
        losses.append(F.cross_entropy(logits[:, start : start + n], targets[:, a], label_smoothing=smoothing))
        start += n
    return torch.stack(losses).mean()


# -- the linear-probe protocol: a frozen backbone's features, extracted once per image set --------------------

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


def train_linear_probe(images: Images, levels: list[int], config: ClassifierConfig, seed: int, *, augment_images: bool,
                       flip: bool, synthetic: Images | None, mix_probability: float | None,
                       description: str) -> LinearProbe:
    """:func:`train_classifier` for ``config.protocol == "linear-probe"``: the same batches of rows (pooled or mixed
    alike), drawn from cached features; with ``augment_images`` each row takes one of its ``config.probe_views``
    augmented views at random."""
    from diffusers.optimization import get_scheduler

    device = images.device
    probe = make_probe(config, sum(levels), images.channels, device)  # the shared frozen backbone: built before seeding
    replicate, seed = seed, derive_seed("classifier", seed)
    torch.manual_seed(seed)
    probe.head.reset_parameters()  # the head's initialisation depends on the seed only
    views = config.probe_views if augment_images else 0
    if synthetic is not None and mix_probability is None:  # one pool, drawn uniformly
        images, synthetic = Images.concat([images, synthetic]), None
    replicate = replicate if config.views_per_seed else 0  # the views are a source of noise a user's repeat varies too
    feats = probe_features(probe, images, views, flip, replicate=replicate)  # (N, V, D)
    syn_feats = probe_features(probe, synthetic, views, flip, replicate=replicate) if synthetic is not None else None
    optimizer = torch.optim.AdamW(probe.head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=min(config.warmup_steps, config.steps // 2),
                             num_training_steps=config.steps)
    g = torch.Generator(device=device).manual_seed(seed)
    num_views = feats.shape[1]
    probe.train()
    with progress.task(description, total=config.steps, transient=True) as bar:
        for _ in range(config.steps):
            batch = draw_batch(g, config.batch_size, len(images), len(synthetic) if syn_feats is not None else None,
                               mix_probability)
            if syn_feats is not None:
                v_real, v_syn = torch.randint(0, num_views, (2, config.batch_size), generator=g, device=device)
                x = batch.pick(feats[batch.rows, v_real], syn_feats[batch.synthetic_rows, v_syn])
                y = batch.pick(images.y[batch.rows], synthetic.y[batch.synthetic_rows])
            else:
                view = torch.randint(0, num_views, (config.batch_size,), generator=g, device=device)
                x, y = feats[batch.rows, view], images.y[batch.rows]
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
            batch = draw_batch(g, config.batch_size, len(images), len(synthetic) if synthetic is not None else None,
                               mix_probability)
            if batch.from_synthetic is not None:
                x = batch.pick(images.gather(batch.rows), synthetic.gather(batch.synthetic_rows))
                y = batch.pick(images.y[batch.rows], synthetic.y[batch.synthetic_rows])
            else:
                x, y = images.gather(batch.rows), images.y[batch.rows]
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
