"""Run folders: what one generator training leaves on disk, and how later stages find it.

    runs/<name>/recipe.toml       the resolved recipe          condition.json  the condition schema
    runs/<name>/model/, ema/      diffusers save_pretrained folders (unet/ or sd-lora's lora/, scheduler/, ...),
                                  snapshot.json (the step of the weights) and checksums.json
    runs/<name>/state/            full training state for exact resume (+ its sha256 in state.json)
    runs/<name>/log.jsonl         loss and images/s            grids/           sample grids
    runs/<name>/run.json          id, progress, processes, whether training finished, the latest grid
    runs/<name>/filter/           the confidence filter classifier (generate --min-confidence), trained once

What ``synthaug benchmark`` adds beside them (training leaves both alone):

    runs/<name>/shots-K/          a run folder as above: the generator trained on the K-shots subset
    runs/<name>/benchmark/        report.json, report.md, plots, grids (or --out)
    runs/<name>/benchmark/stages/ judge/<key>/, synthetic/<key>/ (shard sets), quality/<key>.json (+ .png),
                                  classifiers/<key>.json: every stage keyed by what determines it (reused);
                                  store.json marks the folder as the benchmark's
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from synthaug.version import __version__
from synthaug.conditions import ConditionSchema, training_data_changes
from synthaug.errors import SynthaugError
from synthaug.files import (lock_held, recover_folder, remove_stale_temporaries, sha256_file, verify_checksums,
                            write_text_atomic)
from synthaug.recipe import Recipe, load_recipe, recipe_to_dict, recipe_to_toml, runs_root

# Written into model/ and ema/ with the weights (and covered by their checksums.json): the step they are of.
SNAPSHOT_RECORD = "snapshot.json"


# What training writes, overwrites or (with --fresh) deletes in a run folder, run.json first of all. Anything else
# (a benchmark's shots-K/ runs and benchmark/ report, a user's notes in a run) training leaves alone.
RUN_ENTRIES = {"run.json", "recipe.toml", "condition.json", "log.jsonl", "grids", "model", "ema", "state",
               "model.old", "ema.old", "state.old"}


def benchmark_entry(path: Path) -> bool:
    """What a benchmark (or a killed training) may leave in a run folder before the run's own run.json exists: its
    lock, temporaries, the low-data runs ``shots-K/``, the report folder ``benchmark/``, and with ``--out`` the run
    folder itself the benchmark's stage store (``stages/`` with its marker, ``benchmark.store.MARKER``)."""
    name = path.name
    return (name in (".lock", "benchmark") or (name.startswith(".") and name.endswith(".tmp"))
            or (name.startswith("shots-") and name[6:].isdigit()) or (name == "stages" and (path / "store.json").is_file()))


@dataclass(frozen=True)
class Run:
    """A run folder. One opened by :func:`open_run` reads its recipe and condition schema once, when first asked,
    so that a stage (one generate) works from one view of them; ``Run(path)`` reads them whenever asked."""

    path: Path
    memo: dict | None = field(default=None, compare=False, repr=False)  # what an opened run has read

    @property
    def name(self) -> str:
        return self.path.name

    recipe_file = property(lambda self: self.path / "recipe.toml")
    condition_file = property(lambda self: self.path / "condition.json")
    info_file = property(lambda self: self.path / "run.json")
    state_dir = property(lambda self: self.path / "state")
    model_dir = property(lambda self: self.path / "model")
    ema_dir = property(lambda self: self.path / "ema")
    log_file = property(lambda self: self.path / "log.jsonl")
    grids_dir = property(lambda self: self.path / "grids")
    lock_file = property(lambda self: self.path / ".lock")

    @property
    def trained(self) -> bool:
        """True once EMA weights have been saved (a finished or snapshotted training)."""
        weights = (self.ema_dir / "unet" / "config.json", self.ema_dir / "lora" / "pytorch_lora_weights.safetensors")  # sd-lora: LoRA only
        return any(p.is_file() for p in weights) and self.condition_file.is_file()

    def info(self) -> dict:
        try:
            info = json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def recipe(self):
        """The recipe this run was trained with (its ``recipe.toml``)."""
        if self.memo is not None and "recipe" in self.memo:
            return self.memo["recipe"]
        if not self.recipe_file.is_file():
            raise SynthaugError(f"{self.recipe_file}, the recipe {self.path} was trained with, is missing; copy the recipe "
                                "file it was trained with there (the run's settings are read from it).")
        recipe = load_recipe(self.recipe_file)
        if self.memo is not None:
            self.memo["recipe"] = recipe
        return recipe

    def schema(self):
        """The condition schema of this run's generator (its ``condition.json``)."""
        if self.memo is not None and "schema" in self.memo:
            return self.memo["schema"]
        schema = ConditionSchema.load(self.condition_file)
        if self.memo is not None:
            self.memo["schema"] = schema
        return schema

    def training(self) -> bool:
        """True while a training of this run holds its lock (tested without waiting)."""
        return lock_held(self.lock_file)

    def weights_record(self) -> dict:
        """What ``ema/snapshot.json``, written with the EMA weights, says they are: ``step``, ``nimg`` and ``kimg``;
        {} for weights written before that record existed."""
        try:
            record = json.loads((self.ema_dir / SNAPSHOT_RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def check_consistent(self, record: dict) -> None:
        """Refuse EMA weights (``record``: their :meth:`weights_record`) of another step than run.json records: a
        training that failed between writing the two leaves them so, and a sample's provenance would be wrong."""
        info = self.info()
        if record and "step" in info and record.get("step") != info["step"]:
            raise SynthaugError(
                f"{self.ema_dir} holds the weights of {record.get('kimg', 0):g} kimg but {self.info_file} records "
                f"{info.get('kimg', 0):g} kimg (a training of this run stopped between writing them); run `synthaug train "
                f"{self.recipe_file} --out {self.path}` to make them agree."
            )

    @property
    def latest_grid(self) -> Path | None:
        """The last sample grid training wrote (recorded in run.json), or None."""
        name = self.info().get("grid")
        return self.path / name if name and (self.path / name).is_file() else None

    def check_trainable(self) -> None:
        """Refuse to train into a folder that holds something other than a synthaug run: training deletes
        and overwrites ``model/``, ``ema/``, ``state/``, ``log.jsonl`` and ``grids/``, and writes beside the
        folder's other files. The root and the home folder are never a run folder."""
        where = self.path.resolve()
        if where == Path(where.anchor) or where == home_folder():
            what = "the root folder" if where == Path(where.anchor) else "your home folder"
            raise SynthaugError(f"{self.path} is {what}, and a run needs a folder of its own; choose one such as "
                                f"{self.path / 'runs' / 'NAME'} (--set run_dir=...).")
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise SynthaugError(f"{self.path} is a file, not a run folder; choose a folder for the run (--set run_dir=...).")
        if self.info_file.exists():
            if {"id", "synthaug"} <= set(self.info()):
                return
            raise SynthaugError(f"{self.info_file} is not the run.json synthaug writes (it is damaged, or another tool's), so "
                                f"{self.path} may not be a synthaug run; restore it, or choose another run folder (--set run_dir=...).")
        # our files first in the sentence: they are what training would overwrite
        foreign = sorted((p.name for p in self.path.iterdir() if not benchmark_entry(p)),
                         key=lambda name: (name not in RUN_ENTRIES, name))
        if foreign:
            raise SynthaugError(f"{self.path} is not a synthaug run folder (it holds {', '.join(foreign[:3])}"
                                f"{', ...' if len(foreign) > 3 else ''} but no run.json), and training would overwrite "
                                "what it holds or write beside it; choose an empty or new folder (--set run_dir=...).")

    def training_images(self):
        """The real images this run's generator was trained on, exactly: its recipe's training split, checked
        against what ``condition.json`` records of them, their files, pixels and labels, wherever they are read from (the
        no-leakage guarantee of real-guided variations and of the filter classifier)."""
        from synthaug.data import load_dataset
        from synthaug.conditions import schema_from_dataset, training_data_changes

        schema = self.schema()
        train = load_dataset(self.recipe().data).split("train")
        changes = training_data_changes(schema, schema_from_dataset(train, schema.kind), location=False)
        if changes:
            raise SynthaugError(f"The real training images of {schema.dataset} are no longer the ones {self.path} was trained on: "
                                f"{', and '.join(changes)}, so no real image can be used without leaking; "
                                "restore the dataset, or train the run again.")
        return train

    def weights_sha256(self) -> str:
        """sha256 over the EMA weight files, the identity of the weights a sample came from; checks
        every file of the EMA folder against its recorded sha256 first."""
        import hashlib

        sums = verify_checksums(self.ema_dir)
        weights = {name: digest for name, digest in sums.items() if name.endswith(".safetensors")}
        if not weights:
            raise SynthaugError(f"{self.ema_dir} holds no weights; train the run first (synthaug train).")
        digest = hashlib.sha256()
        for name in sorted(weights):
            digest.update(name.encode())
            digest.update(weights[name].encode())
        return digest.hexdigest()


def home_folder() -> Path | None:
    """The user's home folder, resolved; None where there is none."""
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError, OSError):
        return None


def find_runs(root: Path | None = None) -> list[Run]:
    """Trained runs under ``root``, most recently modified first."""
    root = Path(root or runs_root())
    if not root.is_dir():
        return []
    runs = [Run(p) for p in root.iterdir() if p.is_dir() and Run(p).trained]
    return sorted(runs, key=lambda r: r.info_file.stat().st_mtime if r.info_file.exists() else 0, reverse=True)


def open_run(path: Path | Run) -> Run:
    """A trained run at ``path``, opened (it reads its recipe and condition schema once), or an error that says how
    to make one. The sentences name the argument ``run`` (of :meth:`Generator.load <synthaug.generator.Generator.load>`
    and :func:`~synthaug.synthesis.generate_shards`)."""
    if isinstance(path, Run):
        run = path if path.memo is not None else Run(path.path, memo={})
    else:
        run = Run(Path(path), memo={})
    if run.path.is_file():
        raise SynthaugError(f"{run.path} is a file, not a run folder; pass {{run}} a folder that synthaug train wrote.",
                            arguments=("run",))
    if not run.path.is_dir():
        raise SynthaugError(f"Run folder {run.path} does not exist; train it with `synthaug train RECIPE` or pass {{run}}.",
                            arguments=("run",))
    if not run.trained:
        if not (run.info_file.is_file() or run.recipe_file.is_file()):  # an empty folder, or someone else's
            raise SynthaugError(f"{run.path} is not a synthaug run folder (it has no run.json or recipe.toml); pass {{run}} "
                                "a folder that synthaug train wrote (e.g. runs/digits).", arguments=("run",))
        if run.recipe_file.is_file():  # e.g. its ema/ was deleted: training the same recipe rewrites it from state/
            what = ("ema/ folder" if not run.ema_dir.is_dir() else "condition.json" if not run.condition_file.is_file()
                    else "weights in ema/")
            raise SynthaugError(f"{run.path} holds no usable generator (no {what}); run `synthaug train {run.recipe_file} "
                                f"--out {run.path}` to train it, or to rewrite what is missing from its training state.")
        raise SynthaugError(f"{run.path} holds no trained generator yet; run `synthaug train` for its recipe first.")
    run.recipe()  # its settings: a missing recipe.toml is named as the run's, not taken for a recipe the user gave
    return run


# Keys that may change between a run and its resumption: how long, how often to report, and how each step is
# computed (precision, compilation, and how a device's share of the batch is split into micro-batches: what a GPU
# that ran out of memory is told to lower)
RESUMABLE_CHANGES = {"duration_kimg", "duration_minutes", "log_every_kimg", "snapshot_every_kimg", "grid_every_kimg", "mixed_precision", "compile",
                     "batch_per_device"}



def check_resumable(run: Run, recipe: Recipe) -> None:
    """A run folder may be resumed by the same recipe, give or take how long and how often it reports."""
    old, new = recipe_to_dict(run.recipe()), recipe_to_dict(recipe)
    for section in ("data", "generator"):  # sampling and benchmark settings do not touch training
        a, b = old[section], new[section]
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key) and not (section == "generator" and key in RESUMABLE_CHANGES):
                raise SynthaugError(
                    f"{run.path} was trained with {section}.{key} = {a.get(key)!r}, not {b.get(key)!r}; "
                    "use --fresh to start over, or another run folder (--set run_dir=...)."
                )


def check_same_images(run: Run, schema: ConditionSchema) -> None:
    """A run resumes on the real training images it was trained on (``condition.json`` records them), read from
    the same place: a relative spec read from another folder is another dataset."""
    try:
        old = ConditionSchema.load(run.condition_file) if run.condition_file.is_file() else None
    except SynthaugError:  # damaged: training rewrites it
        old = None
    changes = training_data_changes(old, schema) if old is not None else []
    if changes:
        moved = bool(old.train_location) and old.train_location != schema.train_location
        raise SynthaugError(
            f"{run.path} was trained on other real images than those it would resume on: {', and '.join(changes)}; "
            f"{'train from the folder the run was started in, or restore' if moved else 'restore'} those images, or use "
            "--fresh to start over on these (or another run folder, --set run_dir=...)."
        )


def load_state(run: Run) -> dict | None:
    """The saved training state, after checking its sha256; None when there is none."""
    meta_path, state_path = run.state_dir / "state.json", run.state_dir / "training_state.pt"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        digest = meta["sha256"]
    except (ValueError, KeyError, TypeError):
        raise SynthaugError(f"{meta_path} is damaged (it is not the state record synthaug wrote), so the training state "
                            "cannot be checked; restore it, or start over with --fresh.") from None
    if not state_path.exists() or sha256_file(state_path) != digest:
        raise SynthaugError(
            f"{state_path} is damaged (its sha256 does not match state.json); restore it, or start over with --fresh."
        )
    import torch

    return torch.load(state_path, map_location="cpu", weights_only=True)


def weights_intact(run: Run, step: int) -> bool:
    """True when ``model/`` and ``ema/`` hold weights whose every file matches its recorded sha256, of ``step`` (a
    snapshot that failed after its weights leaves them a step the state and run.json are not at)."""
    try:
        sums = [verify_checksums(folder) for folder in (run.model_dir, run.ema_dir)]
        records = [json.loads((folder / SNAPSHOT_RECORD).read_text()) if SNAPSHOT_RECORD in folder_sums else {}
                   for folder, folder_sums in zip((run.model_dir, run.ema_dir), sums)]
    except (SynthaugError, OSError, ValueError):
        return False
    return (all(any(name.endswith(".safetensors") for name in folder_sums) for folder_sums in sums)
            and all(isinstance(r, dict) and r.get("step", step) == step for r in records))  # no record (older runs): as they are


def check_duration(run: Run, nimg: int, total_nimg: int, g_cfg, seconds: float = 0.0) -> None:
    """A run may be trained longer, never shorter: recipe.toml would record a duration it did not train. A time
    budget overshoots by up to one log interval, so only a budget changed to less than the time trained is refused."""
    old_minutes = load_recipe(run.recipe_file).generator.duration_minutes if run.recipe_file.is_file() else 0.0
    if g_cfg.duration_minutes and seconds > g_cfg.duration_minutes * 60 and old_minutes != g_cfg.duration_minutes:
        raise SynthaugError(
            f"{run.path} has already trained for {seconds / 60:.2f} minutes, more than generator.duration_minutes = "
            f"{g_cfg.duration_minutes:g} asks for; set generator.duration_minutes to {math.ceil(seconds / 60 * 100) / 100:g} "
            "or more to keep or continue it, or start over with --fresh (or use another run folder, --set run_dir=...)."
        )
    if nimg > total_nimg:
        raise SynthaugError(
            f"{run.path} has already trained {nimg / 1000:g} kimg, more than generator.duration_kimg = "
            f"{g_cfg.duration_kimg:g} asks for; set generator.duration_kimg to {nimg / 1000:g} or more to keep or continue "
            "it, or start over with --fresh (or use another run folder, --set run_dir=...)."
        )


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the state we resume from (and a line a kill cut short), so no step is logged twice."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(line + "\n" for line in kept))


@dataclass(frozen=True)
class Resumption:
    """Where a training of a run starts: its saved state (None: from the beginning), the steps and seconds it has
    trained, whether a time budget is used up, and whether it finished and had its state removed."""

    state: dict | None
    steps: int
    seconds: float
    out_of_time: bool
    finished_without_state: bool


def prepare_training(run: Run, recipe: Recipe, schema: ConditionSchema, total_steps: int, fresh: bool, main: bool = True,
                     barrier=lambda: None) -> Resumption:
    """The run folder made ready for training ``recipe`` (under the run's lock): cleared with ``fresh``; what a killed
    run left half-written removed or restored; its state checked and loaded; a resumption checked to be the same
    training (recipe, real images, duration); log lines past the state dropped. ``main``: this process writes (the
    others wait at ``barrier``)."""
    g_cfg = recipe.generator
    if fresh and main:
        for p in (run.state_dir, run.model_dir, run.ema_dir, run.grids_dir, run.log_file, run.info_file, run.condition_file):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    barrier()
    if main:  # we hold the lock: what a killed run left half-written can go
        remove_stale_temporaries(run.path)
        for folder in (run.model_dir, run.ema_dir, run.state_dir):
            recover_folder(folder)  # finish a swap a kill interrupted
    barrier()
    state = load_state(run)
    info = run.info()
    trained_steps = state["step"] if state is not None else int(info.get("step", 0))
    trained_s = float(state.get("train_seconds", 0.0) if state is not None else info.get("train_seconds", 0.0))
    budget_s = g_cfg.duration_minutes * 60
    out_of_time = bool(budget_s) and trained_s >= budget_s  # a time-budgeted run that has used its budget
    if trained_steps:
        check_resumable(run, recipe)  # so the batch size, and images per step, are the run's
        check_same_images(run, schema)
        check_duration(run, trained_steps * g_cfg.batch_size, total_steps * g_cfg.batch_size, g_cfg, trained_s)
    # A run whose state/ is gone but which had snapshotted (run.json counts its steps) is refused rather
    # than resumed from its weights: without the optimizer moments, the EMA's step count and the learning
    # rate schedule it would silently become a different training than its recipe and log describe (a
    # resumed run equals an uninterrupted one, everywhere else), and starting over would overwrite its
    # weights and log. A finished run with intact weights needs no state: there is nothing left to train.
    finished_without_state = (state is None and bool(trained_steps) and bool(info.get("finished"))
                              and (trained_steps == total_steps or out_of_time))
    if state is None and trained_steps and not (finished_without_state and weights_intact(run, trained_steps)):
        raise SynthaugError(
            f"{run.state_dir} is missing, so {run.path} (trained {trained_steps} steps) cannot continue exactly nor "
            "rewrite its weights; restore state/, or start over with --fresh, or train into another run folder "
            "(--set run_dir=...)."
        )
    if main and not finished_without_state:
        # steps logged after the state we start from will be run (and logged) again
        truncate_log(run.log_file, trained_steps if state is not None else 0)
    return Resumption(state, trained_steps, trained_s, out_of_time, finished_without_state)


def record_training(run: Run, recipe: Recipe, schema: ConditionSchema, describe_text=lambda: None) -> None:
    """What a training writes before its first step: run.json (first, so a folder with our files in it always has our
    run.json; ``describe_text()``: a text backend's base model / text encoder sha256 and prompts, computed once), the
    condition schema and the resolved recipe."""
    if not run.info_file.exists():
        from synthaug.provenance import git_state

        info = {"id": uuid.uuid4().hex[:12], "name": recipe.name, "synthaug": __version__, **git_state(), "kimg": 0,
                "finished": False}
        text = describe_text()
        info.update({"text": text} if text else {})
        write_text_atomic(run.info_file, json.dumps(info, indent=1))
    record = run.info()
    if "grid" in record and not recipe.generator.grid_every_kimg:  # this run draws no grids: it names none, not an old one
        del record["grid"]
        write_text_atomic(run.info_file, json.dumps(record, indent=1))
    schema.save(run.condition_file)
    write_text_atomic(run.recipe_file, recipe_to_toml(recipe))
