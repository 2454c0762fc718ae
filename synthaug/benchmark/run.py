"""The benchmark: does synthetic data make a classifier better, and how good is the generator?

Recipe -> stages, each reading the files of the one before:

1. the real dataset: its test split, its targets, and a judge trained on every real training image;
2. per low-data setting (``benchmark.shots_per_class``): a generator trained on exactly that real subset,
   a synthetic set, its quality (FID/KID with floors, conditioning accuracy, faces), and timm classifiers
   trained on each arm with several seeds, scored on the real test split;
3. a guidance sweep on the setting with the most real data;
4. the report (``report.json``, ``report.md``, plots).

A re-run reuses finished generators and synthetic sets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synthaug import __version__, progress
from synthaug.benchmark.arms import Arm, Images, SyntheticPool, compare, run_arm
from synthaug.benchmark.evaluate import CAS, Evaluator, Targets
from synthaug.classifier import ClassifierConfig
from synthaug.data import ImageSet, load_dataset
from synthaug.device import default_device
from synthaug.errors import SynthaugError
from synthaug.generator.conditions import ConditionSchema, resolve_kind, sources_sha256
from synthaug.generator.train import train_generator
from synthaug.recipe import Recipe, SamplingConfig, recipe_to_dict
from synthaug.runs import Run
from synthaug.shards import SyntheticSet, load_shard_set
from synthaug.synthesis import GenerateRequest, generate_shards

log = logging.getLogger(__name__)


# -- what each setting trains on and draws -----------------------------------------------------

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


def arms_of(b) -> list[Arm]:
    """The arms every setting trains: real only, real + classic augmentation, real + synthetic at each ratio,
    optionally a per-batch mixing probability, and synthetic only (CAS)."""
    arms = [Arm("real"), Arm("real + classic aug", augment=True)]
    arms += [Arm(f"real + synthetic x{r:g}", synthetic="main", ratio=r) for r in b.synthetic_ratios]
    if b.mix_probability:
        arms.append(Arm(f"real + synthetic p={b.mix_probability:g}", synthetic="main", mix_probability=b.mix_probability))
    return [*arms, CAS]


# -- the state of one setting ------------------------------------------------------------------

@dataclass
class SyntheticSetResult:
    """A synthetic set drawn for the benchmark, as classifier inputs, with its quality."""

    folder: Path
    syn: SyntheticSet
    pool: SyntheticPool
    quality: dict
    sampling: SamplingConfig


@dataclass
class ShotsSetting:
    """One low-data setting: its real training subset, the generator trained on exactly that subset, the
    synthetic set drawn from it, and the classifier arms' results."""

    shots: int  # real training images per class (0: all)
    train: ImageSet
    real: Images
    run: Run
    generator: dict  # provenance: which run, on which real images, which weights
    synthetic: SyntheticSetResult
    arms: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"shots {self.shots or 'all'}"

    def to_report(self) -> dict:
        s = self.synthetic
        return {"shots_per_class": self.shots, "train_images": len(self.train), "generator": self.generator,
                "synthetic": {"folder": str(s.folder), "images": len(s.syn.images), "guidance": s.sampling.guidance},
                "quality": s.quality, "arms": self.arms}


# -- the stages --------------------------------------------------------------------------------

class Benchmark:
    """The stages of one benchmark run, sharing the recipe, the device, the judge and the timings."""

    def __init__(self, recipe: Recipe, out: Path, device: torch.device):
        self.recipe, self.b, self.out, self.device = recipe, recipe.benchmark, out, device
        self.config = ClassifierConfig.from_benchmark(self.b)
        self.seeds = list(range(self.b.seeds))
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    # 1.
    def load_real(self) -> Evaluator:
        """The full real dataset, its test split and targets, and the judge."""
        with self.timed("real data and judge"):
            full = load_dataset(dataclasses.replace(self.recipe.data, shots_per_class=0))
            return Evaluator(full, resolve_kind(self.recipe.generator.condition, full), self.b, self.device)

    # 2.
    def synthesize(self, ev: Evaluator, run: Run, train: ImageSet, sampling: SamplingConfig, folder: Path,
                   ratios: set[float]) -> SyntheticSetResult:
        """Enough synthetic images for the largest ratio, drawn into ``folder`` (resumed if there), and measured."""
        generate_shards(run.path, synthetic_request(train, ev.targets, max(ratios)), folder, sampling, device=str(self.device))
        syn = load_shard_set(folder)
        images, intended = ev.synthetic(syn)
        counts = ev.targets.counts(train)
        pool = SyntheticPool(images, {r: take_ratio(intended, syn.metas, counts, r, ev.targets.kind) for r in ratios})
        return SyntheticSetResult(folder, syn, pool, ev.quality(syn, train), sampling)

    def run_setting(self, ev: Evaluator, shots: int) -> ShotsSetting:
        """Generator, synthetic set, quality and every arm of one low-data setting."""
        label = f"shots {shots or 'all'}"
        with self.timed(f"generator ({label})"):
            g_recipe = generator_for_shots(self.recipe, shots)
            train = load_dataset(g_recipe.data).split("train")
            run = train_generator(g_recipe)
        provenance = check_no_leakage(run, train)
        with self.timed(f"generate and quality ({label})"):
            ratios = {*self.b.synthetic_ratios, self.b.sweep_ratio}
            synthetic = self.synthesize(ev, run, train, self.recipe.sampling, run.path / "benchmark-synthetic", ratios)
        setting = ShotsSetting(shots, train, ev.images(train), run, provenance, synthetic)
        with self.timed(f"classifiers ({label})"):
            arms = arms_of(self.b)
            bar = progress.Task(f"classifiers, shots/class {shots or 'all'}", total=len(arms) * len(self.seeds))
            for arm in arms:
                setting.arms[arm.name] = run_arm(arm, ev.targets.levels, self.config, self.seeds, ev.test_images,
                                                 real=setting.real, pools={"main": synthetic.pool},
                                                 flip=self.b.augment_flip, bar=bar)
            bar.close()
            compare(setting.arms, "real")
        return setting

    # 3.
    def guidance_sweep(self, ev: Evaluator, setting: ShotsSetting) -> dict:
        """Quality and downstream accuracy (real + synthetic at ``sweep_ratio``) for each guidance scale."""
        b = self.b
        arm = Arm(f"real + synthetic x{b.sweep_ratio:g}", synthetic="main", ratio=b.sweep_ratio)
        points = []
        with self.timed("guidance sweep"):
            for guidance in b.guidance_sweep:
                if guidance == self.recipe.sampling.guidance and arm.name in setting.arms:  # the main set measured it
                    points.append({"guidance": guidance, "quality": setting.synthetic.quality,
                                   "downstream_top1": setting.arms[arm.name]["top1"]})
                    continue
                sampling = dataclasses.replace(self.recipe.sampling, guidance=guidance)
                synthetic = self.synthesize(ev, setting.run, setting.train, sampling,
                                            setting.run.path / f"benchmark-sweep-g{guidance:g}", {b.sweep_ratio})
                result = run_arm(dataclasses.replace(arm, name=f"{arm.name}, guidance {guidance:g}"), ev.targets.levels,
                                 self.config, self.seeds, ev.test_images, real=setting.real, pools={"main": synthetic.pool})
                points.append({"guidance": guidance, "quality": synthetic.quality, "downstream_top1": result["top1"]})
        best = max(points, key=lambda p: p["downstream_top1"]["mean"])
        return {"shots_per_class": setting.shots, "ratio": b.sweep_ratio, "points": points,
                "best_downstream_guidance": best["guidance"]}

    # 4.
    def report(self, ev: Evaluator, settings: list[ShotsSetting], sweep: dict, command: str, started: float) -> dict:
        from synthaug.report import write_report
        from synthaug.weights.fid_inception import RESIZE_MODE, describe_fid_weights

        full, targets = ev.real, ev.targets
        report = {
            "synthaug": __version__,
            "command": command,
            "recipe": recipe_to_dict(self.recipe),
            "device": str(self.device),
            "machine": machine_description(self.device),
            "versions": library_versions(),
            "dataset": {"spec": self.recipe.data.spec, "name": full.name, "train_images": len(ev.train),
                        "test_images": len(ev.test), "classes": full.num_classes, "target": targets.kind,
                        "levels": targets.levels, "names": targets.names},
            "classifier": {**dataclasses.asdict(self.config), "seeds": self.seeds, "weights": classifier_weights(self.config)},
            "judge": ev.judge_info,
            "fid_weights": describe_fid_weights(ev.fid_weights),
            "fid_resize": RESIZE_MODE,
            "settings": [s.to_report() for s in settings],
            "guidance_sweep": sweep,
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "total_s": round(time.time() - started, 1),
        }
        top = max(settings, key=lambda s: len(s.train))
        write_report(report, self.out, full, top.synthetic.syn)
        return report


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
    started = time.time()
    bench = Benchmark(recipe, Path(out or recipe.run_path / "benchmark"), default_device(device))
    ev = bench.load_real()                                                           # 1. real data, judge
    settings = [bench.run_setting(ev, shots) for shots in recipe.benchmark.shots_per_class]  # 2. per setting
    sweep = bench.guidance_sweep(ev, max(settings, key=lambda s: len(s.train)))      # 3. guidance sweep
    command = command or " ".join(shlex.quote(a) for a in ["synthaug", *sys.argv[1:]])
    return bench.report(ev, settings, sweep, command, started)                       # 4. report


def classifier_weights(config: ClassifierConfig) -> dict:
    from synthaug.weights.timm_imagenet import weights_provenance

    return weights_provenance(config.model, config.pretrained)


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
