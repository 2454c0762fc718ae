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
import os
from dataclasses import dataclass, field
from pathlib import Path

from synthaug.errors import SynthaugError
from synthaug.files import lock_held, verify_checksums

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
        from synthaug.recipe import load_recipe

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
        from synthaug.generator.conditions import ConditionSchema

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
        from synthaug.generator.conditions import schema_from_dataset, training_data_changes

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


def runs_root() -> Path:
    """Where runs live by default: $SYNTHAUG_RUNS, else ./runs."""
    return Path(os.environ.get("SYNTHAUG_RUNS", "runs"))


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
