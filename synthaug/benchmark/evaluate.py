"""Judging synthetic images against their real dataset: what classifiers predict (:class:`Targets`), the
judge trained on every real training image, FID/KID with floors, conditioning accuracy, CAS and faces.

``evaluate_synthetic`` is `synthaug evaluate`: a finished shard set -> ``evaluation.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthaug import __version__
from synthaug.benchmark.arms import Arm, Images, SyntheticPool, run_arm
from synthaug.classifier import ClassifierConfig, predict, score, train_classifier
from synthaug.data import ImageSet, load_dataset
from synthaug.device import default_device
from synthaug.errors import SynthaugError
from synthaug.quality import conditioning_accuracy, face_detection, fid_kid_with_floor
from synthaug.seeds import derive_seed
from synthaug.shards import SyntheticSet, held_classes, load_shard_set, map_labels

FACE_FORMATS = ("celeba", "celeba-dialog")


@dataclass(frozen=True)
class Targets:
    """What a classifier predicts: one head per class label, or one head per attribute."""

    kind: str  # "class" or "attributes"
    levels: list[int]
    names: list[list[str]]  # per head, a name per level

    @classmethod
    def of_dataset(cls, ds: ImageSet, kind: str) -> Targets:
        if kind == "class":
            return cls("class", [ds.num_classes], [list(ds.class_names)])
        return cls("attributes", list(ds.attribute_levels),
                   [[f"{a} {v}" for v in range(n)] for a, n in zip(ds.attribute_names, ds.attribute_levels)])

    def of(self, ds: ImageSet) -> np.ndarray:
        """(N, A) targets of real images."""
        return ds.labels[:, None].astype(np.int64) if self.kind == "class" else ds.attributes.astype(np.int64)

    def of_synthetic(self, syn: SyntheticSet, real_classes: list[str], where: str) -> np.ndarray:
        """(N, A) intended targets of synthetic images, in the real label space (the null level where unspecified)."""
        if self.kind == "class":
            return map_labels(syn.class_names, real_classes, where, held_classes(syn))[syn.labels][:, None]
        return syn.attributes

    def counts(self, ds: ImageSet) -> np.ndarray:
        """Real images per class (one count in all for attribute targets): what synthetic ratios are relative to."""
        return np.bincount(self.of(ds)[:, 0], minlength=self.levels[0]) if self.kind == "class" else np.array([len(ds)])


class Evaluator:
    """Judges synthetic images against one real dataset: its test split, and a judge classifier trained on
    every real training image (its own test accuracy is reported next to what it says of synthetic images)."""

    def __init__(self, real: ImageSet, kind: str, b, device: torch.device):
        from synthaug.weights.fid_inception import fid_weights_path

        self.real, self.kind, self.b, self.device = real, kind, b, device
        self.config = ClassifierConfig.from_benchmark(b)
        self.targets = Targets.of_dataset(real, kind)
        self.fid_weights = fid_weights_path(b.fid_weights or None)
        self.train, self.test = real.split("train"), real.split("test")
        if not len(self.test) or not len(self.train):
            raise SynthaugError(f"{real.config.spec} needs training and test images; set data.split to stratified.")
        self.test_images = self.images(self.test)
        judge_config = dataclasses.replace(self.config, steps=b.judge_steps)
        train = self.images(self.train)
        self.judge = train_classifier(train.x, train.y, self.targets.levels, judge_config, seed=derive_seed("judge"),
                                      description="judge (every real training image)")
        self.judge_info = {"model": judge_config.model, "steps": judge_config.steps, "trained_on": "every real training image",
                           "test_score": score(predict(self.judge, self.test_images.x, self.targets.levels).cpu().numpy(),
                                               self.test_images.y.cpu().numpy(), self.targets.levels)}

    def images(self, ds: ImageSet) -> Images:
        """A real split as classifier inputs."""
        return Images.of(ds.images, self.targets.of(ds), self.config.resolution, self.device)

    def synthetic(self, syn: SyntheticSet) -> tuple[Images, np.ndarray]:
        """A synthetic set as classifier inputs, and its intended targets (with null levels where unspecified)."""
        intended = self.targets.of_synthetic(syn, self.real.class_names, self.real.config.spec)
        return Images.of(syn.images, intended, self.config.resolution, self.device), intended

    def quality(self, syn: SyntheticSet, train: ImageSet) -> dict:
        """FID/KID vs the real test split with the floor of ``train`` (the generator's real images),
        conditioning accuracy as the judge sees it, and MTCNN faces for face datasets."""
        b = self.b
        q = fid_kid_with_floor(syn.images, train.images, self.test.images, self.fid_weights, self.device,
                               b.fid_max_images, b.kid_subset_size)
        images, intended = self.synthetic(syn)
        pred = predict(self.judge, images.x, self.targets.levels)
        q["conditioning"] = conditioning_accuracy(pred.cpu().numpy(), intended, self.targets.levels, self.targets.names)
        if self.real.config.spec.split(":")[0] in FACE_FORMATS:
            q["faces"] = face_detection(syn.images, self.device)
        return q


CAS = Arm("synthetic only (CAS)", real=False, synthetic="main")


def evaluate_synthetic(folder: str | Path, data: str | None = None, benchmark=None, device: str | None = None) -> dict:
    """Every quality measure of a finished shard set against its real dataset; writes ``evaluation.json``.

    Args:
        folder: a folder written by ``synthaug generate`` (its manifest names the real dataset).
        data: a dataset spec to compare with instead of the manifest's.
        benchmark: a :class:`~synthaug.recipe.BenchmarkConfig` (classifier, seeds, FID settings).
        device: torch device (default: a GPU when there is one).
    """
    from synthaug.data import DataConfig
    from synthaug.files import write_text_atomic
    from synthaug.recipe import BenchmarkConfig
    from synthaug.weights.fid_inception import RESIZE_MODE, describe_fid_weights

    b = benchmark or BenchmarkConfig()
    dev = default_device(device)
    syn = load_shard_set(folder)
    schema = syn.manifest["schema"]
    config = DataConfig(**{**syn.manifest.get("data", {}), "shots_per_class": 0}) if "data" in syn.manifest else DataConfig(spec=schema["dataset"])
    if data:
        config = DataConfig(spec=data)
    config = dataclasses.replace(config, resolution=schema["resolution"])
    real = load_dataset(config)
    ev = Evaluator(real, schema["kind"], b, dev)
    images, intended = ev.synthetic(syn)
    usable = (intended < np.array(ev.targets.levels)[None, :]).all(axis=1)  # fully specified conditions can train a classifier
    cas = None
    if usable.any():
        pools = {"main": SyntheticPool(images.take(np.flatnonzero(usable)), {})}
        cas = run_arm(CAS, ev.targets.levels, ev.config, list(range(b.seeds)), ev.test_images, pools=pools)["top1"]
    result = {
        "folder": str(folder), "dataset": config.spec, "synthetic_images": len(syn.images), "real_train_images": len(ev.train),
        "real_test_images": len(ev.test), "quality": ev.quality(syn, ev.train), "cas_top1": cas,
        "judge": ev.judge_info, "fid_weights": describe_fid_weights(ev.fid_weights), "fid_resize": RESIZE_MODE,
        "classifier": dataclasses.asdict(ev.config), "synthaug": __version__,
    }
    write_text_atomic(Path(folder) / "evaluation.json", json.dumps(result, indent=1, default=float) + "\n")
    return result
