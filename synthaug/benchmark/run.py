"""The benchmark: does synthetic data make a classifier better than what a practitioner already does
(classic augmentation), by how much, and how good and how original is the generator?

Recipe -> stages, each kept on disk under a key of everything that determines it (:mod:`.store`):

1. the real dataset: train / validation / test splits, targets, and a judge trained on every real
   training image;
2. per low-data setting (``benchmark.shots_per_class``): a generator trained on exactly that real subset
   (no leakage: checked by the sha256 of its sources);
3. choices on the validation split, never on the test split: the guidance scale, the strength of
   real-guided variations, and the confidence-filter threshold, each by the validation accuracy of
   real + classic augmentation + synthetic classifiers; and which real-only arm is the baseline;
4. the arms on the test split: real, real + classic augmentation (also with 2x and 4x the real images,
   for "worth N real images"), and every synthetic arm on top of classic augmentation; synthetic only (CAS);
5. the report: the headline arm (chosen on validation) against the best real-only arm, paired over seeds,
   with the minimum detectable effect, what the synthetic data is worth in real images, FID/KID with
   floors and intervals, conditioning accuracy and the memorization audit.

Re-running reuses every stage whose inputs are unchanged. Under ``accelerate launch`` the processes
share the generator training and generation, and split the classifier runs; one process writes the report.
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
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from synthaug import progress
from synthaug.version import __version__
from synthaug.benchmark.arms import (Arm, SyntheticPool, arm_result, compare, correct_matrix, train_and_score,
                                     train_data, training_images)
from synthaug.benchmark.evaluate import CAS, Evaluator, Targets
from synthaug.benchmark.stats import min_detectable_effect, paired_comparison
from synthaug.benchmark.store import StageStore, stage_key
from synthaug.benchmark.workers import WorkerPool, one_thread, resolve_workers
from synthaug.classifier import ClassifierConfig
from synthaug.images import Images
from synthaug.data import ImageSet, load_dataset
from synthaug.data.splits import missing_validation
from synthaug.device import default_device
from synthaug.errors import SynthaugError
from synthaug.conditions import (ConditionSchema, resolve_kind, schema_from_dataset, sources_sha256,
                                          training_data_changes)
from synthaug.generator.train import build_training, train_generator
from synthaug.data.config import MAX_SEED
from synthaug.recipe import Recipe, recipe_to_dict
from synthaug.provenance import cpu_flags, invocation_record
from synthaug.runs import Run
from synthaug.seeds import derive_seed
from synthaug.shards import SyntheticSet, load_shard_set, sample_key
from synthaug.synthesis import GenerateRequest, generate_shards

log = logging.getLogger(__name__)
CLASSIC = "real + classic aug"  # the arm every synthetic arm is built on: real images with classic augmentation
# A synthetic set that supplies less than this share of the images its ratio asks for (a filter that kept almost
# nothing) is no candidate: its arm is real + classic augmentation in all but name, and cannot be chosen or called best.
MIN_KEPT_SHARE = 0.1
CHOICE_RULE = ("a synthetic method is chosen only when its validation gain over real + classic aug is above zero across "
               "the wider of two 95% intervals (over seeds, and a paired bootstrap over the validation images); otherwise "
               "nothing is chosen and the best candidate is reported for information")
KFOLD_NOTE = "choices made on the one validation split (no k-fold choices on the training split: not within the budget)"


def noise_sources(b, config: ClassifierConfig) -> dict:
    """What a benchmark seed varies, what the bootstrap covers, and what each setting holds fixed (one draw each)."""
    varied = ["the classifier's initialisation and batch order"]
    fixed = ["the few-shot real subset", "the generator (one training run)"]
    if config.protocol != "linear-probe":
        varied.append("its classic augmentation draws")
    elif config.views_per_seed:
        varied.append("its augmented views (linear probe)")
    else:
        fixed.append("the linear probe's augmented views (benchmark.probe_views_per_seed = false)")
    if b.synthetic_draws_per_seed:
        varied.append("the synthetic images drawn (each seed its own draw of every set)")
    else:
        fixed.append("the synthetic images drawn (benchmark.synthetic_draws_per_seed = false)")
    return {"varied_by_seed": varied,
            "covered_by_bootstrap": ["which images the evaluation split holds (paired bootstrap over its images, per class)"],
            "held_fixed": fixed}


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
    changes = training_data_changes(schema, schema_from_dataset(train, schema.kind), location=False)
    if changes or schema.num_train_images != len(train):
        raise SynthaugError(
            f"The generator in {run.path} was trained on {schema.num_train_images} real images that are not the "
            f"{len(train)} this arm's classifier sees{': ' + ', and '.join(changes) if changes else ''}; delete that run "
            "folder (or pass --fresh) so the benchmark retrains it."
        )
    return {"run": str(run.path), "train_images": schema.num_train_images, "train_sources_sha256": expected,
            "weights_sha256": run.weights_sha256(), "kimg": run.info().get("kimg")}


@dataclass(frozen=True)
class Method:
    """How a synthetic set is drawn: plain generation, or real-guided variations of the setting's real images
    at some strengths; optionally kept only where a filter classifier is confident."""

    guidance: float
    strengths: tuple[float, ...] = ()  # (): from pure noise; else SDEdit from the real training images
    min_confidence: float = 0.0  # 0: no filter

    @property
    def label(self) -> str:
        what = (f"variations (strength {', '.join(f'{s:g}' for s in self.strengths)}, guidance {self.guidance:g})"
                if self.strengths else f"synthetic (guidance {self.guidance:g})")
        return what + (f", filtered p>={self.min_confidence:g}" if self.min_confidence else "")


def synthetic_request(train: ImageSet, targets: Targets, ratio: float, method: Method | None = None,
                      max_draws: int = 8) -> GenerateRequest:
    """Enough synthetic images for ``ratio`` per real image: per class, or per real attribute vector."""
    method = method or Method(guidance=1.0)
    extra = dict(from_real=bool(method.strengths), strengths=method.strengths or (1.0,),
                 min_confidence=method.min_confidence, max_draws=max_draws if method.min_confidence else 1)
    if targets.kind == "class":
        counts = tuple(math.ceil(ratio * n) for n in train.class_counts())
        return GenerateRequest(all_classes=True, counts=counts, **extra)
    vectors, multiplicity = np.unique(train.attributes, axis=0, return_counts=True)
    names = train.attribute_names
    conds = tuple(",".join(f"{n}={v}" for n, v in zip(names, row)) for row in vectors)
    return GenerateRequest(attributes=conds, counts=tuple(math.ceil(ratio * m) for m in multiplicity), **extra)


def ratio_total(train_counts: np.ndarray, ratio: float) -> int:
    """The synthetic images ``ratio`` asks for in all: ratio x the real images, rounded half up (never to even)."""
    return int(math.floor(ratio * int(np.sum(train_counts)) + 0.5))


def per_class_counts(train_counts: np.ndarray, ratio: float) -> np.ndarray:
    """Synthetic images per class for ``ratio``: each class its ``floor(ratio x n)``, and the remainder of
    :func:`ratio_total` one each to the classes with the largest fractions (ties in a fixed seeded order), so that the
    total is exact (x0.5 of 5 shots is 2.5 per class on average, not 2)."""
    counts = np.asarray(train_counts, dtype=np.int64)
    exact = ratio * counts
    out = np.floor(exact + 1e-9).astype(np.int64)
    remainder = ratio_total(counts, ratio) - int(out.sum())
    if remainder > 0:
        tie = np.random.default_rng(derive_seed("synthetic-ratio-remainder") % 2**32).permutation(len(counts))
        order = np.lexsort((tie, -(exact - out)))  # largest fraction first, then the seeded order
        out[order[:remainder]] += 1
    return out


def asked_for(train_counts: np.ndarray, ratio: float, kind: str) -> int:
    """How many synthetic images ``ratio`` asks for (what :func:`take_ratio` takes from a set that has them all)."""
    return int(per_class_counts(train_counts, ratio).sum()) if kind == "class" else ratio_total(train_counts, ratio)


def take_ratio(syn_targets: np.ndarray, syn_metas: list[dict], train_counts: np.ndarray, ratio: float,
               kind: str) -> np.ndarray:
    """Rows of the synthetic set for ``ratio`` synthetic images per real image: per class, the images with the
    lowest indices (so x0.5 lies inside x1, and a filtered set that kept fewer gives what it has)."""
    index = np.array([m["index"] for m in syn_metas])
    if kind == "class":
        caps = per_class_counts(train_counts, ratio)
        rows = []
        for c, cap in enumerate(caps):
            mine = np.flatnonzero(syn_targets[:, 0] == c)
            rows.extend(mine[np.argsort(index[mine], kind="stable")][:cap].tolist())
        return np.sort(np.array(rows, dtype=np.int64))
    total = ratio_total(train_counts, ratio)
    order = np.lexsort((np.arange(len(index)), index))  # round-robin order: index 0 of every condition first
    return np.sort(order[:total])


# -- the state of one setting ------------------------------------------------------------------

@dataclass
class SyntheticSetResult:
    """A synthetic set drawn for the benchmark, as classifier inputs, with its quality."""

    key: str
    images: str  # the key of what determines each image, whatever the set's size
    method: Method
    folder: Path
    syn: SyntheticSet
    pool: SyntheticPool
    quality: dict | None  # None: not measured (a candidate only compared on validation)
    grid: Path  # the closest synthetic / training pairs of the memorization audit
    ratio: float  # the largest synthetic-to-real ratio it was drawn for
    asked: dict[float, int] = field(default_factory=dict)  # ratio -> synthetic images that ratio asks for

    def kept(self, ratio: float) -> int:
        """Synthetic images the set supplies at ``ratio`` (fewer than asked when a filter rejected some)."""
        return len(self.pool.rows_by_ratio[ratio])

    def candidate(self, ratio: float) -> bool:
        """Whether the set may be chosen, or called best: it supplies at least MIN_KEPT_SHARE of what ``ratio`` asks."""
        return self.kept(ratio) > 0 and self.kept(ratio) >= MIN_KEPT_SHARE * self.asked[ratio]

    def describe(self) -> dict:
        manifest = self.syn.manifest
        return {"key": self.key, "method": dataclasses.asdict(self.method), "label": self.method.label,
                "folder": str(self.folder), "images": len(self.syn.images), "quality": self.quality,
                "filter": manifest.get("filter"), "memorization_grid": str(self.grid), "ratio": self.ratio,
                "kept": {f"{r:g}": {"kept": self.kept(r), "asked": a} for r, a in sorted(self.asked.items())}}


@dataclass
class ShotsSetting:
    """One low-data setting: its real training subset, the generator trained on exactly that subset, the
    synthetic sets drawn from it, the choices made on validation, and the arms' results on test."""

    shots: int  # real training images per class (0: all)
    train: ImageSet
    real: Images
    run: Run
    generator: dict  # provenance: which run, on which real images, which weights
    more_real: dict[int, ImageSet] = field(default_factory=dict)  # multiple of the shots -> a larger real subset
    sets: dict[str, SyntheticSetResult] = field(default_factory=dict)  # by set key
    validation: dict = field(default_factory=dict)  # arm name -> result on the validation split
    choices: dict = field(default_factory=dict)
    arms: dict = field(default_factory=dict)  # arm name -> result on the test split
    arm_sets: dict = field(default_factory=dict)  # arm name -> the key of the synthetic set it used
    correct: dict = field(default_factory=dict)  # (split, arm name) -> (seeds, images) per-image scores
    replicates: dict = field(default_factory=dict)  # (set key, seed) -> that seed's own draw of the set

    @property
    def label(self) -> str:
        return f"shots {self.shots or 'all'}"


@dataclass(frozen=True)
class Job:
    """One classifier: an arm, a seed, and the split it is scored on."""

    key: str
    arm: Arm
    seed: int
    split: str
    real: Images | None
    pools: dict


# -- the stages --------------------------------------------------------------------------------

class Benchmark:
    """The stages of one benchmark run, sharing the recipe, the device, the judge, the store and the timings."""

    def __init__(self, recipe: Recipe, out: Path, device: torch.device, fresh: bool = False, command: str = "synthaug benchmark"):
        from synthaug.device import process_state

        # a long barrier timeout: one process may train the judge or measure quality while the others wait
        self.state = process_state(timeout=timedelta(hours=24))
        self.recipe, self.b, self.out, self.device, self.fresh = recipe, recipe.benchmark, out, device, fresh
        self.config = ClassifierConfig.from_benchmark(self.b)
        self.seeds = list(range(self.b.seeds))
        self.store = StageStore(out)
        self.timings: dict[str, float] = {}
        self.trained_classifiers = 0
        self.workers = resolve_workers(self.b.workers, device, self.state.num_processes)
        self._pool = None
        self.command = command

    @property
    def main(self) -> bool:
        return self.state.is_main_process

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    @contextlib.contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    def check(self) -> None:
        """Everything that can fail on the recipe, the data or the folders, before anything is written or deleted:
        the run folders and the stage store are synthaug's (or new); with --fresh, which deletes the finished
        stages first, also the real data, its validation split and each setting's data and generator."""
        for shots in self.b.shots_per_class:
            Run(generator_for_shots(self.recipe, shots).run_path).check_trainable()
        if self.main:  # the others would race the first process's writes into the store
            self.store.check_ours()
        if not self.fresh:
            return
        self.real_data()
        for shots in self.b.shots_per_class:
            load_dataset(generator_for_shots(self.recipe, shots).data).split("train")
        build_training(self.recipe, torch.device("cpu"))  # the network (preset, resolution, base model), built once

    @contextlib.contextmanager
    def lock(self):
        """One benchmark at a time per output folder (the first process holds the lock for all), which holds the
        stage store open, or with --fresh cleared."""
        from synthaug.files import exclusive_lock

        self.out.mkdir(parents=True, exist_ok=True)
        self.barrier()  # every process has done its checks before the first writes (or, with --fresh, deletes)
        with exclusive_lock(self.out / ".lock", f"the benchmark folder {self.out}") if self.main else contextlib.nullcontext():
            if self.main:
                self.store.clear() if self.fresh else self.store.open()
                self.store.begin(invocation_record(recipe_to_dict(self.recipe), self.command))
            self.barrier()
            if not self.main:
                self.store.join()
            yield

    # 1. the real data and the judge
    def real_data(self) -> ImageSet:
        """The whole real dataset (every split), which must have a validation split to make the choices on."""
        full = load_dataset(dataclasses.replace(self.recipe.data, shots_per_class=0))
        if not np.any(full.splits == "val"):
            why = missing_validation(full.labels, full.splits, self.recipe.data.val_fraction, full.class_names)
            raise SynthaugError(f"The benchmark makes its choices on a validation split and {self.recipe.data.spec} has "
                                f"none; {why}.")
        return full

    def load_real(self) -> Evaluator:
        with self.timed("real data and judge"):
            full = self.real_data()
            for note in full.notes if self.main else ():
                log.info("%s: %s", self.recipe.data.spec, note)
            kind = resolve_kind(self.recipe.generator.condition, full)
            train = full.split("train")
            judge = self.store.folder_stage("judge", stage_key("judge", sources_sha256(train.sources), full.resolution,
                                                         dataclasses.asdict(self.config), self.b.judge_steps, kind))
            ev = Evaluator(full, kind, self.b, self.device, judge) if self.main else None
            if self.main:
                self.store.mark_folder("judge", judge.name)
            self.barrier()
            return ev or Evaluator(full, kind, self.b, self.device, judge, train_judge=False)

    # 2. a generator per setting
    def prepare_setting(self, ev: Evaluator, shots: int) -> ShotsSetting:
        label = f"shots {shots or 'all'}"
        with self.timed(f"generator ({label})"):
            g_recipe = generator_for_shots(self.recipe, shots)
            train = load_dataset(g_recipe.data).split("train")
            before = Run(g_recipe.run_path).info() if not self.fresh else {}
            run = train_generator(g_recipe, fresh=self.fresh)
        after = run.info()
        reused = bool(before.get("finished")) and before.get("id") == after.get("id") and before.get("kimg") == after.get("kimg")
        trained_by = {k: after.get(k) for k in ("id", "synthaug", "commit", "dirty")}
        setting = ShotsSetting(shots, train, ev.images(train), run, {**check_no_leakage(run, train), "reused": reused,
                                                                      "trained_by": trained_by})
        for m in self.b.real_multiples if shots else ():
            larger = load_dataset(dataclasses.replace(self.recipe.data, shots_per_class=shots * m)).split("train")
            if len(larger) > len(setting.more_real.get(max(setting.more_real, default=0), train)):  # only when it grows
                setting.more_real[m] = larger
        return setting

    # synthetic sets, each drawn once into the store and measured
    def synthetic_set(self, ev: Evaluator, setting: ShotsSetting, method: Method, ratio: float,
                      measure: bool = True, replicate: int = 0) -> SyntheticSetResult:
        """The set of ``method`` with enough images for ``ratio``, drawn into the store once; with ``measure``, its
        quality too (FID/KID, conditioning, faces, memorization), measured once. ``replicate`` k > 0: another draw of
        the same set, from its own sampling seed (for seed k's classifiers; never measured)."""
        from synthaug.grids import save_png

        sampling = self.recipe.sampling.replace(guidance=method.guidance)
        if replicate:
            sampling = sampling.replace(seed=derive_seed(sampling.seed, "replicate", replicate) % (MAX_SEED + 1))
            measure = False
        request = synthetic_request(setting.train, ev.targets, ratio, method, self.b.max_draws)
        # What determines each image (not how many there are): image i of a condition is the same in a larger set
        identity = stage_key("images", setting.generator["weights_sha256"], dataclasses.asdict(sampling) | {"batch_size": 0},
                           dataclasses.asdict(method), self.b.max_draws if method.min_confidence else None,
                           dataclasses.asdict(self.config) if method.min_confidence else None)
        key = stage_key("synthetic", identity, dataclasses.asdict(request))
        known = setting.replicates if replicate else setting.sets
        if key in known and (known[key].quality is not None or not measure):
            return known[key]
        folder = self.store.folder_stage("synthetic", key)
        with self.timed(f"generate ({setting.label})"):
            generate_shards(setting.run.path, request, folder, sampling, device=str(self.device),
                            filter_config=self.config if method.min_confidence else None)
        if self.main:
            self.store.mark_folder("synthetic", key)
        syn = load_shard_set(folder)
        check_held_out(syn, ev, folder)
        images, intended = ev.synthetic(syn)
        counts = ev.targets.counts(setting.train)
        ratios = {*self.b.synthetic_ratios, self.b.sweep_ratio}
        pool = SyntheticPool(images, {r: take_ratio(intended, syn.metas, counts, r, ev.targets.kind) for r in ratios if r <= ratio})
        asked = {r: asked_for(counts, r, ev.targets.kind) for r in ratios if r <= ratio}
        # "cross-fitted, source-aware": quality measured before variations had their own judges and audit is measured again
        q_key = stage_key("quality", key, sources_sha256(setting.train.sources), sources_sha256(ev.test.sources),
                          self.b.fid_max_images, self.b.kid_subset_size, self.b.fid_weights, ev.judge_info,
                          "cross-fitted, source-aware")
        grid = self.store.root / "quality" / f"{q_key}.png"
        if measure:
            with self.timed(f"quality ({setting.label})"):
                if self.main and self.store.load("quality", q_key) is None:
                    quality, pairs = ev.quality(syn, setting.train)
                    save_png(pairs, grid, min_side=256)
                    self.store.save("quality", q_key, quality)
                self.barrier()
        result = SyntheticSetResult(key, identity, method, folder, syn, pool, self.store.load("quality", q_key) if measure else None,
                                    grid, ratio, asked)
        known[key] = result
        return result

    def draws(self, ev: Evaluator, setting: ShotsSetting, sets: dict[str, SyntheticSetResult], seed: int) -> dict:
        """The synthetic sets seed ``seed``'s classifiers train on: its own draw of each (the first seed: the set
        itself) with ``benchmark.synthetic_draws_per_seed``, else the same sets for every seed."""
        if not self.b.synthetic_draws_per_seed or seed == self.seeds[0]:
            return sets
        return {name: self.synthetic_set(ev, setting, s.method, s.ratio, replicate=seed) for name, s in sets.items()}

    # classifier runs: each (arm, seed) once, split over the processes, kept as files
    def job(self, ev: Evaluator, setting: ShotsSetting, arm: Arm, seed: int, split: str, sets: dict[str, SyntheticSetResult],
            real: ImageSet | None = None) -> Job:
        real = setting.train if real is None else real
        evaluation = ev.val if split == "val" else ev.test
        used = {}
        for name, s in sets.items():
            rows = s.pool.rows_by_ratio.get(arm.ratio) if arm.ratio is not None else np.arange(len(s.syn.metas))
            used[name] = [s.images, sources_sha256([sample_key(m["condition"], m["index"]) for m in (s.syn.metas[i] for i in rows)])]
        key = stage_key("classifier", arm.describe(), seed, split, sources_sha256(evaluation.sources),
                        sources_sha256(real.sources) if arm.real else None, used, dataclasses.asdict(self.config),
                        ev.targets.levels, self.b.augment_flip)
        images = setting.real if real is setting.train else ev.images(real)
        return Job(key, arm, seed, split, images if arm.real else None, {n: s.pool for n, s in sets.items()})

    def run_jobs(self, ev: Evaluator, jobs: list[Job], description: str) -> list[dict]:
        """Every job's result: read from the store, else trained by the process whose turn it is, on its pool of
        single-threaded CPU workers (on 2 cores, two one-thread classifiers train 1.9x as fast as one two-thread one,
        and a classifier's numbers do not depend on how many workers there are)."""
        done = [self.store.load("classifiers", j.key) is not None for j in jobs]
        mine = [j for i, j in enumerate(jobs) if i % self.state.num_processes == self.state.process_index and not done[i]]
        bar = progress.Task(description, total=len(mine))

        def save(j: Job, images: Images, mixed: Images | None, score: dict) -> None:
            self.store.save("classifiers", j.key, {"arm": j.arm.describe(), "seed": j.seed, "split": j.split,
                                                   "training_images": training_images(j.arm, j.real, images, mixed),
                                                   "score": score})
            self.trained_classifiers += 1
            bar.advance()

        work = []
        for j in mine:
            images, mixed = train_data(j.arm, j.real, j.pools)
            evaluation = ev.val_images if j.split == "val" else ev.test_images
            work.append((j, images, mixed, (j.arm, images, mixed, evaluation, ev.targets.levels, self.config, j.seed,
                                            self.b.augment_flip)))
        pool = self.worker_pool() if len(work) > 1 else None
        if pool is None:
            for j, images, mixed, args in work:
                with one_thread(self.device):
                    save(j, images, mixed, train_and_score(*args))
        else:
            futures = [(j, images, mixed, pool.submit(train_and_score, *args)) for j, images, mixed, args in work]
            for j, images, mixed, future in futures:
                save(j, images, mixed, future.result())
        bar.close()
        self.barrier()
        return [self.store.load("classifiers", j.key) for j in jobs]

    def worker_pool(self):
        """The CPU worker processes classifier runs are spread over (None: run them here), started once."""
        if self.device.type != "cpu" or self.workers < 2:
            return None
        if self._pool is None:
            self._pool = WorkerPool(self.workers)
        return self._pool

    def close(self, abort: bool = False) -> None:
        """Stop the workers: after their queued runs, or (``abort``: the run failed or was interrupted) at once."""
        if self._pool is not None:
            self._pool.stop(abort)
            self._pool = None

    def run_arms(self, ev: Evaluator, setting: ShotsSetting, arms: list[tuple[Arm, dict, ImageSet | None]], split: str) -> dict:
        """Each arm with every seed on ``split``: mean, interval and per-class accuracy over seeds."""
        jobs = [self.job(ev, setting, arm, seed, split, self.draws(ev, setting, sets, seed), real)
                for arm, sets, real in arms for seed in self.seeds]
        results = self.run_jobs(ev, jobs, f"classifiers, {setting.label}, {'validation' if split == 'val' else 'test'}")
        out = {}
        for k, (arm, sets, _) in enumerate(arms):
            mine = results[k * len(self.seeds) : (k + 1) * len(self.seeds)]
            setting.correct[split, arm.name] = correct_matrix([r["score"] for r in mine])
            out[arm.name] = arm_result(arm, mine[0]["training_images"], [r["score"] for r in mine],
                                       synthetic_set=next(iter(sets.values())).key if sets else None)
        return out

    def gain(self, ev: Evaluator, setting: ShotsSetting, split: str, arm: str, base: str) -> dict:
        """``arm``'s gain over ``base`` on ``split``: paired by seed (a t-interval over seeds), paired by image (a
        bootstrap over the split's images, within each class), and the wider of the two, which verdicts rest on."""
        results = setting.validation if split == "val" else setting.arms
        evaluation = ev.val if split == "val" else ev.test
        return paired_comparison([r["top1"] for r in results[arm]["runs"]], [r["top1"] for r in results[base]["runs"]],
                                 setting.correct[split, arm], setting.correct[split, base],
                                 evaluation.labels if ev.targets.kind == "class" else None)

    # 3. choices on the validation split
    def choose(self, ev: Evaluator, setting: ShotsSetting) -> None:
        b, ratio = self.b, self.b.sweep_ratio
        excluded: list[dict] = []  # filtered sets that kept too few images to be candidates
        aug = Arm(CLASSIC, augment=True)
        candidates = [(Arm("real"), {}, None), (aug, {}, None)]
        plain = {g: self.synthetic_set(ev, setting, Method(g), ratio) for g in b.guidance_sweep}
        candidates += [(self.synthetic_arm(s, ratio), {"main": s}, None) for s in plain.values()]
        with self.timed(f"choices on validation ({setting.label})"):
            results = self.run_arms(ev, setting, candidates, "val")
            setting.validation.update(results)
            best = lambda sets: max(sets, key=lambda s: results[self.synthetic_arm(s, ratio).name]["top1"]["mean"])  # noqa: E731
            chosen = best(list(plain.values()))
            guidance = chosen.method.guidance
            methods = [chosen.method]  # the best of each kind, each scored on test
            if b.strengths:
                varied = [self.synthetic_set(ev, setting, Method(guidance, (s,)), ratio, measure=False) for s in b.strengths]
                results.update(self.run_arms(ev, setting, [(self.synthetic_arm(s, ratio), {"main": s}, None) for s in varied], "val"))
                methods.append(best(varied).method)
                chosen = best([chosen, best(varied)])
            if b.min_confidences:
                filtered = [self.synthetic_set(ev, setting, dataclasses.replace(chosen.method, min_confidence=p), ratio,
                                               measure=False) for p in b.min_confidences]
                results.update(self.run_arms(ev, setting, [(self.synthetic_arm(s, ratio), {"main": s}, None) for s in filtered], "val"))
                usable = [s for s in filtered if s.candidate(ratio)]  # a filter that kept (almost) nothing is no candidate
                excluded = [{"label": s.method.label, "kept": s.kept(ratio), "asked": s.asked[ratio]}
                            for s in filtered if not s.candidate(ratio)]
                if usable:
                    methods.append(best(usable).method)
                    chosen = best([chosen, best(usable)])
            setting.validation.update(results)
            baseline = max(["real", aug.name], key=lambda n: results[n]["top1"]["mean"])
            # the best candidate is chosen only when its validation gain over real + classic aug (the same training
            # without the synthetic images) is larger than its validation uncertainty
            over_aug = self.gain(ev, setting, "val", self.synthetic_arm(chosen, ratio).name, aug.name)
        setting.choices = {"guidance": guidance, "method": dataclasses.asdict(chosen.method), "label": chosen.method.label,
                           "chosen": over_aug["decisive"]["helps"], "validation_gain_over_classic_aug": over_aug,
                           "rule": CHOICE_RULE, "baseline": baseline, "ratio": ratio,
                           "tested": [dataclasses.asdict(m) for m in methods], "not_candidates": excluded,
                           "min_kept_share": MIN_KEPT_SHARE, "kfold": KFOLD_NOTE}

    def synthetic_arm(self, s: SyntheticSetResult, ratio: float, augment: bool = True) -> Arm:
        return Arm(f"real{' + classic aug' if augment else ''} + {s.method.label} x{ratio:g}", augment=augment,
                   synthetic="main", ratio=ratio)

    # 4. the arms on the test split
    def score(self, ev: Evaluator, setting: ShotsSetting) -> None:
        b = self.b
        methods = [Method(**{**m, "strengths": tuple(m["strengths"])}) for m in setting.choices["tested"]]
        arms: list[tuple[Arm, dict, ImageSet | None]] = [(Arm("real"), {}, None), (Arm(CLASSIC, augment=True), {}, None)]
        for m, larger in setting.more_real.items():
            per_class = len(larger) / max(1, ev.targets.levels[0] if ev.targets.kind == "class" else 1)
            arms.append((Arm(f"real + classic aug, {m}x real ({per_class:.0f}/class)", augment=True), {}, larger))
        top = max([*b.synthetic_ratios, b.sweep_ratio])
        for method in methods:
            s = self.synthetic_set(ev, setting, method, top)
            arms += [(self.synthetic_arm(s, r), {"main": s}, None) for r in sorted({*b.synthetic_ratios, b.sweep_ratio})]
            if method == methods[0]:
                if b.mix_probability:
                    arms.append((Arm(f"real + classic aug + {method.label} p={b.mix_probability:g}", augment=True,
                                     synthetic="main", mix_probability=b.mix_probability), {"main": s}, None))
                arms.append((CAS, {"main": s}, None))
        with self.timed(f"classifiers ({setting.label})"):
            setting.arms = self.run_arms(ev, setting, arms, "test")
        setting.arm_sets = {arm.name: sets["main"].key for arm, sets, _ in arms if sets}
        compare(setting.arms, "real")

    # 5. the report
    def summary(self, ev: Evaluator, setting: ShotsSetting) -> dict:
        """The headline of one setting: the arm chosen on validation against the best real-only arm."""
        arms, c = setting.arms, setting.choices
        chosen = Method(**{**c["method"], "strengths": tuple(c["method"]["strengths"])})
        headline = next(name for name, a in arms.items() if a["arm"]["real"] and a["arm"]["augment"] and a["arm"]["ratio"] == c["ratio"]
                        and a.get("synthetic_set") and setting.sets[a["synthetic_set"]].method == chosen)
        base = c["baseline"]
        gain = self.gain(ev, setting, "test", headline, base)
        synthetic = [n for n, a in arms.items() if a["arm"]["synthetic"] and a["arm"]["real"]]
        mde = min_detectable_effect([[r["top1"] for r in arms[n]["runs"]] for n in synthetic], [r["top1"] for r in arms[base]["runs"]])
        # the best on test among arms whose set supplies what their ratio asks (a near-empty filtered set is no contender)
        contenders = [n for n in synthetic if arms[n]["arm"]["ratio"] is None
                      or setting.sets[arms[n]["synthetic_set"]].candidate(arms[n]["arm"]["ratio"])]
        best_by_test = max(contenders or synthetic, key=lambda n: arms[n]["top1"]["mean"])
        # every synthetic arm is on top of classic augmentation: against real + classic aug, the same training without
        # the synthetic images, is what the synthetic images themselves add (reported even when validation chose real)
        versus_aug = self.gain(ev, setting, "test", headline, CLASSIC) if base != CLASSIC else gain
        chosen_flag = c.get("chosen", True)
        return {"headline_arm": headline, "chosen": chosen_flag, "baseline_arm": base, "gain": gain,
                "min_detectable_effect": mde, "gain_vs_classic_aug": versus_aug, "best_synthetic_arm_by_test": best_by_test,
                "worth_real": worth_real(setting, headline),
                "verdict": verdict(headline, base, gain, mde, versus_aug, chosen_flag, c.get("validation_gain_over_classic_aug"))}

    def report(self, ev: Evaluator, settings: list[ShotsSetting], started: float) -> dict:
        from synthaug.report import write_report
        from synthaug.weights.fid_inception import RESIZE_MODE, describe_fid_weights

        full, targets = ev.real, ev.targets
        report = {
            "synthaug": __version__,
            "command": self.command,
            "recipe": recipe_to_dict(self.recipe),
            "device": str(self.device),
            "machine": machine_description(self.device),
            "processes": self.state.num_processes,
            "versions": library_versions(),
            "dataset": {"spec": self.recipe.data.spec, "name": full.name, "train_images": len(ev.train),
                        "val_images": len(ev.val), "test_images": len(ev.test), "classes": full.num_classes,
                        "target": targets.kind, "levels": targets.levels, "names": targets.names},
            "classifier": {**dataclasses.asdict(self.config), "description": self.config.describe(), "seeds": self.seeds,
                           "weights": classifier_weights(self.config)},
            "judge": ev.judge_info,
            "fid_weights": describe_fid_weights(ev.fid_weights),
            "fid_resize": RESIZE_MODE,
            "settings": [{"shots_per_class": s.shots, "train_images": len(s.train), "per_class": per_class_range(s.train, targets),
                          "generator": s.generator,
                          "choices": s.choices, "validation": s.validation, "arms": s.arms, "arm_sets": s.arm_sets,
                          "synthetic_sets": {k: v.describe() for k, v in s.sets.items()},
                          "replicate_draws": len(s.replicates), "summary": self.summary(ev, s)}
                         for s in settings],
            "provenance": {**(self.store.invocation or {}), "cpu_flags": cpu_flags(), "reused_stages": self.store.reused_summary(),
                           "reused_generators": [s.generator["run"] for s in settings if s.generator.get("reused")],
                           "replicates": noise_sources(self.b, self.config)},
            "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
            "classifiers_trained_this_run": self.trained_classifiers,
            "total_s": round(time.time() - started, 1),
        }
        if self.main:
            write_report(report, self.out, full, settings)
        self.barrier()
        return report


def per_class_range(train: ImageSet, targets: Targets) -> list[int] | None:
    """[fewest, most] real training images of a class (over the classes the setting has); None for attribute targets."""
    if targets.kind != "class":
        return None
    counts = np.bincount(train.labels, minlength=train.num_classes)
    counts = counts[counts > 0]
    return [int(counts.min()), int(counts.max())] if len(counts) else None


@contextlib.contextmanager
def closing_on_error(bench: Benchmark):
    """``bench.close()`` when the block ends; an error or an interrupt stops its workers at once."""
    try:
        yield bench
    except BaseException:
        bench.close(abort=True)
        raise
    bench.close()


def check_held_out(syn: SyntheticSet, ev: Evaluator, folder: Path) -> None:
    """The leakage guard: a synthetic set must not hold a real validation or test image (which would put the
    images the classifiers are scored on into their training data)."""
    import hashlib

    def digest(image: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()

    held_out = {digest(im) for split in (ev.val, ev.test) for im in split.images}
    leaked = sum(digest(im) in held_out for im in syn.images)
    if leaked:
        raise SynthaugError(f"The synthetic set in {folder} holds {leaked} real validation or test images, which would leak "
                            "the images classifiers are scored on into their training data; delete that folder and check "
                            "what wrote it.")


def worth_real(setting: ShotsSetting, arm_name: str) -> dict | None:
    """How many real images per class an arm is worth: its test accuracy placed on the curve of real + classic
    augmentation at 1x, 2x and 4x the real images per class (interpolated in log images), with the interval
    from the arm's 95% interval. None when the setting has no larger real subsets (e.g. all real images)."""
    arms = setting.arms
    points = [(len(setting.train), arms[CLASSIC]["top1"]["mean"])]
    for m, larger in sorted(setting.more_real.items()):
        name = next(n for n in arms if n.startswith(f"real + classic aug, {m}x real"))
        points.append((len(larger), arms[name]["top1"]["mean"]))
    if len(points) < 2:
        return None
    classes = max(1, len(setting.train) // max(1, setting.shots))
    xs = np.log([n / classes for n, _ in points])
    ys = np.array([acc for _, acc in points])
    order = np.argsort(ys, kind="stable")  # interpolate on the accuracy axis; the curve is read where it rises

    def place(acc: float) -> tuple[float, str]:
        if acc <= ys.min():
            return float(np.exp(xs[np.argmin(ys)])), "at most"
        if acc >= ys.max():
            return float(np.exp(xs[np.argmax(ys)])), "at least"
        return float(np.exp(np.interp(acc, ys[order], xs[order]))), "about"

    t = arms[arm_name]["top1"]
    value, how = place(t["mean"])
    low, high = place(t["mean"] - t["ci95"])[0], place(t["mean"] + t["ci95"])[0]
    return {"per_class": value, "how": how, "ci95": [low, high], "real_per_class": setting.shots,
            "curve": [{"per_class": n / classes, "top1": acc} for n, acc in points]}


def interval_text(gain: dict) -> str:
    """A gain's decisive interval in words: which of the two 95% intervals it is (see :func:`decisive_interval`)."""
    d = gain["decisive"]
    where = "over seeds" if d["from"] == "seeds" else "over the evaluation images (paired bootstrap)"
    return f"95% interval {100 * d['low']:+.1f} to {100 * d['high']:+.1f}, the wider one, {where}"


def verdict(headline: str, base: str, gain: dict, mde: float, versus_aug: dict | None = None, chosen: bool = True,
            validation: dict | None = None) -> str:
    """The plain answer for one setting, resting on the wider of the seed and test-image intervals (``gain``:
    :meth:`Benchmark.gain`). ``versus_aug``: the headline's gain over real + classic aug (the same training without the
    synthetic images), which a win over a real-only baseline must not hide; ``chosen``: whether validation chose the
    synthetic method at all (``validation``: its validation gain over real + classic aug)."""
    points, d = 100 * gain["mean"], gain["decisive"]
    if not chosen:
        why = (f" (the best candidate gained {100 * validation['mean']:+.1f} points on validation, "
               f"{interval_text(validation)})") if validation else ""
        return (f"Nothing chosen: no synthetic method's validation gain over {CLASSIC} was larger than its uncertainty"
                f"{why}. For information, {headline} vs {base} on test: {points:+.1f} points ({interval_text(gain)}).")
    if d["helps"]:
        if base != CLASSIC and versus_aug is not None and not versus_aug["decisive"]["helps"]:
            return (f"Not shown to help beyond classic augmentation: {headline} beats {base} by {points:+.1f} points "
                    f"({interval_text(gain)}), but against {CLASSIC} (the same training without the synthetic images) "
                    f"it is {100 * versus_aug['mean']:+.1f} points ({interval_text(versus_aug)}).")
        return f"Worth running: {headline} beats {base} by {points:+.1f} points ({interval_text(gain)})."
    if d["hurts"]:
        return f"Not worth running: {headline} is worse than {base} by {-points:.1f} points ({interval_text(gain)})."
    return (f"Not shown to help: {headline} vs {base} is {points:+.1f} points ({interval_text(gain)}); with these seeds only "
            f"a gain of about {100 * mde:.1f} points would be detected reliably (80% power).")


def check_benchmark_folders(recipe: Recipe, out: str | Path | None = None) -> None:
    """Refuse, before any work, a run folder (``recipe.run_dir``) or report folder (``out``) that cannot be made:
    :func:`run_benchmark` checks them first (the command line too, before it prints the recipe, so that the mistake
    is all it prints)."""
    from synthaug.files import check_output_path

    check_output_path(recipe.run_path, "run_dir")
    check_output_path(Path(out).expanduser() if out else recipe.run_path / "benchmark", "out")


def run_benchmark(recipe: Recipe, out: str | Path | None = None, device: str | None = None, command: str | None = None,
                  fresh: bool = False) -> dict:
    """Run the whole benchmark of ``recipe`` and write its report into ``out``.

    Args:
        recipe: the resolved recipe (its ``[benchmark]`` section says what to measure); its ``run_dir`` and ``out``
            are checked first (:func:`check_benchmark_folders`).
        out: the report folder (default: ``<run folder>/benchmark``); its ``stages/`` keep every finished stage.
        device: torch device (default: a GPU when there is one).
        command: the command line to print in the report (default: this process's).
        fresh: forget the finished stages and retrain the generators.

    Returns:
        The report (also written to ``out/report.json``, with ``report.md`` and plots).
    """
    started = time.time()
    check_benchmark_folders(recipe, out)
    command = command or " ".join(shlex.quote(a) for a in ["synthaug", *sys.argv[1:]])
    bench = Benchmark(recipe, Path(out).expanduser() if out else recipe.run_path / "benchmark", default_device(device), fresh,
                      command)
    bench.check()
    with bench.lock(), closing_on_error(bench):
        ev = bench.load_real()                                                                 # 1. real data, judge
        settings = [bench.prepare_setting(ev, shots) for shots in recipe.benchmark.shots_per_class]  # 2. generators
        for setting in settings:
            bench.choose(ev, setting)                                                          # 3. choices on validation
            bench.score(ev, setting)                                                           # 4. arms on test
        return bench.report(ev, settings, started)                                             # 5. report


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
