"""Synthesis: a trained run + what to draw -> a synthetic set on disk (WebDataset shards + manifest).

Three parts, used in this order by :func:`generate_shards`:

- :func:`plan_generation`: every image to draw (a :class:`Slot`), in a fixed order (round-robin over
  conditions), each with its own seed (and, for real-guided variations, its real source image and
  strength), cut into shards of ``images_per_shard``; and the settings that determine it.
- :class:`OutputFolder`: the folder's lock, its ``generation.json``, which shards are already complete,
  and the manifest written last.
- :class:`ShardWriter`: encodes, writes and fsyncs shard k on a thread while the network samples k+1.

Under ``accelerate launch`` process r writes shards r, r + W, r + 2W, ... Re-running the same command
skips finished shards and redoes a partial one, so no image is lost or written twice.

With ``min_confidence`` a slot keeps the first of its candidates (seed, then further seeds derived from
it) that the run's filter classifier (:mod:`synthaug.filtering`) is confident about, drawing at most
``max_draws``; each slot is decided on its own, so shards stay independent, exact and resumable.
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

import numpy as np

from synthaug import progress
from synthaug.version import __version__
from synthaug.errors import SynthaugError
from synthaug.files import check_output_path, exclusive_lock, remove_stale_temporaries, sha256_file, write_text_atomic
from synthaug.generator import Condition, Generator
from synthaug.generator.pipeline import plan_conditions, split_evenly
from synthaug.recipe import DEFAULT_STRENGTH, STRENGTH_RANGE, SamplingConfig, load_recipe, recipe_files, valid_strength
from synthaug.runs import Run, open_run
from synthaug.seeds import derive_seed, numpy_rng
from synthaug.shards import (
    MANIFEST,
    SETTINGS_FILE,
    SHARD_PATTERN,
    read_settings,
    settings_from_manifest,
    describe_shard,
    encode_png,
    encode_sample,
    read_shard,
    shard_name,
    write_manifest,
    write_shard,
)
from synthaug.words import count

log = logging.getLogger(__name__)


MAX_IMAGES = 5_000_000  # one generation's plan is held in memory (about 200 bytes an image): at most 1 GB of plan


@dataclass(frozen=True)
class GenerateRequest:
    """What to draw: class names (or ``all_classes``), NABirds-style species, or attribute conditions,
    with ``num`` images in all (split evenly) or ``per_class`` images per condition.

    Its error sentences name the arguments of :func:`write_shards` (``strength`` for ``strengths``).
    """

    classes: tuple[str, ...] = ()
    species: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    all_classes: bool = False
    num: int = 0
    per_class: int = 0
    counts: tuple[int, ...] = ()  # or one count per condition, in order (library use)
    from_real: bool = False  # real-guided variations (SDEdit) of the run's own real training images
    strengths: tuple[float, ...] = (DEFAULT_STRENGTH,)  # from_real: the share of the noise schedule each source is noised to
    min_confidence: float = 0.0  # keep an image only when the filter classifier's probability is at least this
    max_draws: int = 8  # with min_confidence: candidates drawn at most per image

    def __post_init__(self):
        asked = sum(bool(x) for x in (self.classes, self.species, self.attributes, self.all_classes))
        if asked != 1:
            raise SynthaugError("Say what to draw with exactly one of {classes}, {species}, {attributes} or {all_classes}.",
                                arguments=("classes", "species", "attributes", "all_classes"))
        if self.num < 0 or self.per_class < 0 or any(c < 0 for c in self.counts):
            raise SynthaugError("{num} and {per_class} must be positive.", arguments=("num", "per_class"))
        if max(self.num, self.per_class, *self.counts, 0) > MAX_IMAGES:
            raise SynthaugError(f"{{num}} and {{per_class}} may ask for at most {MAX_IMAGES:,} images; draw a larger set as "
                                "several sets into separate {out} folders (with different {seed} values).",
                                arguments=("num", "per_class", "out", "seed"))
        if sum(bool(x) for x in (self.num, self.per_class, self.counts)) != 1 or (self.counts and not any(self.counts)):
            raise SynthaugError("Say how many images with exactly one of {num} N or {per_class} N (a positive number).",
                                arguments=("num", "per_class"))
        if not self.strengths or not all(map(valid_strength, self.strengths)):
            raise SynthaugError(f"{{strength}} must lie in {STRENGTH_RANGE}, e.g. 0.5 or 0.3,0.6 for a mix.", arguments=("strength",))
        if not 0 <= self.min_confidence < 1:
            raise SynthaugError("{min_confidence} must lie in [0, 1), e.g. 0.9.", arguments=("min_confidence",))
        if not 1 <= self.max_draws <= 1000:
            raise SynthaugError("{max_draws} must be at least 1 and at most 1,000.", arguments=("max_draws",))

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
                "kimg": info.get("kimg") if gen.kimg is None else gen.kimg,  # the weights' own record, as read with them
                "weights_sha256": gen.weights_sha256 or gen.run.weights_sha256(), "dataset": gen.schema.dataset}
    if "text" in info:  # a text backend: its base model / text encoder sha256, prompt template and prompts
        identity["text"] = info["text"]
    return identity


# -- 1. the plan -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    """One planned image: its condition, its index within the condition (its key), its seed, and for a
    real-guided variation the row of its real source image and the strength."""

    condition: Condition
    index: int
    seed: int
    source: int = -1  # row in the run's real training split, or -1 (drawn from pure noise)
    strength: float = 1.0  # 1: from pure noise

    @property
    def key(self) -> str:
        return self.condition.sample_key(self.index)

    def seed_of(self, draw: int) -> int:
        """Candidate ``draw`` of this slot: its own seed first, then further seeds derived from it (filtering)."""
        return self.seed if draw == 0 else derive_seed(self.seed, "draw", draw)


@dataclass
class GenerationPlan:
    """Every image of a generation in its fixed order, cut into shards.

    ``settings`` is what determines the images (written to ``generation.json``: the same settings
    resume, different ones are refused); ``common`` is the provenance every sample's JSON carries;
    ``sources`` the run's real training images when the images are variations of them.
    """

    slots: list[Slot]
    images_per_shard: int
    settings: dict
    common: dict
    identity: dict
    request: GenerateRequest
    sources: object = None  # ImageSet of the run's real training images (from_real)

    @property
    def num_shards(self) -> int:
        return -(-len(self.slots) // self.images_per_shard)

    def shard(self, k: int) -> list[Slot]:
        return self.slots[k * self.images_per_shard : (k + 1) * self.images_per_shard]

    def keys(self, k: int) -> list[str]:
        return [slot.key for slot in self.shard(k)]


def source_rows(gen: Generator, cond: Condition, sources) -> np.ndarray:
    """The real training images a condition's variations start from: its class, or the images whose attributes
    match every level the condition names."""
    if gen.schema.kind == "class":
        rows = np.flatnonzero(sources.labels == cond.value[0])
    else:
        named = np.array([v < n for v, n in zip(cond.value, gen.schema.attribute_levels)])
        rows = np.flatnonzero((sources.attributes[:, named] == np.array(cond.value)[named]).all(axis=1))
    if not len(rows):
        raise SynthaugError(f"The run's real training images hold no image of {cond.class_name!r} to vary; "
                            "ask for conditions it was trained on, or drop {from_real}.", arguments=("from_real",))
    return rows


def plan_generation(gen: Generator, request: GenerateRequest, sampling: SamplingConfig) -> GenerationPlan:
    """The plan of drawing ``request`` from ``gen`` with ``sampling``.

    Variations (``from_real``) cycle through each condition's real images in a seeded order: image i uses
    source ``order[i % k]`` and strength ``strengths[(i + i // k) % len(strengths)]``, so a first pass
    varies every source once and later passes give each source the other strengths.
    """
    gen.check_sampling(sampling)
    conditions = resolve_conditions(gen, request)
    counts = request.counts_for(len(conditions))
    if sum(counts) > MAX_IMAGES:
        raise SynthaugError(f"{sum(counts):,} images ({len(conditions):,} conditions) are more than one generation plans "
                            f"({MAX_IMAGES:,}); draw a larger set as several sets into separate {{out}} folders (with "
                            "different {seed} values).", arguments=("out", "seed"))
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
    plain = plan_conditions(conditions, counts, sampling.seed)
    sources = None
    if request.from_real:
        sources = gen.run.training_images()  # exactly the real images the generator saw (checked)
        orders = {c.key: numpy_rng(sampling.seed, "sources", c.key).permutation(source_rows(gen, c, sources))
                  for c in conditions}
        strengths = list(request.strengths)
        slots = []
        for cond, index, seed in plain:
            order = orders[cond.key]
            slots.append(Slot(cond, index, seed, int(order[index % len(order)]),
                              strengths[(index + index // len(order)) % len(strengths)]))
        settings["from_real"] = {"strengths": strengths, "train_sources_sha256": gen.schema.train_sources_sha256}
    else:
        slots = [Slot(cond, index, seed) for cond, index, seed in plain]
    if request.min_confidence:
        settings["filter"] = {"min_confidence": request.min_confidence, "max_draws": request.max_draws}
    return GenerationPlan(slots, sampling.images_per_shard, settings, common, identity, request, sources)


@dataclass
class DrawnImage:
    """What a slot became: its image, how many candidates it drew, and the filter's confidence (None: no filter)."""

    slot: Slot
    image: np.ndarray
    draws: int = 1
    confidence: float | None = None
    steps_run: int = 0


def draw_slots(gen: Generator, plan: GenerationPlan, slots: list[Slot], sampling: SamplingConfig, confidence=None) -> list[DrawnImage]:
    """The images of ``slots``: each slot's first candidate the filter accepts (every first candidate without a
    filter); slots whose ``max_draws`` candidates are all rejected are left out."""
    request = plan.request
    kept: dict[int, DrawnImage] = {}
    pending = list(range(len(slots)))
    for draw in range(request.max_draws if request.min_confidence else 1):
        if not pending:
            break
        batch = [slots[i] for i in pending]
        conditions, seeds = [s.condition for s in batch], [s.seed_of(draw) for s in batch]
        if plan.sources is not None:
            images, steps_run = gen.vary_conditions(plan.sources.images[[s.source for s in batch]], conditions,
                                                    [s.strength for s in batch], seeds, sampling)
        else:
            images, steps_run = gen.sample_conditions(conditions, seeds, sampling), [sampling.steps] * len(batch)
        scores = confidence(images, np.array([s.condition.value for s in batch])) if confidence else [None] * len(batch)
        for i, image, score, steps in zip(pending, images, scores, steps_run):
            if score is None or score >= request.min_confidence:
                kept[i] = DrawnImage(slots[i], image, draw + 1, None if score is None else float(score), int(steps))
        pending = [i for i in pending if i not in kept]
    return [kept[i] for i in sorted(kept)]


def encode_shard(gen: Generator, plan: GenerationPlan, drawn: list[DrawnImage]) -> list[dict]:
    """The samples of one shard: PNG, class label, and JSON metadata with the image's seed and provenance."""
    samples = []
    for d in drawn:
        cond, slot = d.slot.condition, d.slot
        meta = {**plan.common, "class_name": cond.class_name, "class_id": cond.class_id, "label": cond.label,
                "attributes": cond.attributes, "condition": cond.key, "index": slot.index, "seed": slot.seed_of(d.draws - 1)}
        if plan.sources is not None:
            meta.update(source=plan.sources.sources[slot.source], source_index=slot.source, strength=slot.strength,
                        steps_run=d.steps_run)
        if d.confidence is not None:
            meta.update(confidence=d.confidence, draws=d.draws)
        prompt = gen.prompt(cond)
        if prompt is not None:
            meta["prompt"] = prompt
        samples.append(encode_sample(slot.key, encode_png(d.image), cond.label, meta))
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
        if read_settings(out) is None and (rebuilt := settings_from_manifest(out)) is not None and not overwrite:
            # a damaged or deleted generation.json of a finished set: its manifest recorded the same settings
            log.warning("%s is %s; rebuilt it from %s.", settings_path, "damaged" if settings_path.exists() else "missing",
                        out / MANIFEST)
            write_text_atomic(settings_path, json.dumps(rebuilt, indent=1, sort_keys=True) + "\n")
        if settings_path.exists() and not overwrite:
            previous = read_settings(out)
            if previous is None:
                raise SynthaugError(f"{settings_path} is damaged and there is no finished {MANIFEST} to rebuild it from, so "
                                    f"what {out} holds is unknown; pass {{overwrite}} to draw the set again, or use another "
                                    "{out} folder.", arguments=("overwrite", "out"))
            if previous != plan.settings:
                changed = sorted(k for k in set(plan.settings) | set(previous or {}) if (previous or {}).get(k) != plan.settings.get(k))
                raise SynthaugError(
                    f"{out} holds a generation with different settings ({', '.join(changed) or 'unreadable'}); "
                    "use another {out} folder or pass {overwrite} to replace it.", arguments=("out", "overwrite"))
        else:
            others = [p for p in out.iterdir() if p not in ours and p.name != ".lock"]
            if not overwrite and (others or any(p.exists() for p in ours)):
                raise SynthaugError(f"{out} is not empty and holds no synthaug generation; choose an empty {{out}} folder or "
                                    "pass {overwrite}.", arguments=("out", "overwrite"))
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
        filtered = bool(plan.request.min_confidence)
        return [k for k in shards
                if not shard_is_complete(self.path / shard_name(k), plan.keys(k), known.get(shard_name(k)), filtered)]

    def finish(self, plan: GenerationPlan, written: dict[int, dict], rewrite, data: dict, schema: dict,
               filter_info: dict | None = None) -> dict:
        """Check every planned shard (rewriting with ``rewrite(k)`` any that is missing or wrong), then write
        the manifest: the set is complete from this moment."""
        shards = []
        filtered = bool(plan.request.min_confidence)
        for k in range(plan.num_shards):
            path = self.path / shard_name(k)
            info = written.get(k) if path.exists() else None
            if info is None and path.exists():  # written by another process or an earlier run
                info = describe_shard(path)
            if info is None or not planned_keys_held(info["keys"], plan.keys(k), filtered):
                log.warning("Shard %s is missing or does not hold its planned samples; writing it again.", shard_name(k))
                path.unlink(missing_ok=True)
                info = rewrite(k)
            shards.append(info)
        extra = {"synthaug": __version__, "run": plan.identity, "data": data, "schema": schema, "shard_pattern": SHARD_PATTERN}
        if filter_info is not None:
            extra["filter"] = {**filter_info, "per_class": self.filter_counts(plan)}
        return write_manifest(self.path, shards, plan.settings, extra)

    def filter_counts(self, plan: GenerationPlan) -> dict[str, dict]:
        """Per class: images planned, kept, candidates drawn and rejected (a slot that kept none drew ``max_draws``)."""
        counts: dict[str, dict] = {}
        for slot in plan.slots:
            c = counts.setdefault(slot.condition.class_name, {"planned": 0, "kept": 0, "drawn": 0, "rejected": 0})
            c["planned"] += 1
        for k in range(plan.num_shards):
            for sample in read_shard(self.path / shard_name(k)):
                meta = json.loads(sample["json"])
                c = counts[meta["class_name"]]
                c["kept"] += 1
                c["drawn"] += meta["draws"]
        for c in counts.values():
            c["drawn"] += (c["planned"] - c["kept"]) * plan.request.max_draws
            c["rejected"] = c["drawn"] - c["kept"]
        return counts


def planned_keys_held(keys: list[str], planned: list[str], filtered: bool) -> bool:
    """A shard holds exactly its planned samples, in order (a filtered one: those of them it kept, in order)."""
    if not filtered:
        return keys == planned
    held = set(keys)
    return [k for k in planned if k in held] == keys


def shard_is_complete(path: Path, keys: list[str], sha256: str | None, filtered: bool = False) -> bool:
    """A finished shard can be kept: it matches the manifest's sha256, or (no manifest yet) it holds
    exactly its planned samples (filtered: a subset of them) and every PNG decodes."""
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
        return planned_keys_held([x["__key__"] for x in samples], keys, filtered)
    except Exception:  # any damage means the shard is written again
        return False


# -- 3. the writer -----------------------------------------------------------------------------

@dataclass
class ShardWriter:
    """Writes shards on one background thread, so the network samples shard k+1 while shard k is encoded,
    written and fsynced. A write error surfaces before the next shard is handed over, and nothing is left
    queued when the writer closes. ``written`` describes every shard this process wrote."""

    folder: Path
    encode: object  # drawn images -> samples
    bar: progress.Task
    written: dict[int, dict] = field(default_factory=dict)

    def __post_init__(self):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthaug-shards")
        self._pending: tuple[int, int, Future] | None = None

    def write(self, k: int, drawn: list[DrawnImage]) -> dict:
        """Encode and write shard ``k`` now, on this thread."""
        samples = self.encode(drawn)
        self.written[k] = write_shard(self.folder, k, samples, [d.slot.condition.class_name for d in drawn])
        return self.written[k]

    def submit(self, k: int, drawn: list[DrawnImage], planned: int) -> None:
        self._wait()
        self._pending = (k, planned, self._pool.submit(self.write, k, drawn))

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
    run: str | Path | Run | Generator,
    request: GenerateRequest,
    out: str | Path,
    sampling: SamplingConfig | None = None,
    overwrite: bool = False,
    device: str | None = None,
    filter_config=None,
) -> dict:
    """Draw the requested images from a trained run and write them as shards with a manifest.

    Before anything is loaded or written, ``out`` is checked: a folder that can be made, and neither the run folder
    nor inside the dataset the run was trained on.

    Args:
        run: a trained run folder (or an opened :class:`~synthaug.runs.Run`), or a loaded
            :class:`~synthaug.generator.Generator`.
        request: what to draw and how many (and how: plain, real-guided variations, confidence-filtered).
        out: the output folder (created); re-running the same call resumes it.
        sampling: sampler settings (default: the run's recipe's [sampling] section).
        overwrite: replace a different generation already in ``out``.
        device: torch device (default: a GPU when there is one).
        filter_config: the :class:`~synthaug.classifier.ClassifierConfig` of the filter classifier
            (default: the run's recipe's [benchmark] classifier, trained for ``judge_steps``).

    Returns:
        The manifest, as written to ``out/manifest.json``. With a filter it lists per class how many images
        were planned, kept, drawn and rejected.
    """
    from synthaug.device import process_state

    check_output_path(Path(out), "out")
    opened = run.run if isinstance(run, Generator) else open_run(run)
    check_out_apart(Path(out), opened)
    state = process_state()
    gen = run if isinstance(run, Generator) else Generator.load(opened, device=device or state.device)
    sampling = sampling or gen.sampling
    plan = plan_generation(gen, request, sampling)
    folder = OutputFolder(out)
    if request.min_confidence:
        from synthaug.filtering import default_filter_config, filter_key, load_filter

        filter_config = filter_config or default_filter_config(gen.run)  # gen.run: its recipe and schema are read once
        plan.settings["filter"]["classifier_key"] = filter_key(gen.run, filter_config)  # which filter judges is a setting

    with folder.lock(state.is_main_process):
        if state.is_main_process:
            folder.prepare(plan, overwrite)
        state.wait_for_everyone()
        confidence, filter_info = None, None
        if request.min_confidence:  # the main process trains the run's filter classifier once; the others read it
            if not state.is_main_process:
                state.wait_for_everyone()
            screen = load_filter(gen.run, filter_config, gen.device)
            if state.is_main_process:
                state.wait_for_everyone()
            confidence, filter_info = screen.confidence, {**plan.settings["filter"], "classifier": screen.info}
        mine = [k for k in range(plan.num_shards) if k % state.num_processes == state.process_index]
        todo = folder.unfinished(plan, mine)
        if len(todo) < len(mine):
            log.info("Resuming: %d of %d shards are already complete.", len(mine) - len(todo), len(mine))

        def draw(k: int) -> list[DrawnImage]:
            return draw_slots(gen, plan, plan.shard(k), sampling, confidence)

        with progress.task(f"generating {count(len(plan.slots), 'image')}", total=len(plan.slots)) as bar:
            bar.resume(sum(len(plan.shard(k)) for k in mine if k not in todo))
            with ShardWriter(folder.path, lambda drawn: encode_shard(gen, plan, drawn), bar) as writer:
                for k in todo:
                    writer.submit(k, draw(k), len(plan.shard(k)))
        state.wait_for_everyone()
        manifest = None
        if state.is_main_process:
            data = dataclasses.asdict(gen.run.recipe().data)
            manifest = folder.finish(plan, writer.written, lambda k: writer.write(k, draw(k)), data,
                                     dataclasses.asdict(gen.schema), filter_info)
        state.wait_for_everyone()
    return manifest if manifest is not None else json.loads((folder.path / MANIFEST).read_text())


def write_shards(
    generator: Generator | str | Path | Run | None,
    out: str | Path,
    classes: Sequence[str] | None = None,
    *,
    species: str | None = None,
    attributes: Sequence[str] | None = None,
    all_classes: bool | None = None,
    num: int = 0,
    per_class: int = 0,
    guidance: float | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    images_per_shard: int | None = None,
    from_real: bool = False,
    strength: float | Sequence[float] | None = None,
    min_confidence: float = 0.0,
    max_draws: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Draw images into WebDataset shards with a manifest: the library form of `synthaug generate`, with every
    check it makes. Error sentences name these arguments (the command line prints its flags instead).

    Args:
        generator: a :class:`~synthaug.generator.Generator` or a trained run folder; None: the most recent run
            (under ``$SYNTHAUG_RUNS``, else ./runs) that can draw what is asked for.
        out: the output folder, neither the run folder nor inside the dataset the run was trained on; calling
            again with the same arguments resumes or does nothing.
        classes: class names; or ``species`` (a group such as a NABirds species), or ``attributes``
            ("bangs=3,smiling=5" strings, one condition each).
        all_classes: every class of the run. None: every class when no classes, species or attributes are named;
            False: one of them must be named.
        num, per_class: images in all (split evenly) or per condition; exactly one is given.
        guidance, sampler, steps, seed, batch_size, images_per_shard: override the run's [sampling] settings
            (``batch_size`` changes no image).
        from_real: draw real-guided variations of the run's own real training images (SDEdit) at
            ``strength`` (one value, or several for a mix; default ``DEFAULT_STRENGTH``, 0.5), instead of drawing from pure noise.
        min_confidence: keep only images the run's filter classifier is at least this sure of (0: all),
            drawing at most ``max_draws`` candidates per image (default 8).
        overwrite: replace a different generation already in ``out``.

    Returns:
        The manifest.

    >>> write_shards(Generator.load("runs/digits"), "synthetic/digits", per_class=100)   # doctest: +SKIP
    """
    check_output_path(Path(out), "out")  # before a run is chosen: a folder that cannot be written is the first mistake
    if isinstance(generator, (str, Path)) and Path(generator).exists() and not Path(generator).is_dir():
        raise SynthaugError(f"{{generator}} {generator} is a file, not a run folder; give the folder that synthaug train "
                            "wrote (e.g. runs/digits).", arguments=("generator",))
    if strength is not None and not from_real:
        raise SynthaugError("{strength} only applies to real-guided variations; add {from_real}.",
                            arguments=("strength", "from_real"))
    if max_draws is not None and not min_confidence:
        raise SynthaugError("{max_draws} only applies to confidence filtering; add {min_confidence} P (e.g. 0.5).",
                            arguments=("max_draws", "min_confidence"))
    strengths = (DEFAULT_STRENGTH,) if strength is None else (strength,) if isinstance(strength, (int, float)) else tuple(strength)
    if all_classes is None:
        all_classes = not (classes or species or attributes)
    request = GenerateRequest(classes=tuple(classes or ()), species=(species,) if species else (),
                              attributes=tuple(attributes or ()), all_classes=all_classes, num=num, per_class=per_class,
                              from_real=from_real, strengths=strengths, min_confidence=min_confidence,
                              max_draws=8 if max_draws is None else max_draws)
    if generator is None:
        generator = choose_run(request)
        log.info("Using the run %s.", generator)
    if isinstance(generator, Generator):
        source, defaults = generator, generator.sampling
    else:
        source = open_run(generator)  # opened once: its recipe and condition schema are read once, here and below
        defaults = source.recipe().sampling
    sampling = defaults.replace(guidance=guidance, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size,
                                images_per_shard=images_per_shard)
    return generate_shards(source, request, out, sampling, overwrite=overwrite)


def check_out_apart(out: Path, run: Run) -> None:
    """Refuse an ``out`` that is the run folder itself, or the dataset folder the run was trained on (or a folder
    inside it), where the shards would mix with the run's files or become part of the real dataset."""
    from synthaug.data import parse_spec

    target = out.resolve()
    if target == run.path.resolve():
        raise SynthaugError(f"{{out}} {out} is the run folder itself; choose a folder of its own for the shards (e.g. "
                            f"{out / 'synthetic'}).", arguments=("out",))
    spec = run.recipe().data.spec
    fmt, root = parse_spec(spec)
    if root is None:  # digits: built in, no folder
        return
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        if not (fmt.name == "wds" and root.parent.is_dir()):  # a dataset that is gone (or a hub id) has no folder here
            return
        root = root.parent  # wds: a shard pattern, e.g. /data/shards/train-{000..009}.tar
    if target == root or root in target.parents:
        raise SynthaugError(f"{{out}} {out} is {'' if target == root else 'inside '}{root}, the {fmt.name} dataset the run "
                            "was trained on, where the shards would become part of that dataset; choose a folder outside it.",
                            arguments=("out",))


def choose_run(request: GenerateRequest, root: Path | None = None) -> Path:
    """The most recent trained run that can draw ``request``; the error names a recipe to train."""
    from synthaug.conditions import ConditionSchema
    from synthaug.runs import find_runs

    names = list(request.species or request.classes)
    for run in find_runs(root):
        try:
            schema = ConditionSchema.load(run.condition_file)
        except SynthaugError:  # a damaged run does not stop the search for one that can draw the request
            log.warning("Skipping %s: its condition.json cannot be read.", run.path)
            continue
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
            else "train a recipe whose dataset has it first (synthaug train RECIPE), or pass {generator}")
    raise SynthaugError(f"No trained run can draw {what}; {hint}.", arguments=("generator",))


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
