"""Judging synthetic images against their real dataset: what classifiers predict (:class:`Targets`), the
judge trained on every real training image and two cross-fitted judges on its disjoint halves (a variation
is scored by the half judge that never saw its source), FID/KID with floors and jackknife intervals,
conditioning accuracy, MTCNN faces, and the memorization audit.

``evaluate_synthetic`` is `synthaug evaluate`: a finished shard set -> ``evaluation.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthaug.version import __version__
from synthaug.benchmark.arms import Arm, SyntheticPool, run_arm
from synthaug.images import Images
from synthaug.classifier import ClassifierConfig, load_classifier, predict, save_classifier, score, train_classifier
from synthaug.data import ImageSet, load_dataset
from synthaug.device import default_device
from synthaug.errors import SynthaugError
from synthaug.fid import fid_kid
from synthaug.quality import conditioning_accuracy, face_detection, features
from synthaug.seeds import derive_seed, numpy_rng
from synthaug.shards import sample_key
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


def judge_halves(targets: np.ndarray, seed: object = "judge halves") -> list[np.ndarray]:
    """Two disjoint halves of the judge's training images, stratified by target (each class or attribute
    combination split as evenly as it can be), seeded: the sorted rows of half 0 and of half 1.

    >>> judge_halves(np.array([[0], [0], [1], [1]]))[0].size
    2
    """
    _, stratum = np.unique(np.asarray(targets).reshape(len(targets), -1), axis=0, return_inverse=True)
    stratum = stratum.ravel()
    rng = numpy_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(stratum == k)) for k in range(stratum.max() + 1)])
    return [np.sort(order[0::2]), np.sort(order[1::2])]


def rows_of_sources(metas: list[dict], sources: list[str]) -> np.ndarray:
    """Per synthetic image (its metadata), the row of its real source among ``sources`` (dataset-relative files,
    e.g. a judge's or a generator's training images), or -1: a plain sample, or a source not among them."""
    row = {source: i for i, source in enumerate(sources)}
    return np.array([row.get(m.get("source"), -1) if m.get("source_index", -1) >= 0 else -1 for m in metas], dtype=np.int64)


def scoring_judges(source_rows: np.ndarray, halves: list[np.ndarray]) -> np.ndarray:
    """Which judge scores each synthetic image: the half judge (0 or 1) that did not train on its source (a row of
    the judge's training images), or -1, the judge of every training image, for an image without a source among
    them (a plain sample)."""
    source_rows = np.asarray(source_rows, dtype=np.int64)
    which = np.full(len(source_rows), -1, dtype=np.int64)
    for h, rows in enumerate(halves):
        which[(source_rows >= 0) & np.isin(source_rows, rows)] = 1 - h
    return which


class Evaluator:
    """Judges synthetic images against one real dataset: its test split, and a judge classifier trained on
    every real training image (its own test accuracy is reported next to what it says of synthetic images).
    Variations of real training images are scored by cross-fitted judges instead: one per disjoint half of
    the training images (``half_rows``), each scoring the variations of the other half's images.

    ``judge_folder``: where the judges are kept between runs (trained there once; the half judges in its
    ``half-0`` and ``half-1``, when first needed); None trains them in memory.
    """

    def __init__(self, real: ImageSet, kind: str, b, device: torch.device, judge_folder: Path | None = None,
                 train_judge: bool = True):
        from synthaug.weights.fid_inception import fid_weights_path

        self.real, self.kind, self.b, self.device = real, kind, b, device
        self.config = ClassifierConfig.from_benchmark(b)
        self.targets = Targets.of_dataset(real, kind)
        self.fid_weights = fid_weights_path(b.fid_weights or None)
        self.train, self.val, self.test = real.split("train"), real.split("val"), real.split("test")
        if not len(self.test) or not len(self.train):
            raise SynthaugError(f"{real.config.spec} needs training and test images; set data.split to stratified.")
        self.test_images = self.images(self.test)
        self.val_images = self.images(self.val) if len(self.val) else None
        judge_config = dataclasses.replace(self.config, steps=b.judge_steps)
        self.judge_config, self.judge_folder, self.train_judge = judge_config, judge_folder, train_judge
        self.half_rows = judge_halves(self.targets.of(self.train))
        self.halves: list[tuple[torch.nn.Module, dict]] | None = None  # trained or loaded when a variation is scored
        loaded = load_classifier(judge_folder, judge_config, self.targets.levels, real.channels, device) if judge_folder else None
        if loaded is None:
            if not train_judge:
                raise SynthaugError(f"The judge in {judge_folder} is missing; run the benchmark again.")
            train = self.images(self.train)
            judge = train_classifier(train, None, self.targets.levels, judge_config, seed=derive_seed("judge"),
                                     description="judge (every real training image)")
            pred = predict(judge, self.test_images, self.targets.levels).cpu().numpy()
            info = {"model": judge_config.model, "protocol": judge_config.protocol, "steps": judge_config.steps,
                    "trained_on": "every real training image",
                    "train_images": len(self.train),
                    "test_score": score(pred, self.test_images.y.cpu().numpy(), self.targets.levels)}
            if judge_folder:
                save_classifier(judge, judge_folder, info)
            loaded = judge, info
        self.judge, self.judge_info = loaded

    def half_judges(self) -> list[tuple[torch.nn.Module, dict]]:
        """The two cross-fitted judges (model, info), each trained like the judge on one of ``half_rows``."""
        if self.halves is not None:
            return self.halves
        from synthaug.conditions import sources_sha256

        self.halves = []
        for h, rows in enumerate(self.half_rows):
            folder = self.judge_folder / f"half-{h}" if self.judge_folder else None
            rows_sha256 = sources_sha256([self.train.sources[i] for i in rows])
            loaded = load_classifier(folder, self.judge_config, self.targets.levels, self.real.channels, self.device) if folder else None
            if loaded is not None and loaded[1].get("train_sources_sha256") != rows_sha256:
                loaded = None  # another split: train this half again
            if loaded is None:
                if not self.train_judge:
                    raise SynthaugError(f"The half judge in {folder} is missing; run the benchmark again.")
                judge = train_classifier(self.images(self.train).take(rows), None, self.targets.levels, self.judge_config,
                                         seed=derive_seed("judge", "half", h), description=f"judge (half {h + 1} of the real training images)")
                pred = predict(judge, self.test_images, self.targets.levels).cpu().numpy()
                info = {"model": self.judge_config.model, "protocol": self.judge_config.protocol, "steps": self.judge_config.steps,
                        "trained_on": f"half {h + 1} of 2 of the real training images (class-stratified, disjoint)",
                        "train_images": len(rows), "train_sources_sha256": rows_sha256,
                        "test_score": score(pred, self.test_images.y.cpu().numpy(), self.targets.levels)}
                if folder:
                    save_classifier(judge, folder, info)
                loaded = judge, info
            self.halves.append(loaded)
        return self.halves

    def judge_synthetic(self, images: Images, metas: list[dict]) -> tuple[np.ndarray, np.ndarray, dict]:
        """The judges' predicted levels (N, A) of synthetic images (with their metadata): a variation by the half
        judge that never saw its source, a plain sample by the judge of every real training image. Also which
        judge scored each image (see :func:`scoring_judges`), and a record of it with the real test top-1 to
        compare with (the scoring judges', weighted by how many images each scored)."""
        which = scoring_judges(rows_of_sources(metas, self.train.sources), self.half_rows)
        judges = [(-1, self.judge, self.judge_info)]
        if (which >= 0).any():
            judges += [(h, model, info) for h, (model, info) in enumerate(self.half_judges())]
        pred = np.zeros((len(which), len(self.targets.levels)), dtype=np.int64)
        top1 = 0.0
        for h, model, info in judges:
            rows = np.flatnonzero(which == h)
            if len(rows):
                pred[rows] = predict(model, images.take(rows), self.targets.levels).cpu().numpy()
                top1 += len(rows) * info["test_score"]["top1"]
        record = {"cross_fitted": int((which >= 0).sum()), "full_judge": int((which < 0).sum()),
                  "real_test_top1": top1 / max(len(which), 1)}
        if (which >= 0).any():
            record["half_judges_test_top1"] = [info["test_score"]["top1"] for _, info in self.half_judges()]
        return pred, which, record

    def images(self, ds: ImageSet) -> Images:
        """A real split as classifier inputs."""
        return Images.of(ds.images, self.targets.of(ds), self.config.resolution, self.device)

    def synthetic(self, syn: SyntheticSet) -> tuple[Images, np.ndarray]:
        """A synthetic set as classifier inputs, and its intended targets (with null levels where unspecified)."""
        intended = self.targets.of_synthetic(syn, self.real.class_names, self.real.config.spec)
        return Images.of(syn.images, intended, self.config.resolution, self.device), intended

    def quality(self, syn: SyntheticSet, train: ImageSet, seed: int = 0) -> tuple[dict, np.ndarray]:
        """How good one synthetic set is, against the real test split, and whether it copies ``train`` (the
        generator's real images). Returns the numbers and a grid of the closest synthetic/training pairs.

        - FID and KID vs n real test images, with 95% jackknife intervals, next to their floors (n real
          training images vs the same test images), n = min(synthetic, train, test, fid_max_images);
        - conditioning accuracy as the judges see it (variations by the half judge that never saw their source),
          with the scoring judges' real test top-1 to compare with;
        - MTCNN face detection for face datasets, for the synthetic images and for n real test images;
        - the memorization audit (:mod:`synthaug.memorization`) in Inception space and in pixels; variations against
          their own source (found among ``train`` by file) and, for copying, every other training image.
        """
        from synthaug.memorization import audit, pairs_grid

        b = self.b
        n = int(min(len(syn.images), len(train), len(self.test), b.fid_max_images))
        if n < 2:  # e.g. a filter kept (almost) nothing: nothing to measure, said plainly in the report
            return {"n": n, "fid": None, "kid": None, "conditioning": {"accuracy": None},
                    "note": f"only {len(syn.images)} synthetic image(s): too few to measure"}, np.full((2, 2, 3), 255, np.uint8)
        pick = {name: np.sort(numpy_rng("quality", seed, name).permutation(size)[:n])
                for name, size in (("synthetic", len(syn.images)), ("train", len(train)), ("test", len(self.test)))}
        syn_px, test_px = syn.images[pick["synthetic"]], self.test.images[pick["test"]]
        f_syn = features(syn_px, self.fid_weights, self.device)
        f_test = features(test_px, self.fid_weights, self.device, cache=True)
        f_train_all = features(train.images, self.fid_weights, self.device, cache=True)  # every image the generator saw
        f_floor = f_train_all[pick["train"]]
        subset = min(b.kid_subset_size, n)
        main, floor = fid_kid(f_test, f_syn, subset, seed), fid_kid(f_test, f_floor, subset, seed)
        q = {"n": n, **main, **{f"floor_{k}": v for k, v in floor.items()}, "kid_subset_size": subset}
        images, intended = self.synthetic(syn)
        pred, _, judges = self.judge_synthetic(images, syn.metas)
        q["conditioning"] = {**conditioning_accuracy(pred, intended, self.targets.levels, self.targets.names), "judges": judges}
        if self.real.config.spec.split(":")[0] in FACE_FORMATS:
            q["faces"] = face_detection(syn.images, self.device)
            q["faces_real"] = face_detection(test_px, self.device)
        keys = [m.get("key") or sample_key(m["condition"], m["index"]) for m in syn.metas]
        syn_ids = [keys[i] for i in pick["synthetic"]]
        metas = [syn.metas[i] for i in pick["synthetic"]]
        sources = rows_of_sources(metas, train.sources)
        strengths = np.array([m.get("strength", 1.0) for m in metas], dtype=np.float64)
        q["memorization"] = audit({"synthetic": f_syn, "train": f_train_all, "test": f_test},
                                  {"synthetic": syn_px, "train": train.images, "test": test_px},  # read in pieces
                                  list(train.sources), syn_ids, sources=sources, strengths=strengths)
        grid = pairs_grid(syn_px, train.images, q["memorization"]["inception"]["closest"], {k: i for i, k in enumerate(syn_ids)})
        return q, grid


CAS = Arm("synthetic only (CAS)", real=False, synthetic="main")


def evaluate_synthetic(folder: str | Path, data: str | None = None, benchmark=None, device: str | None = None) -> dict:
    """Every quality measure of a finished shard set against its real dataset; writes ``evaluation.json``.

    The memorization audit compares the synthetic images with the real training images of the generator
    (the subset its run folder records, when that run is still there; else every real training image).

    Before any work the folder is checked: a shard folder this process may write into (``evaluation.json`` and
    ``memorization.png`` are written there at the end), whose manifest's dataset is still where it was (unless
    ``data`` names it).

    Args:
        folder: a folder written by ``synthaug generate`` (its manifest names the real dataset).
        data: a dataset spec to compare with instead of the manifest's.
        benchmark: a :class:`~synthaug.recipe.BenchmarkConfig` (classifier, seeds, FID settings).
        device: torch device (default: a GPU when there is one).

    Returns:
        The evaluation, as written to ``folder/evaluation.json``.
    """
    import os

    from synthaug.data import DataConfig
    from synthaug.files import check_input_folder, write_text_atomic
    from synthaug.grids import save_png
    from synthaug.recipe import BenchmarkConfig
    from synthaug.shards import SHARD_FOLDER
    from synthaug.weights.fid_inception import RESIZE_MODE, describe_fid_weights

    check_input_folder(Path(folder), "folder", SHARD_FOLDER)
    if not os.access(folder, os.W_OK | os.X_OK):  # found out only at the end, after minutes of work
        raise SynthaugError(f"{folder} is read-only, and evaluate writes evaluation.json and memorization.png into it; make "
                            "it writable, or copy the set to a writable folder and evaluate the copy.")
    if not data:
        check_manifest_dataset(Path(folder))
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
    generator_train = ev.train
    if not data and "data" in syn.manifest:  # the generator's own real subset (e.g. 10 shots per class)
        generator_train = load_dataset(dataclasses.replace(DataConfig(**syn.manifest["data"]), resolution=schema["resolution"])).split("train")
    images, intended = ev.synthetic(syn)
    usable = (intended < np.array(ev.targets.levels)[None, :]).all(axis=1)  # fully specified conditions can train a classifier
    cas = None
    if usable.any():
        pools = {"main": SyntheticPool(images.take(np.flatnonzero(usable)), {})}
        cas = run_arm(CAS, ev.targets.levels, ev.config, list(range(b.seeds)), ev.test_images, pools=pools)["top1"]
    quality, grid = ev.quality(syn, generator_train)
    save_png(grid, Path(folder) / "memorization.png", min_side=256)
    result = {
        "folder": str(folder), "dataset": config.spec, "synthetic_images": len(syn.images), "real_train_images": len(ev.train),
        "generator_train_images": len(generator_train), "real_test_images": len(ev.test), "quality": quality, "cas_top1": cas,
        "judge": ev.judge_info, "half_judges": [info for _, info in ev.halves or []], "fid_weights": describe_fid_weights(ev.fid_weights), "fid_resize": RESIZE_MODE,
        "classifier": dataclasses.asdict(ev.config), "synthaug": __version__,
    }
    write_text_atomic(Path(folder) / "evaluation.json", json.dumps(result, indent=1, default=float) + "\n")
    return result


def check_manifest_dataset(folder: Path) -> None:
    """The dataset a shard set's manifest names must still be where it was; if it moved, say to pass ``data``
    rather than describe the layout of a folder that is not there."""
    from synthaug.data import parse_spec
    from synthaug.shards import read_manifest

    try:
        manifest = read_manifest(folder)
    except SynthaugError:
        return  # evaluate says what the folder is
    spec = (manifest.get("data") or {}).get("spec") or (manifest.get("schema") or {}).get("dataset")
    if not isinstance(spec, str):
        return
    try:
        fmt, root = parse_spec(spec)
    except SynthaugError:
        return  # said as it is when the dataset is read
    if isinstance(root, Path) and not root.exists():
        raise SynthaugError(f"The dataset {folder} was drawn from, {spec}, is no longer at {root}; pass {{data}} "
                            f"{fmt.name}:PATH with its new place.", arguments=("data",))
