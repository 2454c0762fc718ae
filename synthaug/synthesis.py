"""Synthesis: a trained run + what to draw -> a synthetic set on disk (WebDataset shards + manifest).

Three parts, used in this order by :func:`generate_shards`:

- :func:`plan_generation`: every image to draw, in a fixed order (round-robin over conditions), each
  with its own seed, cut into shards of ``images_per_shard``; and the settings that determine it.
- :class:`OutputFolder`: the folder's lock, its ``generation.json``, which shards are already complete,
  and the manifest written last.
- :class:`ShardWriter`: encodes, writes and fsyncs shard k on a thread while the network samples k+1.

Under ``accelerate launch`` process r writes shards r, r + W, r + 2W, ... Re-running the same command
skips finished shards and redoes a partial one, so no image is lost or written twice.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from synthaug import __version__, progress
from synthaug.errors import SynthaugError
from synthaug.files import exclusive_lock, remove_stale_temporaries, sha256_file, write_text_atomic
from synthaug.generator import Condition, Generator
from synthaug.generator.pipeline import plan_conditions, split_evenly
from synthaug.recipe import SamplingConfig, load_recipe, recipe_files
from synthaug.shards import (
    MANIFEST,
    SETTINGS_FILE,
    SHARD_PATTERN,
    describe_shard,
    encode_png,
    encode_sample,
    partial_name,
    read_shard,
    shard_name,
    write_manifest,
    write_shard,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateRequest:
    """What to draw: class names (or ``all_classes``), NABirds-style species, or attribute conditions,
    with ``num`` images in all (split evenly) or ``per_class`` images per condition."""

    classes: tuple[str, ...] = ()
    species: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    all_classes: bool = False
    num: int = 0
    per_class: int = 0
    counts: tuple[int, ...] = ()  # or one count per condition, in order (library use)

    def __post_init__(self):
        asked = sum(bool(x) for x in (self.classes, self.species, self.attributes, self.all_classes))
        if asked != 1:
            raise SynthaugError("Say what to draw with exactly one of --class, --species, --attr or --all-classes.")
        if self.num < 0 or self.per_class < 0 or any(c < 0 for c in self.counts):
            raise SynthaugError("--num and --per-class must be positive.")
        if sum(bool(x) for x in (self.num, self.per_class, self.counts)) != 1 or (self.counts and not any(self.counts)):
            raise SynthaugError("Say how many images with exactly one of --num N or --per-class N (a positive number).")

    def counts_for(self, n_conditions: int) -> list[int]:
        if self.counts:
            if len(self.counts) != n_conditions:
                raise SynthaugError(f"{len(self.counts)} counts were given for {n_conditions} conditions; give one per condition.")
            return list(self.counts)
        return [self.per_class] * n_conditions if self.per_class else split_evenly(self.num, n_conditions)


def resolve_conditions(gen: Generator, request: GenerateRequest) -> list[Condition]:
    if request.all_classes:
        return gen.all_classes()
    if request.attributes:
        return [gen.attribute_condition(a) for a in request.attributes]
    return gen.resolve_classes(list(request.species or request.classes))


def run_identity(gen: Generator) -> dict:
    info = gen.run.info()
    identity = {"path": str(gen.run.path.resolve()), "name": gen.run.name, "id": info.get("id", ""),
                "kimg": info.get("kimg"), "weights_sha256": gen.weights_sha256 or gen.run.weights_sha256(), "dataset": gen.schema.dataset}
    if "text" in info:  # a text backend: its base model / text encoder sha256, prompt template and prompts
        identity["text"] = info["text"]
    return identity


# -- 1. the plan -------------------------------------------------------------------------------

@dataclass
class GenerationPlan:
    """Every image of a generation in its fixed order, as (condition, index, seed), cut into shards.

    ``settings`` is what determines the images (written to ``generation.json``: the same settings
    resume, different ones are refused); ``common`` is the provenance every sample's JSON carries.
    """

    samples: list[tuple[Condition, int, int]]
    images_per_shard: int
    settings: dict
    common: dict
    identity: dict

    @property
    def num_shards(self) -> int:
        return -(-len(self.samples) // self.images_per_shard)

    def shard(self, k: int) -> list[tuple[Condition, int, int]]:
        return self.samples[k * self.images_per_shard : (k + 1) * self.images_per_shard]

    def keys(self, k: int) -> list[str]:
        return [cond.sample_key(index) for cond, index, _ in self.shard(k)]


def plan_generation(gen: Generator, request: GenerateRequest, sampling: SamplingConfig) -> GenerationPlan:
    """The plan of drawing ``request`` from ``gen`` with ``sampling``."""
    conditions = resolve_conditions(gen, request)
    counts = request.counts_for(len(conditions))
    identity = run_identity(gen)
    settings = {
        "run_weights_sha256": identity["weights_sha256"],
        "conditions": [c.key for c in conditions],
        "counts": counts,
        **{k: v for k, v in dataclasses.asdict(sampling).items() if k != "batch_size"},  # batch size cannot change an image
    }
    common = {"sampler": sampling.sampler, "steps": sampling.steps, "guidance": sampling.guidance,
              "network_batch": sampling.network_batch, "run": identity["name"], "run_id": identity["id"],
              "weights_sha256": identity["weights_sha256"], "dataset": gen.schema.dataset, "synthaug": __version__}
    text = identity.get("text", {})
    common.update({k: text[k] for k in ("backend", "base_model_sha256", "text_encoder_sha256") if k in text})
    return GenerationPlan(plan_conditions(conditions, counts, sampling.seed), sampling.images_per_shard, settings, common, identity)


def encode_shard(gen: Generator, plan: GenerationPlan, k: int, images) -> list[dict]:
    """The samples of shard ``k``: PNG, class label, and JSON metadata with the image's seed and provenance."""
    samples = []
    for (cond, index, seed), image in zip(plan.shard(k), images):
        meta = {**plan.common, "class_name": cond.class_name, "class_id": cond.class_id, "label": cond.label,
                "attributes": cond.attributes, "condition": cond.key, "index": index, "seed": seed}
        prompt = gen.prompt(cond)
        if prompt is not None:
            meta["prompt"] = prompt
        samples.append(encode_sample(cond.sample_key(index), encode_png(image), cond.label, meta))
    return samples


# -- 2. the output folder ----------------------------------------------------------------------

class OutputFolder:
    """The folder a generation writes into: ours alone while locked, and complete only once its manifest is."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def lock(self, main_process: bool = True):
        import contextlib

        return exclusive_lock(self.path / ".lock", f"the folder {self.path}") if main_process else contextlib.nullcontext()

    def prepare(self, plan: GenerationPlan, overwrite: bool) -> None:
        """Make the folder ready for ``plan``: new, the same generation resumed, or (with overwrite) cleared of
        our files; then remove what a killed run left (temporaries, partial shards, shards beyond the plan)."""
        out = self.path
        if out.is_dir():
            remove_stale_temporaries(out)  # we hold the lock: temporaries of a killed run can go
        out.mkdir(parents=True, exist_ok=True)
        settings_path = out / SETTINGS_FILE
        ours = [*out.glob("synth-*.tar"), *out.glob(".synth-*.tar.partial"), out / MANIFEST, settings_path]
        if settings_path.exists() and not overwrite:
            try:
                previous = json.loads(settings_path.read_text())
            except json.JSONDecodeError:
                previous = None
            if previous != plan.settings:
                changed = sorted(k for k in set(plan.settings) | set(previous or {}) if (previous or {}).get(k) != plan.settings.get(k))
                raise SynthaugError(
                    f"{out} holds a generation with different settings ({', '.join(changed) or 'unreadable'}); "
                    "use another --out folder or pass --overwrite to replace it."
                )
        else:
            others = [p for p in out.iterdir() if p not in ours and p.name != ".lock"]
            if not overwrite and (others or any(p.exists() for p in ours)):
                raise SynthaugError(f"{out} is not empty and holds no synthaug generation; choose an empty --out folder or pass --overwrite.")
            for p in ours:
                p.unlink(missing_ok=True)
            write_text_atomic(settings_path, json.dumps(plan.settings, indent=1, sort_keys=True) + "\n")
        planned = {shard_name(k) for k in range(plan.num_shards)}
        for stray in out.glob("synth-*.tar"):  # shards beyond the plan (a larger earlier plan, or planted)
            if stray.name not in planned:
                stray.unlink()
        for partial in out.glob(".synth-*.tar.partial"):  # left by a killed writer; its shard is redone
            partial.unlink()

    def previous_checksums(self) -> dict[str, str]:
        """sha256 of each shard in a manifest an earlier run of the same generation wrote, if any."""
        try:
            return {s["name"]: s["sha256"] for s in json.loads((self.path / MANIFEST).read_text())["shards"]}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def unfinished(self, plan: GenerationPlan, shards: list[int]) -> list[int]:
        """The shards of ``shards`` that still have to be written."""
        known = self.previous_checksums()
        return [k for k in shards if not shard_is_complete(self.path / shard_name(k), plan.keys(k), known.get(shard_name(k)))]

    def finish(self, plan: GenerationPlan, written: dict[int, dict], rewrite, data: dict, schema: dict) -> dict:
        """Check every planned shard (rewriting with ``rewrite(k)`` any that is missing or wrong), then write
        the manifest: the set is complete from this moment."""
        shards = []
        for k in range(plan.num_shards):
            path = self.path / shard_name(k)
            info = written.get(k) if path.exists() else None
            if info is None and path.exists():  # written by another process or an earlier run
                info = describe_shard(path)
            if info is None or info["keys"] != plan.keys(k):
                log.warning("Shard %s is missing or does not hold its planned samples; writing it again.", shard_name(k))
                path.unlink(missing_ok=True)
                info = rewrite(k)
            shards.append(info)
        extra = {"synthaug": __version__, "run": plan.identity, "data": data, "schema": schema, "shard_pattern": SHARD_PATTERN}
        return write_manifest(self.path, shards, plan.settings, extra)


def shard_is_complete(path: Path, keys: list[str], sha256: str | None) -> bool:
    """A finished shard can be kept: it matches the manifest's sha256, or (no manifest yet) it holds
    exactly its planned samples and every PNG decodes."""
    if not path.is_file():
        return False
    if sha256 is not None:
        return sha256_file(path) == sha256
    try:
        from PIL import Image

        samples = read_shard(path)
        for sample in samples:
            with Image.open(io.BytesIO(sample["png"])) as im:
                im.load()
        return [x["__key__"] for x in samples] == keys
    except Exception:  # any damage means the shard is written again
        return False


# -- 3. the writer -----------------------------------------------------------------------------

@dataclass
class ShardWriter:
    """Writes shards on one background thread, so the network samples shard k+1 while shard k is encoded,
    written and fsynced. A write error surfaces before the next shard is handed over, and nothing is left
    queued when the writer closes. ``written`` describes every shard this process wrote."""

    folder: Path
    encode: object  # (k, images) -> samples
    bar: progress.Task
    written: dict[int, dict] = field(default_factory=dict)

    def __post_init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthaug-shards")
        self._pending: tuple[int, int, Future] | None = None

    def write(self, k: int, images) -> dict:
        """Encode and write shard ``k`` now, on this thread."""
        samples = self.encode(k, images)
        self.written[k] = write_shard(self.folder, k, samples, [json.loads(s["json"])["class_name"] for s in samples])
        return self.written[k]

    def submit(self, k: int, images) -> None:
        self._wait()
        self._pending = (k, len(images), self._pool.submit(self.write, k, images))

    def _wait(self) -> None:
        if self._pending is not None:
            _, n, future = self._pending
            self._pending = None
            future.result()
            self.bar.advance(n)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        try:
            if kind is None:
                self._wait()
        finally:
            self._pool.shutdown(wait=True)


def generate_shards(
    run: str | Path | Generator,
    request: GenerateRequest,
    out: str | Path,
    sampling: SamplingConfig | None = None,
    overwrite: bool = False,
    device: str | None = None,
) -> dict:
    """Draw the requested images from a trained run and write them as shards with a manifest.

    Args:
        run: a trained run folder, or a loaded :class:`~synthaug.generator.Generator`.
        request: what to draw and how many.
        out: the output folder (created); re-running the same call resumes it.
        sampling: sampler settings (default: the run's recipe's [sampling] section).
        overwrite: replace a different generation already in ``out``.
        device: torch device (default: a GPU when there is one).

    Returns:
        The manifest, as written to ``out/manifest.json``.
    """
    from accelerate import PartialState

    state = PartialState()
    gen = run if isinstance(run, Generator) else Generator.load(run, device=device or state.device)
    plan = plan_generation(gen, request, sampling or gen.sampling)
    folder = OutputFolder(out)

    def sample(k: int):
        part = plan.shard(k)
        return gen.sample_conditions([c for c, _, _ in part], [s for _, _, s in part], sampling or gen.sampling)

    with folder.lock(state.is_main_process):
        if state.is_main_process:
            folder.prepare(plan, overwrite)
        state.wait_for_everyone()
        mine = [k for k in range(plan.num_shards) if k % state.num_processes == state.process_index]
        todo = folder.unfinished(plan, mine)
        if len(todo) < len(mine):
            log.info("Resuming: %d of %d shards are already complete.", len(mine) - len(todo), len(mine))
        with progress.task(f"generating {len(plan.samples)} images", total=len(plan.samples)) as bar:
            bar.advance(sum(len(plan.shard(k)) for k in mine if k not in todo))
            with ShardWriter(folder.path, lambda k, images: encode_shard(gen, plan, k, images), bar) as writer:
                for k in todo:
                    writer.submit(k, sample(k))
        state.wait_for_everyone()
        manifest = None
        if state.is_main_process:
            data = dataclasses.asdict(load_recipe(gen.run.recipe_file).data)
            manifest = folder.finish(plan, writer.written, lambda k: writer.write(k, sample(k)), data,
                                     dataclasses.asdict(gen.schema))
        state.wait_for_everyone()
    return manifest if manifest is not None else json.loads((folder.path / MANIFEST).read_text())


def write_shards(
    generator: Generator | str | Path,
    out: str | Path,
    classes: Sequence[str] | None = None,
    *,
    species: str | None = None,
    attributes: Sequence[str] | None = None,
    num: int = 0,
    per_class: int = 0,
    guidance: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    images_per_shard: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Draw images into WebDataset shards with a manifest: the library form of `synthaug generate`.

    Args:
        generator: a :class:`~synthaug.generator.Generator` or a trained run folder.
        out: the output folder; calling again with the same arguments resumes or does nothing.
        classes: class names (None: every class); or ``species`` (a group such as a NABirds species),
            or ``attributes`` ("bangs=3,smiling=5" strings, one condition each).
        num, per_class: images in all (split evenly) or per condition; exactly one is given.
        guidance, sampler, steps, seed, images_per_shard: override the run's [sampling] settings.
        overwrite: replace a different generation already in ``out``.

    Returns:
        The manifest.

    >>> write_shards(Generator.load("runs/digits"), "synthetic/digits", per_class=100)   # doctest: +SKIP
    """
    gen = generator if isinstance(generator, Generator) else Generator.load(generator)
    request = GenerateRequest(classes=tuple(classes or ()), species=(species,) if species else (),
                              attributes=tuple(attributes or ()),
                              all_classes=not (classes or species or attributes), num=num, per_class=per_class)
    sampling = gen.sampling.replace(guidance=guidance, sampler=sampler, steps=steps, seed=seed, images_per_shard=images_per_shard)
    return generate_shards(gen, request, out, sampling, overwrite=overwrite)


def choose_run(request: GenerateRequest, root: Path | None = None) -> Path:
    """The most recent trained run that can draw ``request``; the error names a recipe to train."""
    from synthaug.generator.conditions import ConditionSchema
    from synthaug.runs import find_runs

    names = list(request.species or request.classes)
    for run in find_runs(root):
        schema = ConditionSchema.load(run.condition_file)
        if request.attributes:
            if schema.kind == "attributes":
                return run.path
            continue
        if schema.kind != "class":
            continue
        try:
            for name in names:
                schema.resolve(name)
        except SynthaugError:
            continue
        return run.path
    what = ", ".join(repr(n) for n in names) if names else ("attribute conditions" if request.attributes else "classes")
    suggestion = recipe_with_classes(names, bool(request.attributes))
    hint = (f"train one first: synthaug train {suggestion}" if suggestion
            else "train a recipe whose dataset has it first (synthaug train RECIPE), or pass --run")
    raise SynthaugError(f"No trained run can draw {what}; {hint}.")


def recipe_with_classes(names: list[str], attributes: bool) -> str | None:
    """A recipe file whose dataset (when present here) has every name, or the attribute recipe."""
    from synthaug.data import read_catalog
    from synthaug.data.lookup import resolve_name

    for path in sorted(recipe_files(), key=lambda p: p.name):
        shown = str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
        try:
            recipe = load_recipe(path)
            if attributes:
                if recipe.generator.condition == "attributes" or recipe.data.spec.startswith("celeba-dialog"):
                    return shown
                continue
            catalog = read_catalog(recipe.data)
            groups = [(g.name, g.members) for g in catalog.groups]
            for name in names:
                resolve_name(name, catalog.class_names, groups)
        except SynthaugError:
            continue
        return shown
    return None
