"""Confidence filtering (as SaSPA and ALIA do): keep a synthetic image only when a classifier trained on the
generator's own real images gives its intended class (every intended attribute level) a probability of
at least P.

The filter classifier is trained on exactly the real subset the generator saw, never more, once per run and
classifier setting, and kept in the run folder (``filter/<key>/``) with what it was trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import torch

from synthaug.classifier import ClassifierConfig, head_probabilities, load_classifier, save_classifier, train_classifier
from synthaug.files import exclusive_lock
from synthaug.runs import Run

log = logging.getLogger(__name__)


@dataclass
class ConfidenceFilter:
    """A classifier that says how sure it is that an image shows what was asked for."""

    model: torch.nn.Module
    levels: list[int]
    config: ClassifierConfig
    info: dict
    device: torch.device

    def confidence(self, images: np.ndarray, intended: np.ndarray) -> np.ndarray:
        """The probability of the intended target of each image, (N,): for attributes, the smallest over the
        attributes the condition names (null levels, ``intended == levels[a]``, are not scored).

        Args:
            images: (N, H, W, C) uint8.
            intended: (N, A) intended levels.
        """
        from synthaug.images import Images

        x = Images.of(images, np.zeros((len(images), len(self.levels)), np.int64), self.config.resolution, self.device)
        probs = head_probabilities(self.model, x, self.levels, cache=False)  # candidates are seen once: keep no features
        intended = np.asarray(intended).reshape(len(images), -1)
        out = np.ones(len(images))
        for a, p in enumerate(probs):
            named = intended[:, a] < self.levels[a]
            rows = np.flatnonzero(named)
            picked = p[torch.as_tensor(rows), torch.as_tensor(intended[rows, a])].cpu().numpy() if len(rows) else np.zeros(0)
            out[rows] = np.minimum(out[rows], picked)
        return out


def default_filter_config(run: Run) -> ClassifierConfig:
    """The run's recipe's ``[benchmark]`` classifier, trained for ``judge_steps`` (it is trained once per run)."""
    b = run.recipe().benchmark
    return ClassifierConfig.from_benchmark(b, steps=b.judge_steps)


def filter_key(run: Run, config: ClassifierConfig) -> str:
    """What determines a run's filter classifier: its real training images (their files, and where recorded their pixels
    and labels, which a retrained run may change under the same file names) and the classifier's settings."""
    schema = run.schema()
    identity = {"sources": schema.train_sources_sha256, "config": dataclasses.asdict(config)}
    if schema.train_pixels_sha256:  # runs from before these were recorded keep the key of their filter
        identity["content"] = [schema.train_pixels_sha256, schema.train_labels_sha256]
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_filter(run: Run, config: ClassifierConfig, device: torch.device) -> ConfidenceFilter:
    """The run's filter classifier for ``config``: read from ``run/filter/<key>/``, or trained on the run's real
    training images (exactly those the generator saw) and kept there."""
    schema = run.schema()
    levels = [schema.num_classes] if schema.kind == "class" else list(schema.attribute_levels)
    folder = run.path / "filter" / filter_key(run, config)
    loaded = load_classifier(folder, config, levels, schema.channels, device)
    if loaded is None:
        with exclusive_lock(run.path / "filter" / ".lock", f"the filter classifiers of {run.path}"):
            loaded = load_classifier(folder, config, levels, schema.channels, device)  # another process may have made it
            if loaded is None:
                train = run.training_images()
                targets = train.labels[:, None] if schema.kind == "class" else train.attributes
                from synthaug.images import Images

                x = Images.of(train.images, targets, config.resolution, device)
                model = train_classifier(x, None, levels, config, seed=0, description="filter classifier (the run's real images)")
                info = {"classifier": dataclasses.asdict(config), "trained_on": "the generator's real training images",
                        "train_images": len(train), "train_sources_sha256": schema.train_sources_sha256,
                        "key": folder.name}
                save_classifier(model, folder, info)
                loaded = (model.eval(), info)
    model, info = loaded
    return ConfidenceFilter(model, levels, config, info, device)
