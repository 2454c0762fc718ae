"""Classifier arms: the one way synthaug trains and scores a classifier.

An :class:`Arm` says what a classifier learns from (real images, with or without classic augmentation,
synthetic images at a ratio or a per-batch probability, or synthetic images only); :func:`run_arm` trains
one classifier per seed on it, with the same budget of steps as every other arm, and scores each on an
evaluation split. The benchmark's arms, its CAS (synthetic only) and its guidance sweep all use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from synthaug import progress
from synthaug.benchmark.stats import paired_gain, summarize
from synthaug.classifier import ClassifierConfig, predict, score, train_classifier
from synthaug.images import Images


@dataclass(frozen=True)
class Arm:
    """What one classifier learns from. Every arm trains for the same number of steps."""

    name: str
    real: bool = True  # the setting's real training images
    augment: bool = False  # classic augmentation (random resized crop, colour jitter, optional flip)
    synthetic: str | None = None  # which synthetic set of the setting (None: none)
    ratio: float | None = None  # synthetic images per real image, per class (nested in the ratio)
    mix_probability: float | None = None  # instead: each batch image is synthetic with this probability

    def describe(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SyntheticPool:
    """A synthetic set as classifier inputs, with the rows that make each ratio (nested: x0.5 lies in x1)."""

    images: Images
    rows_by_ratio: dict[float, np.ndarray]

    def at(self, ratio: float | None) -> Images:
        return self.images if ratio is None else self.images.take(self.rows_by_ratio[ratio])


def train_data(arm: Arm, real: Images | None, pools: dict[str, SyntheticPool]) -> tuple[Images, Images | None]:
    """(the images every batch draws from, the synthetic images drawn with ``mix_probability`` or None)."""
    synthetic = pools[arm.synthetic].at(arm.ratio) if arm.synthetic else None
    if not arm.real:
        return synthetic, None
    if synthetic is None or arm.mix_probability:
        return real, synthetic
    return Images.concat([real, synthetic]), None


def mean_per_level(runs: list[dict]) -> list[list[float | None]]:
    """Per head and level (per class for one head), the accuracy averaged over seeds (None: absent from the split)."""
    out = []
    for a, levels in enumerate(runs[0]["per_level"]):
        values = [[r["per_level"][a][v] for r in runs if r["per_level"][a][v] is not None] for v in range(len(levels))]
        out.append([float(np.mean(v)) if v else None for v in values])
    return out


def train_and_score(arm: Arm, images: Images, mixed: Images | None, evaluation: Images, levels: list[int],
                    config: ClassifierConfig, seed: int, flip: bool = False) -> dict:
    """One classifier of ``arm`` (its data from :func:`train_data`), trained with ``seed``, scored on ``evaluation``."""
    model = train_classifier(images, None, levels, config, seed, augment_images=arm.augment, flip=flip, synthetic=mixed,
                             mix_probability=arm.mix_probability or None, description=f"{arm.name}, seed {seed}")
    pred, truth = predict(model, evaluation, levels).cpu().numpy(), evaluation.y.cpu().numpy()
    right = (pred.reshape(len(pred), -1) == truth.reshape(len(truth), -1)).sum(1)
    # per evaluation image, how many heads it got right: what the bootstrap over evaluation images resamples
    return {**score(pred, truth, levels), "correct": right.astype(int).tolist(), "heads": len(levels)}


def correct_matrix(runs: list[dict]) -> np.ndarray:
    """(seeds, images): each run's per-image score (the share of heads right), from :func:`train_and_score`."""
    return np.array([np.asarray(r["correct"], dtype=np.float64) / r["heads"] for r in runs])


def run_arm(arm: Arm, levels: list[int], config: ClassifierConfig, seeds: list[int], evaluation: Images, *,
            real: Images | None = None, pools: dict[str, SyntheticPool] | None = None, flip: bool = False,
            bar: progress.Task | None = None) -> dict:
    """Train one classifier per seed on ``arm`` and score each on ``evaluation``.

    Seed s starts every arm from the same initialisation and draws the same batch positions, so arms
    differ only in their data and their scores can be compared seed by seed (:func:`compare`).

    Returns:
        {"arm": its description, "training_images": how many real and synthetic images it drew from,
        "runs": the score of each seed, "top1" and "macro_f1": mean, std and 95% interval over seeds,
        "per_level": accuracy per class (or attribute level) averaged over seeds}.
    """
    images, mixed = train_data(arm, real, pools or {})
    runs = []
    for seed in seeds:
        runs.append(train_and_score(arm, images, mixed, evaluation, levels, config, seed, flip))
        if bar is not None:
            bar.advance()
    return arm_result(arm, training_images(arm, real, images, mixed), runs)


def training_images(arm: Arm, real: Images | None, images: Images, mixed: Images | None) -> dict:
    """How many real and synthetic images an arm's classifiers drew from (``images``, ``mixed``: :func:`train_data`)."""
    n_real = len(real) if arm.real and real is not None else 0
    return {"real": n_real, "synthetic": len(images) - n_real + len(mixed or ())}


def arm_result(arm: Arm, counts: dict, runs: list[dict], **extra) -> dict:
    """An arm's result from the scores of its seeds: the one form ``evaluate``'s CAS and every benchmark arm report."""
    runs = [{k: v for k, v in r.items() if k not in ("correct", "heads")} for r in runs]  # per-image scores stay out
    return {"arm": arm.describe(), "training_images": counts, **extra, "runs": runs,
            "top1": summarize([r["top1"] for r in runs]), "macro_f1": summarize([r["macro_f1"] for r in runs]),
            "per_level": mean_per_level(runs)}


def compare(results: dict[str, dict], base: str) -> None:
    """Add to every other arm its gain in top-1 over ``base``, paired by seed, as ``gain_over_real``."""
    reference = [r["top1"] for r in results[base]["runs"]]
    for name, result in results.items():
        if name != base:
            result["gain_over_real"] = paired_gain([r["top1"] for r in result["runs"]], reference)
