"""Generate a synthetic set: a trained run folder + what to draw -> WebDataset shards + manifest.

The planned images are cut into shards of ``images_per_shard`` in a fixed order; under
``accelerate launch`` process r writes shards r, r + W, r + 2W, ... Re-running the same command
skips finished shards and redoes a partial one, so no image is lost or written twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from synthaug import __version__, progress
from synthaug.errors import SynthaugError
from synthaug.files import exclusive_lock, remove_stale_temporaries, sha256_file, write_text_atomic
from synthaug.generator import Condition, Generator, plan_conditions, split_evenly
from synthaug.recipe import SamplingConfig, load_recipe
from synthaug.shards import (
    MANIFEST,
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
SETTINGS_FILE = "generation.json"


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


def prepare_folder(out: Path, settings: dict, overwrite: bool) -> None:
    """Make ``out`` ready: new, the same generation resumed, or (with overwrite) cleared of our files."""
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / SETTINGS_FILE
    ours = [*out.glob("synth-*.tar"), *out.glob(".synth-*.tar.partial"), out / MANIFEST, settings_path]
    if settings_path.exists() and not overwrite:
        try:
            previous = json.loads(settings_path.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous != settings:
            changed = sorted(k for k in set(settings) | set(previous or {}) if (previous or {}).get(k) != settings.get(k))
            raise SynthaugError(
                f"{out} holds a generation with different settings ({', '.join(changed) or 'unreadable'}); "
                "use another --out folder or pass --overwrite to replace it."
            )
        return
    others = [p for p in out.iterdir() if p not in ours and p.name != ".lock"]
    if not overwrite and (others or any(p.exists() for p in ours)):
        raise SynthaugError(f"{out} is not empty and holds no synthaug generation; choose an empty --out folder or pass --overwrite.")
    for p in ours:
        p.unlink(missing_ok=True)
    write_text_atomic(settings_path, json.dumps(settings, indent=1, sort_keys=True) + "\n")


def previous_checksums(out: Path) -> dict[str, str]:
    """sha256 of each shard in a manifest an earlier run of the same generation wrote, if any."""
    try:
        return {s["name"]: s["sha256"] for s in json.loads((out / MANIFEST).read_text())["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


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
    out = Path(out)
    gen = run if isinstance(run, Generator) else Generator.load(run, device=device or state.device)
    sampling = sampling or gen.sampling
    conditions = resolve_conditions(gen, request)
    counts = request.counts_for(len(conditions))
    plan = plan_conditions(conditions, counts, sampling.seed)
    n_shards = -(-len(plan) // sampling.images_per_shard)
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

    written: dict[int, dict] = {}  # descriptions of the shards this process wrote (no need to read them back)

    def sample_shard(k: int):
        part = plan[k * sampling.images_per_shard : (k + 1) * sampling.images_per_shard]
        (out / partial_name(k)).unlink(missing_ok=True)
        return part, gen.sample_conditions([c for c, _, _ in part], [s for _, _, s in part], sampling)

    def store_shard(k: int, part, images) -> None:
        samples = []
        for (cond, index, seed), image in zip(part, images):
            meta = {**common, "class_name": cond.class_name, "class_id": cond.class_id, "label": cond.label,
                    "attributes": cond.attributes, "condition": cond.key, "index": index, "seed": seed}
            prompt = gen.prompt(cond)
            if prompt is not None:
                meta["prompt"] = prompt
            samples.append(encode_sample(f"{cond.key}-{index:06d}", encode_png(image), cond.label, meta))
        written[k] = write_shard(out, k, samples, [cond.class_name for cond, _, _ in part])

    def make_shard(k: int) -> None:
        store_shard(k, *sample_shard(k))

    def planned_keys(k: int) -> list[str]:
        return [f"{c.key}-{i:06d}" for c, i, _ in plan[k * sampling.images_per_shard : (k + 1) * sampling.images_per_shard]]

    lock = exclusive_lock(out / ".lock", f"the folder {out}") if state.is_main_process else contextlib.nullcontext()
    with lock:
        if state.is_main_process:
            if out.is_dir():
                remove_stale_temporaries(out)  # we hold the lock: temporaries of a killed run can go
            prepare_folder(out, settings, overwrite)
            for stray in out.glob("synth-*.tar"):  # shards beyond the plan (a larger earlier plan, or planted)
                if stray.name not in {shard_name(k) for k in range(n_shards)}:
                    stray.unlink()
            for partial in out.glob(".synth-*.tar.partial"):  # left by a killed writer; its shard is redone below
                partial.unlink()
        state.wait_for_everyone()
        known = previous_checksums(out)
        mine = [k for k in range(n_shards) if k % state.num_processes == state.process_index]
        todo = [k for k in mine if not shard_is_complete(out / shard_name(k), planned_keys(k), known.get(shard_name(k)))]
        if len(todo) < len(mine):
            log.info("Resuming: %d of %d shards are already complete.", len(mine) - len(todo), len(mine))
        with progress.task(f"generating {len(plan)} images", total=len(plan)) as bar:
            bar.advance(sum(len(planned_keys(k)) for k in mine if k not in todo))
            # The network samples shard k+1 while a thread encodes, writes and fsyncs shard k; a
            # write error surfaces before the next shard is handed over, and nothing is left queued.
            def finish(pending) -> None:
                if pending is not None:
                    k, future = pending
                    future.result()
                    bar.advance(len(planned_keys(k)))

            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthaug-shards") as writer:
                pending = None
                for k in todo:
                    part_images = sample_shard(k)
                    finish(pending)
                    pending = (k, writer.submit(store_shard, k, *part_images))
                finish(pending)
        state.wait_for_everyone()
        manifest = None
        if state.is_main_process:
            shards = []
            for k in range(n_shards):
                path = out / shard_name(k)
                info = written.get(k) if path.exists() else None
                if info is None and path.exists():  # written by another process or an earlier run
                    info = describe_shard(path)
                if info is None or info["keys"] != planned_keys(k):
                    log.warning("Shard %s is missing or does not hold its planned samples; writing it again.", shard_name(k))
                    path.unlink(missing_ok=True)
                    make_shard(k)
                    info = written[k]
                shards.append(info)
            data = dataclasses.asdict(load_recipe(gen.run.recipe_file).data)
            extra = {"synthaug": __version__, "run": identity, "data": data, "schema": dataclasses.asdict(gen.schema),
                     "shard_pattern": SHARD_PATTERN}
            manifest = write_manifest(out, shards, settings, extra)
        state.wait_for_everyone()
    return manifest if manifest is not None else json.loads((out / MANIFEST).read_text())


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
    chosen = dict(guidance=guidance, sampler=sampler, steps=steps, seed=seed, images_per_shard=images_per_shard)
    sampling = dataclasses.replace(gen.sampling, **{k: v for k, v in chosen.items() if v is not None})
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
    from synthaug.recipe import find_recipe

    folders = [Path.cwd() / "recipes", Path(__file__).resolve().parents[2] / "recipes"]
    for path in sorted({p for f in folders if f.is_dir() for p in f.glob("*.toml")}, key=lambda p: p.name):
        try:
            recipe = load_recipe(find_recipe(str(path)))
            if attributes:
                if recipe.generator.condition == "attributes" or recipe.data.spec.startswith("celeba-dialog"):
                    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
                continue
            catalog = read_catalog(recipe.data)
            groups = [(g.name, g.members) for g in catalog.groups]
            for name in names:
                resolve_name(name, catalog.class_names, groups)
        except SynthaugError:
            continue
        return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
    return None
