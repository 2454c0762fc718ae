"""The benchmark: does synthetic data make a classifier better, and how good is the generator?

Recipe -> per low-data setting: a generator trained on exactly that real subset, a synthetic set,
its quality (FID/KID with floors, conditioning accuracy, CAS, faces), and timm classifiers trained
on each arm with several seeds, scored on the real test split -> ``report.json`` and ``report.md``.
Every stage reads the previous stage's files, so a re-run reuses finished generators and shards.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synthaug import __version__, progress
from synthaug.classifier import ClassifierConfig, predict, score, to_device_images, train_classifier
from synthaug.data import ImageSet, load_dataset
from synthaug.device import default_device
from synthaug.errors import SynthaugError
from synthaug.generator.conditions import sources_sha256
from synthaug.synthesis import GenerateRequest, generate_shards
from synthaug.generator.train import train_generator
from synthaug.quality import conditioning_accuracy, face_detection, fid_kid_with_floor
from synthaug.recipe import Recipe, recipe_to_dict
from synthaug.runs import Run
from synthaug.shards import SyntheticSet, held_classes, load_shard_set, map_labels

log = logging.getLogger(__name__)
FACE_FORMATS = ("celeba", "celeba-dialog")


# -- real data and its targets ---------------------------------------------------------------

@dataclass
class Targets:
    """What a classifier predicts: one head per class label, or one per attribute."""

    kind: str  # "class" or "attributes"
    levels: list[int]
    names: list[list[str]]  # per head, a name per level

    def of(self, ds: ImageSet) -> np.ndarray:
        return ds.labels[:, None].astype(np.int64) if self.kind == "class" else ds.attributes.astype(np.int64)

    def of_synthetic(self, syn: SyntheticSet, real_classes: list[str], where: str) -> np.ndarray:
        if self.kind == "class":
            return map_labels(syn.class_names, real_classes, where, held_classes(syn))[syn.labels][:, None]
        return syn.attributes


def targets_for(ds: ImageSet, kind: str) -> Targets:
    if kind == "class":
        return Targets("class", [ds.num_classes], [list(ds.class_names)])
    return Targets("attributes", list(ds.attribute_levels),
                   [[f"{a} {v}" for v in range(n)] for a, n in zip(ds.attribute_names, ds.attribute_levels)])


def condition_kind(recipe: Recipe, ds: ImageSet) -> str:
    kind = recipe.generator.condition
    if kind == "auto":
        kind = "attributes" if ds.attributes is not None and ds.num_classes == 1 else "class"
    return kind


def classifier_config(b) -> ClassifierConfig:
    return ClassifierConfig(model=b.classifier, pretrained=b.pretrained, resolution=b.classifier_resolution,
                            steps=b.steps, batch_size=b.batch_size, lr=b.lr, weight_decay=b.weight_decay)


# -- statistics ------------------------------------------------------------------------------

def summarize(values: list[float]) -> dict:
    """Mean, standard deviation and 95% t-interval half-width over seeds."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    half = float(stats.t.ppf(0.975, len(v) - 1) * std / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "std": std, "ci95": half, "values": [float(x) for x in v]}


def paired_gain(arm: list[float], base: list[float]) -> dict:
    """The arm's gain over real-only, paired by seed, with a two-sided paired t-test (alpha 0.05)."""
    from scipy import stats

    diff = np.asarray(arm) - np.asarray(base)
    out = summarize(diff.tolist())
    if np.allclose(diff, diff[0]):
        p = 1.0 if diff[0] == 0 else 0.0  # no variance: identical on every seed
    else:
        p = float(stats.ttest_rel(arm, base).pvalue)
    out.update(p_value=p, significant=bool(p < 0.05))
    return out


# -- stages ----------------------------------------------------------------------------------

def generator_for_shots(recipe: Recipe, shots: int) -> Recipe:
    """The generator recipe of one low-data setting: trained on exactly the classifier's real subset."""
    b = recipe.benchmark
    if shots == 0:
        return recipe
    generator = recipe.generator
    if b.low_shot_duration_kimg:
        generator = dataclasses.replace(generator, duration_kimg=b.low_shot_duration_kimg,
                                        snapshot_every_kimg=b.low_shot_duration_kimg, grid_every_kimg=b.low_shot_duration_kimg)
    return dataclasses.replace(recipe, run_dir=str(recipe.run_path / f"shots-{shots}"),
                               data=dataclasses.replace(recipe.data, shots_per_class=shots), generator=generator)


def check_no_leakage(run: Run, train: ImageSet) -> dict:
    """The generator must have seen exactly the real images the classifier sees, never more."""
    from synthaug.generator.conditions import ConditionSchema

    schema = ConditionSchema.load(run.condition_file)
    expected = sources_sha256(train.sources)
    if schema.train_sources_sha256 != expected or schema.num_train_images != len(train):
        raise SynthaugError(
            f"The generator in {run.path} was trained on {schema.num_train_images} real images that are not the "
            f"{len(train)} this arm's classifier sees; delete that run folder so the benchmark retrains it."
        )
    return {"run": str(run.path), "train_images": schema.num_train_images, "train_sources_sha256": expected,
            "weights_sha256": run.weights_sha256()}


def synthetic_request(train: ImageSet, targets: Targets, ratio: float) -> GenerateRequest:
    """Enough synthetic images for ``ratio`` per real image: per class, or per real attribute vector."""
    if targets.kind == "class":
        counts = tuple(math.ceil(ratio * n) for n in train.class_counts())
        return GenerateRequest(all_classes=True, counts=counts)
    vectors, multiplicity = np.unique(train.attributes, axis=0, return_counts=True)
    names = train.attribute_names
    conds = tuple(",".join(f"{n}={v}" for n, v in zip(names, row)) for row in vectors)
    return GenerateRequest(attributes=conds, counts=tuple(math.ceil(ratio * m) for m in multiplicity))


def take_ratio(syn_targets: np.ndarray, syn_metas: list[dict], train_counts: np.ndarray, ratio: float,
               kind: str) -> np.ndarray:
    """Rows of the synthetic set for ``ratio`` synthetic images per real image (nested in ratio)."""
    index = np.array([m["index"] for m in syn_metas])
    if kind == "class":
        keep = index < np.ceil(ratio * train_counts[syn_targets[:, 0]]) - 1e-9
        per_class_cap = np.round(ratio * train_counts).astype(int)
        rows = []
        for c, cap in enumerate(per_class_cap):
            mine = np.flatnonzero(keep & (syn_targets[:, 0] == c))
            rows.extend(mine[np.argsort(index[mine], kind="stable")][:cap].tolist())
        return np.sort(np.array(rows, dtype=np.int64))
    total = int(round(ratio * int(train_counts.sum())))
    order = np.lexsort((np.arange(len(index)), index))  # round-robin order: index 0 of every condition first
    return np.sort(order[:total])


@dataclass
class Stage:
    """One low-data setting's real and synthetic tensors on the device."""

    shots: int
    train: ImageSet
    x_real: torch.Tensor
    y_real: torch.Tensor
    x_syn: torch.Tensor
    y_syn: torch.Tensor
    syn_rows: dict  # ratio -> rows of the synthetic set


def mean_per_level(runs: list[dict]) -> list[list[float | None]]:
    """Per head and level (per class for one head), the accuracy averaged over seeds (None: absent from test)."""
    out = []
    for a, levels in enumerate(runs[0]["per_level"]):
        values = [[r["per_level"][a][v] for r in runs if r["per_level"][a][v] is not None] for v in range(len(levels))]
        out.append([float(np.mean(v)) if v else None for v in values])
    return out


def run_arms(stage: Stage, cfg: ClassifierConfig, b, targets: Targets, x_test: torch.Tensor, y_test: np.ndarray,
             seeds: list[int]) -> dict:
    """Every arm of one setting, each with every seed: scores on the real test split."""
    arms: dict[str, dict] = {}

    n_arms = 3 + len(b.synthetic_ratios) + bool(b.mix_probability)  # real, classic aug, ratios, mix, CAS
    bar = progress.Task(f"classifiers, shots/class {stage.shots or 'all'}", total=n_arms * len(seeds))

    def arm(name, x, y, **kw):
        runs = []
        for seed in seeds:
            model = train_classifier(x, y, targets.levels, cfg, seed, description=f"{name}, seed {seed}", **kw)
            runs.append(score(predict(model, x_test, targets.levels).cpu().numpy(), y_test, targets.levels))
            bar.advance()
        arms[name] = {"runs": runs}

    arm("real", stage.x_real, stage.y_real)
    arm("real + classic aug", stage.x_real, stage.y_real, augment_images=True, flip=b.augment_flip)
    for ratio in b.synthetic_ratios:
        rows = torch.as_tensor(stage.syn_rows[ratio], device=stage.x_syn.device)
        arm(f"real + synthetic x{ratio:g}", stage.x_real, stage.y_real, synthetic=(stage.x_syn[rows], stage.y_syn[rows]))
    if b.mix_probability:
        arm(f"real + synthetic p={b.mix_probability:g}", stage.x_real, stage.y_real,
            synthetic=(stage.x_syn, stage.y_syn), mix_probability=b.mix_probability)
    arm("synthetic only (CAS)", stage.x_syn, stage.y_syn)
    bar.close()
    base = [r["top1"] for r in arms["real"]["runs"]]
    for name, arm in arms.items():
        top1 = [r["top1"] for r in arm["runs"]]
        arm["top1"] = summarize(top1)
        arm["macro_f1"] = summarize([r["macro_f1"] for r in arm["runs"]])
        arm["per_level"] = mean_per_level(arm["runs"])
        if name != "real":
            arm["gain_over_real"] = paired_gain(top1, base)
    return arms


class Evaluator:
    """Judges synthetic images against one real dataset: the real test split and its Inception
    features, and a judge classifier trained on every real training image."""

    def __init__(self, real: ImageSet, kind: str, b, device: torch.device):
        from synthaug.weights.fid_inception import fid_weights_path

        self.real, self.kind, self.b, self.device = real, kind, b, device
        self.cfg = classifier_config(b)
        self.targets = targets_for(real, kind)
        self.fid_weights = fid_weights_path(b.fid_weights or None)
        self.train, self.test = real.split("train"), real.split("test")
        if not len(self.test) or not len(self.train):
            raise SynthaugError(f"{real.config.spec} needs training and test images; set data.split to stratified.")
        self.x_test, self.y_test = to_device_images(self.test.images, self.cfg.resolution, device), self.targets.of(self.test)
        judge_cfg = dataclasses.replace(self.cfg, steps=b.judge_steps)
        self.judge = train_classifier(to_device_images(self.train.images, self.cfg.resolution, device),
                                      torch.as_tensor(self.targets.of(self.train), device=device), self.targets.levels,
                                      judge_cfg, seed=12345, description="judge (every real training image)")
        self.judge_info = {"model": judge_cfg.model, "steps": judge_cfg.steps, "trained_on": "every real training image",
                           "test_score": score(predict(self.judge, self.x_test, self.targets.levels).cpu().numpy(),
                                               self.y_test, self.targets.levels)}

    def quality(self, syn: SyntheticSet, train: ImageSet, intended: np.ndarray) -> dict:
        """FID/KID vs the real test split with the floor of ``train`` (the generator's real images),
        conditioning accuracy of ``intended`` (N, A) as the judge sees it, and faces for face data."""
        b = self.b
        q = fid_kid_with_floor(syn.images, train.images, self.test.images, self.fid_weights, self.device,
                               b.fid_max_images, b.kid_subset_size)
        pred = predict(self.judge, to_device_images(syn.images, self.cfg.resolution, self.device), self.targets.levels)
        q["conditioning"] = conditioning_accuracy(pred.cpu().numpy(), intended, self.targets.levels, self.targets.names)
        if self.real.config.spec.split(":")[0] in FACE_FORMATS:
            q["faces"] = face_detection(syn.images, self.device)
        return q

    def cas(self, syn_x: torch.Tensor, syn_y: torch.Tensor, seeds: list[int]) -> dict:
        """Classification Accuracy Score: trained on synthetic images only, tested on the real test split."""
        runs = []
        for seed in seeds:
            model = train_classifier(syn_x, syn_y, self.targets.levels, self.cfg, seed, description=f"CAS (seed {seed})")
            runs.append(score(predict(model, self.x_test, self.targets.levels).cpu().numpy(), self.y_test, self.targets.levels)["top1"])
        return summarize(runs)


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
    import json

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
    y_syn = ev.targets.of_synthetic(syn, real.class_names, config.spec)
    full_rows = y_syn < np.array(ev.targets.levels)[None, :]  # fully specified conditions can train a classifier
    usable = full_rows.all(axis=1)
    result = {
        "folder": str(folder), "dataset": config.spec, "synthetic_images": len(syn.images), "real_train_images": len(ev.train),
        "real_test_images": len(ev.test), "quality": ev.quality(syn, ev.train, y_syn),
        "cas_top1": ev.cas(to_device_images(syn.images[usable], ev.cfg.resolution, dev),
                           torch.as_tensor(y_syn[usable], device=dev), list(range(b.seeds))) if usable.sum() else None,
        "judge": ev.judge_info, "fid_weights": describe_fid_weights(ev.fid_weights), "fid_resize": RESIZE_MODE,
        "classifier": dataclasses.asdict(ev.cfg), "synthaug": __version__,
    }
    write_text_atomic(Path(folder) / "evaluation.json", json.dumps(result, indent=1, default=float) + "\n")
    return result


def run_benchmark(recipe: Recipe, out: str | Path | None = None, device: str | None = None, command: str | None = None) -> dict:
    """Run the whole benchmark of ``recipe`` and write its report into ``out``.

    Args:
        recipe: the resolved recipe (its ``[benchmark]`` section says what to measure).
        out: the report folder (default: ``<run folder>/benchmark``).
        device: torch device (default: a GPU when there is one).
        command: the command line to print in the report (default: this process's).

    Returns:
        The report (also written to ``out/report.json``, with ``report.md`` and plots).
    """
    from synthaug.report import write_report
    from synthaug.weights.fid_inception import RESIZE_MODE, describe_fid_weights

    started = time.time()
    timings: dict[str, float] = {}
    b = recipe.benchmark
    dev = default_device(device)
    out = Path(out or recipe.run_path / "benchmark")
    cfg = classifier_config(b)
    seeds = list(range(b.seeds))

    # 1. the full real dataset: test split, targets, judge, real test features
    t0 = time.perf_counter()
    full = load_dataset(dataclasses.replace(recipe.data, shots_per_class=0))
    kind = condition_kind(recipe, full)
    ev = Evaluator(full, kind, b, dev)
    targets, x_test, y_test, full_train, test = ev.targets, ev.x_test, ev.y_test, ev.train, ev.test
    timings["real data and judge"] = time.perf_counter() - t0
    quality_of = ev.quality

    # 2. each low-data setting: generator, synthetic set, quality, arms
    settings = []
    max_ratio = max([*b.synthetic_ratios, b.sweep_ratio])
    for shots in b.shots_per_class:
        t0 = time.perf_counter()
        g_recipe = generator_for_shots(recipe, shots)
        train = load_dataset(g_recipe.data).split("train")
        run = train_generator(g_recipe)
        timings[f"generator (shots {shots or 'all'})"] = time.perf_counter() - t0
        provenance = check_no_leakage(run, train)
        t0 = time.perf_counter()
        manifest_dir = run.path / "benchmark-synthetic"
        generate_shards(run.path, synthetic_request(train, targets, max_ratio), manifest_dir, recipe.sampling, device=str(dev))
        syn = load_shard_set(manifest_dir)
        y_syn = targets.of_synthetic(syn, full.class_names, recipe.data.spec)
        timings[f"generate (shots {shots or 'all'})"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        quality = quality_of(syn, train, y_syn)
        timings[f"quality (shots {shots or 'all'})"] = time.perf_counter() - t0
        counts = np.bincount(targets.of(train)[:, 0], minlength=targets.levels[0]) if kind == "class" else np.array([len(train)])
        stage = Stage(shots, train, to_device_images(train.images, cfg.resolution, dev),
                      torch.as_tensor(targets.of(train), device=dev), to_device_images(syn.images, cfg.resolution, dev),
                      torch.as_tensor(y_syn, device=dev),
                      {r: take_ratio(y_syn, syn.metas, counts, r, kind) for r in {*b.synthetic_ratios, b.sweep_ratio}})
        t0 = time.perf_counter()
        arms = run_arms(stage, cfg, b, targets, x_test, y_test, seeds)
        timings[f"classifiers (shots {shots or 'all'})"] = time.perf_counter() - t0
        settings.append({"shots_per_class": shots, "train_images": len(train), "generator": provenance,
                         "synthetic": {"folder": str(manifest_dir), "images": len(syn.images), "guidance": recipe.sampling.guidance},
                         "quality": quality, "arms": arms, "_stage": stage, "_run": run})

    # 3. guidance sweep on the setting with the most real data
    t0 = time.perf_counter()
    top = max(settings, key=lambda s: s["train_images"])
    stage, run = top["_stage"], top["_run"]
    sweep = []
    for guidance in b.guidance_sweep:
        reuse = f"real + synthetic x{b.sweep_ratio:g}"
        if guidance == recipe.sampling.guidance and reuse in top["arms"]:  # the main set already measured it
            sweep.append({"guidance": guidance, "quality": top["quality"], "downstream_top1": top["arms"][reuse]["top1"]})
            continue
        folder = run.path / f"benchmark-sweep-g{guidance:g}"
        generate_shards(run.path, synthetic_request(stage.train, targets, b.sweep_ratio), folder,
                        dataclasses.replace(recipe.sampling, guidance=guidance), device=str(dev))
        syn = load_shard_set(folder)
        y_syn = targets.of_synthetic(syn, full.class_names, recipe.data.spec)
        q = quality_of(syn, stage.train, y_syn)
        counts = np.bincount(targets.of(stage.train)[:, 0], minlength=targets.levels[0]) if kind == "class" else np.array([len(stage.train)])
        rows = torch.as_tensor(take_ratio(y_syn, syn.metas, counts, b.sweep_ratio, kind), device=dev)
        x_syn, t_syn = to_device_images(syn.images, cfg.resolution, dev)[rows], torch.as_tensor(y_syn, device=dev)[rows]
        runs = []
        for seed in seeds:
            model = train_classifier(stage.x_real, stage.y_real, targets.levels, cfg, seed, synthetic=(x_syn, t_syn),
                                     description=f"sweep g={guidance:g} (seed {seed})")
            runs.append(score(predict(model, x_test, targets.levels).cpu().numpy(), y_test, targets.levels)["top1"])
        sweep.append({"guidance": guidance, "quality": q, "downstream_top1": summarize(runs)})
    best = max(sweep, key=lambda s: s["downstream_top1"]["mean"])
    timings["guidance sweep"] = time.perf_counter() - t0

    for s in settings:
        s.pop("_stage"), s.pop("_run")
    report = {
        "synthaug": __version__,
        "command": command or " ".join(shlex.quote(a) for a in ["synthaug", *sys.argv[1:]]),
        "recipe": recipe_to_dict(recipe),
        "device": str(dev),
        "machine": machine_description(dev),
        "versions": library_versions(),
        "dataset": {"spec": recipe.data.spec, "name": full.name, "train_images": len(full_train), "test_images": len(test),
                    "classes": full.num_classes, "target": kind, "levels": targets.levels, "names": targets.names},
        "classifier": {**dataclasses.asdict(cfg), "seeds": seeds, "weights": classifier_weights(cfg)},
        "judge": ev.judge_info,
        "fid_weights": describe_fid_weights(ev.fid_weights),
        "fid_resize": RESIZE_MODE,
        "settings": settings,
        "guidance_sweep": {"shots_per_class": top["shots_per_class"], "ratio": b.sweep_ratio, "points": sweep,
                           "best_downstream_guidance": best["guidance"]},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "total_s": round(time.time() - started, 1),
    }
    write_report(report, out, full, load_shard_set(top["synthetic"]["folder"]))
    return report


def classifier_weights(cfg: ClassifierConfig) -> dict:
    from synthaug.weights.timm_imagenet import weights_provenance

    return weights_provenance(cfg.model, cfg.pretrained)


def library_versions() -> dict:
    import importlib.metadata as md

    names = ["torch", "torchvision", "timm", "diffusers", "accelerate", "torchmetrics", "torch-fidelity", "webdataset",
             "numpy", "scikit-learn", "scipy"]
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


def machine_description(device: torch.device) -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {len(os.sched_getaffinity(0))} CPU cores"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text
