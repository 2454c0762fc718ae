"""WebDataset shards of synthetic images and their manifest.

A shard is written under a temporary name with the bytes ``webdataset.TarWriter`` writes (fixed
mtime, so they are reproducible; sha256 taken as they are written), fsynced, then renamed to
``synth-%06d.tar``: a shard under its final name is always complete. ``manifest.json``, written
last (and atomically, which fsyncs the folder and so every rename before it), lists every shard
with its sample count and sha256, the totals per class, and the generation settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthaug.errors import SynthaugError
from synthaug.files import check_input_folder, reserve_space, sha256_file, write_text_atomic
from synthaug.words import count

SHARD_PATTERN = "synth-%06d.tar"
MANIFEST = "manifest.json"
SETTINGS_FILE = "generation.json"  # the settings that determine a set's images (written first, checked on resume)
FIXED_MTIME = 1_700_000_000  # 2023-11-14: any constant makes tar headers reproducible
MANIFEST_FORMAT = "synthaug.shards/1"


def sample_key(condition_key: str, index: int) -> str:
    """The WebDataset key of image ``index`` of a condition (dot-free: webdataset splits names at dots).

    >>> sample_key("c3", 17)
    'c3-000017'
    """
    return f"{condition_key}-{index:06d}"

def shard_name(k: int) -> str:
    return SHARD_PATTERN % k


def partial_name(k: int) -> str:
    return f".{shard_name(k)}.partial"


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, C) uint8 image; the same pixels always give the same bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def encode_sample(key: str, png: bytes, label: int, meta: dict) -> dict:
    if "." in key:
        raise ValueError(f"sample key {key!r} contains a dot; webdataset splits names at the first dot")
    return {
        "__key__": key,
        "png": png,
        "cls": str(int(label)).encode(),
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode(),
    }


class _HashingFile(io.RawIOBase):
    """A binary file that hashes and counts what is written through it (put a buffer in front, so it
    hashes large blocks rather than every tar header)."""

    def __init__(self, file):
        self.file, self.sha256, self.size = file, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.size


def write_shard(folder: Path, k: int, samples: list[dict], class_names: list[str] | None = None) -> dict:
    """Write pre-encoded samples as shard ``k``: temporary name, fsync, then rename into place.

    ``webdataset.TarWriter`` writes the tar into a stream that hashes the bytes on their way to disk,
    so the shard is exactly what ``TarWriter(path, encoder=False, mtime=FIXED_MTIME)`` would write
    (a test checks it) and need not be read back. Returns the shard's description (as
    :func:`describe_shard` gives it). ``class_names`` (one per sample) saves reading them back out of
    each sample's JSON.
    """
    import webdataset as wds

    folder = Path(folder)
    final, partial = folder / shard_name(k), folder / partial_name(k)
    try:
        with open(partial, "wb", buffering=0) as f:
            stream = _HashingFile(f)
            with io.BufferedWriter(stream, buffer_size=1 << 20) as buffered:
                with wds.TarWriter(buffered, encoder=False, mtime=FIXED_MTIME) as writer:
                    for sample in samples:
                        writer.write(sample)
                buffered.flush()
                os.fsync(f.fileno())
        os.replace(partial, final)  # the folder itself is fsynced once, when the manifest is written into it
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {
        "name": final.name,
        "count": len(samples),
        "bytes": stream.size,
        "sha256": stream.sha256.hexdigest(),
        "keys": [s["__key__"] for s in samples],
        "per_class": dict(Counter(class_names if class_names is not None else
                                  (json.loads(s["json"])["class_name"] for s in samples))),
    }


def read_shard(path: Path) -> list[dict]:
    """Every sample of one shard as {"__key__", "png", "cls", "json"} with raw bytes (tarfile, no decoding).

    Files are grouped as webdataset groups them: consecutive files with the same key form a sample,
    so a repeated key (or a repeated file within a key) shows up as a second sample.
    """
    samples: list[dict] = []
    with tarfile.open(path, "r:") as tar:  # shards are plain tars (not compressed): one reason when one is not
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = os.path.basename(member.name).partition(".")
            if not samples or samples[-1]["__key__"] != key or ext in samples[-1]:
                samples.append({"__key__": key})
            samples[-1][ext] = tar.extractfile(member).read()
    return samples


def describe_shard(path: Path) -> dict:
    """Name, sample count, bytes and sha256 of a finished shard, with its keys and per-class counts."""
    samples = read_shard(path)
    per_class = Counter(json.loads(s["json"])["class_name"] for s in samples)
    return {
        "name": Path(path).name,
        "count": len(samples),
        "bytes": Path(path).stat().st_size,
        "sha256": sha256_file(path),
        "keys": [s["__key__"] for s in samples],
        "per_class": dict(per_class),
    }


def write_manifest(folder: Path, shards: list[dict], settings: dict, extra: dict) -> dict:
    """Write ``manifest.json`` (atomically): shards, totals per class, settings and provenance."""
    per_class: Counter = Counter()
    for s in shards:
        per_class.update(s["per_class"])
    manifest = {
        "format": MANIFEST_FORMAT,
        **extra,
        "settings": settings,
        "num_samples": sum(s["count"] for s in shards),
        "per_class": dict(sorted(per_class.items())),
        "shards": [{k: s[k] for k in ("name", "count", "bytes", "sha256")} for s in shards],
    }
    write_text_atomic(Path(folder) / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict:
    """The manifest of a finished shard set; anything else is an error that says what the folder is."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise SynthaugError(_why_no_manifest(folder))
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise SynthaugError(f"{path} is not valid JSON; regenerate the set with synthaug generate.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise SynthaugError(f"{path} is not a synthaug manifest ({MANIFEST_FORMAT}); point at a synthaug shard folder.")
    return manifest


def read_settings(folder: Path) -> dict | None:
    """A set's ``generation.json`` (the settings that determine its images), or None when it is missing or damaged
    (not a JSON object naming the conditions and counts)."""
    try:
        settings = json.loads((Path(folder) / SETTINGS_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    ok = isinstance(settings, dict) and isinstance(settings.get("conditions"), list) and isinstance(settings.get("counts"), list)
    return settings if ok else None


def settings_from_manifest(folder: Path) -> dict | None:
    """The generation settings a finished set's manifest recorded (what rebuilds a damaged ``generation.json``)."""
    try:
        settings = json.loads((Path(folder) / MANIFEST).read_text()).get("settings")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return settings if isinstance(settings, dict) and isinstance(settings.get("conditions"), list) else None


def _generate_is_running(folder: Path) -> bool:
    """Whether a synthaug generate process holds the folder's lock right now."""
    import fcntl

    try:
        with open(folder / ".lock", "rb") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
        pass
    return False


def _why_no_manifest(folder: Path) -> str:
    """One sentence for a folder without a manifest: missing, a file, empty, unfinished, or not ours."""
    give = "give a folder written by synthaug generate"
    if not folder.exists():
        return f"{folder} does not exist; {give}."
    if not folder.is_dir():
        return f"{folder} is a file, not a shard folder; {give}."
    path = folder / MANIFEST
    if _generate_is_running(folder):
        return f"{path} is missing because synthaug generate is still writing {folder}; wait for it to finish (only a finished set can be read)."
    if (folder / SETTINGS_FILE).is_file():
        return (f"{path} is missing: the generation in {folder} was interrupted or its manifest was deleted; run the "
                "same synthaug generate command again, which keeps the complete shards and rebuilds the manifest from them.")
    tars = sorted(p.name for p in folder.glob("*.tar"))
    if tars:
        shown = tars[0] + (", ..." if len(tars) > 1 else "")
        return (f"{path} is missing and {folder} holds {len(tars)} tar file{'s' if len(tars) != 1 else ''} ({shown}) "
                f"but no record of a synthaug generation, so it is not a synthaug shard set; {give}, or pass other "
                "WebDataset shards' paths to synthaug.synthetic_dataset.")
    if not any(folder.iterdir()):
        return f"{path} is missing and {folder} is empty; {give}."
    return f"{path} is missing; {folder} is not a synthaug shard set, so {give}."


@dataclass
class SyntheticSet:
    """A finished shard set in memory: images, labels in its generator's label space, and provenance."""

    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64; -1 where a condition has no class
    attributes: np.ndarray | None  # (N, A) levels, the null level where unspecified
    class_names: list[str]
    manifest: dict
    metas: list[dict]


def load_shard_set(folder: Path, check: bool = True) -> SyntheticSet:
    """Read every shard a manifest lists (checking each shard's sha256 first when ``check``).

    A set that fits in the resident budget (``SYNTHAUG_RESIDENT_BYTES``, 256 MiB) is decoded into memory. A larger
    one is streamed from its shards with webdataset, once, into a memory-mapped file in the cache (keyed by the
    shards' sha256), and its images are a row view of that file: memory does not grow with the set.
    """
    from synthaug.images import resident_bytes

    folder = Path(folder)
    manifest = read_manifest(folder)
    schema = manifest["schema"]
    paths = []
    for shard in manifest["shards"]:
        path = folder / shard["name"]
        if not path.is_file():
            raise SynthaugError(f"{path} is missing; run synthaug verify {folder}, then the same generate command again.")
        if check and sha256_file(path) != shard["sha256"]:
            raise SynthaugError(f"{path} is damaged (sha256 differs from the manifest); delete it and run the same generate command again.")
        paths.append(path)
    shape = (schema["resolution"], schema["resolution"], schema["channels"])
    if manifest["num_samples"] * int(np.prod(shape)) > resident_bytes():
        images, labels, metas = _stream_to_memmap(paths, manifest, shape)
    else:
        images, labels, metas = _decode_in_memory(paths, shape)
    attributes = None
    if schema["kind"] == "attributes":
        names, levels = schema["attribute_names"], schema["attribute_levels"]
        attributes = np.array([[(m["attributes"] or {}).get(n, levels[a]) for a, n in enumerate(names)] for m in metas],
                              dtype=np.int64).reshape(len(metas), len(names))
    return SyntheticSet(images, np.array(labels, dtype=np.int64), attributes, list(schema["class_names"]), manifest, metas)


def _png_pixels(data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(data)))
    return image.reshape(shape)


def _decode_in_memory(paths: list[Path], shape) -> tuple[np.ndarray, list[int], list[dict]]:
    images, labels, metas = [], [], []
    for path in paths:
        for sample in read_shard(path):
            images.append(_png_pixels(sample["png"], shape))
            labels.append(int(sample["cls"]))
            metas.append(json.loads(sample["json"]))
    return (np.stack(images) if images else np.zeros((0, *shape), np.uint8)), labels, metas  # a filter may keep none


def _stream_to_memmap(paths: list[Path], manifest: dict, shape) -> tuple[object, list[int], list[dict]]:
    """Decode the shards in order with webdataset into ``cache_root()/decoded/<key>.npy`` (once; a file whose size
    does not match is written again), with the labels and metadata beside it; returns a row view of the file."""
    import webdataset as wds

    from synthaug.cache import cache_root
    from synthaug.data.rows import RowView
    from synthaug.files import write_text_atomic

    key = hashlib.sha256("".join(s["sha256"] for s in manifest["shards"]).encode()).hexdigest()[:24]
    folder = cache_root() / "decoded"
    array_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    n = manifest["num_samples"]
    if meta_path.is_file() and array_path.is_file():
        try:
            side = json.loads(meta_path.read_text())
            images = np.load(array_path, mmap_mode="r")
            if images.shape == (n, *shape) and len(side["labels"]) == n:
                return RowView(images), side["labels"], side["metas"]
        except (OSError, ValueError, KeyError):
            pass
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{key}.npy.partial"
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(n, *shape))
    reserve_space(partial)  # a full disk: an error naming the file, not a SIGBUS at a mapped write
    labels, metas = [], []
    stream = wds.WebDataset([str(p) for p in paths], shardshuffle=False, empty_check=False).to_tuple("png", "cls", "json")
    for i, (png, cls, meta) in enumerate(stream):
        out[i] = _png_pixels(png, shape)
        labels.append(int(cls))
        metas.append(json.loads(meta))
        if i % 4096 == 4095:
            out.flush()
    out.flush()
    del out
    if len(labels) != n:
        partial.unlink(missing_ok=True)
        raise SynthaugError(f"The shards hold {len(labels)} samples where the manifest says {n}; run synthaug verify on the folder.")
    os.replace(partial, array_path)
    write_text_atomic(meta_path, json.dumps({"labels": labels, "metas": metas}))
    return RowView(np.load(array_path, mmap_mode="r")), labels, metas


def map_labels(synthetic_classes: list[str], real_classes: list[str], where: str = "the real dataset",
               present: set[str] | None = None) -> np.ndarray:
    """Index of each synthetic class in the real label space, matched by name (-1 for classes the set
    does not hold). A class the set holds (all of them when ``present`` is None) that the real
    dataset lacks is an error naming it."""
    index = {name: i for i, name in enumerate(real_classes)}
    needed = [c for c in synthetic_classes if present is None or c in present]
    missing = [c for c in needed if c not in index]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise SynthaugError(
            f"The synthetic set's classes {shown} are not classes of {where}; use shards generated from a run trained on that dataset."
        )
    return np.array([index.get(c, -1) for c in synthetic_classes], dtype=np.int64)


def held_classes(syn: SyntheticSet) -> set[str]:
    """The class names a loaded synthetic set actually holds."""
    return {syn.class_names[i] for i in np.unique(syn.labels) if i >= 0}


SHARD_FOLDER = "give a folder written by synthaug generate"  # what to give instead of a folder that is not one


def verify_shards(folder: Path) -> dict:
    """Check a shard set against its manifest and its generation settings.

    Finds missing, extra and partial shards, sha256 or size mismatches, unreadable tars and PNGs,
    samples missing a field, labels that disagree with their metadata, duplicate samples, samples
    missing from the plan, and per-class totals that differ from the manifest.

    Returns:
        {"folder", "shards", "samples", "per_class", "problems": [one sentence each], "ok": bool}
    """
    from PIL import Image

    folder = Path(folder)
    check_input_folder(folder, "folder", SHARD_FOLDER)
    manifest = read_manifest(folder)
    problems: list[str] = []
    listed = {s["name"]: s for s in manifest["shards"]}
    for extra in sorted({p.name for p in folder.glob("synth-*.tar")} - set(listed)):
        problems.append(f"{extra} is not in the manifest (an extra shard).")
    for partial in sorted(folder.glob(".synth-*.partial")):
        problems.append(f"{partial.name} is a partial shard left by an interrupted run.")
    seen: dict[str, str] = {}
    per_class: Counter = Counter()
    total = 0
    for name, entry in listed.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing.")
            continue
        if path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{name} does not match the sha256 in the manifest (damaged or modified).")
        try:
            samples = read_shard(path)
        except (tarfile.TarError, EOFError, OSError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":")  # one line, not tarfile's list
            problems.append(f"{name} cannot be read as a tar file ({reason}).")
            continue
        if len(samples) != entry["count"]:
            problems.append(f"{name} holds {count(len(samples), 'sample')} where the manifest says {entry['count']}.")
        for sample in samples:
            key = sample["__key__"]
            total += 1
            if key in seen:
                problems.append(f"{key} appears twice ({seen[key]} and {name}).")
            seen[key] = name
            missing = [f for f in ("png", "cls", "json") if f not in sample]
            if missing:
                problems.append(f"{key} in {name} lacks its {', '.join(missing)}.")
                continue
            try:
                with Image.open(io.BytesIO(sample["png"])) as im:
                    im.load()
            except Exception:  # PIL raises many types for broken images
                problems.append(f"{key} in {name} has a PNG that cannot be decoded.")
            try:
                meta = json.loads(sample["json"])
                if int(sample["cls"]) != int(meta["label"]):
                    problems.append(f"{key} in {name} has label {int(sample['cls'])} but its metadata says {meta['label']}.")
                per_class[meta["class_name"]] += 1
            except (ValueError, KeyError, TypeError):
                problems.append(f"{key} in {name} has unreadable metadata.")
    expected, filtered = None, False
    settings = read_settings(folder)
    if settings is None:  # damaged or deleted: the manifest's copy is the plan, and generate rebuilds the file from it
        state = "damaged" if (folder / SETTINGS_FILE).exists() else "missing"
        problems.append(f"{SETTINGS_FILE} is {state}; the samples were checked against the settings in {MANIFEST} instead, "
                        f"and running the same synthaug generate command again rebuilds it from {MANIFEST}.")
        settings = settings_from_manifest(folder)
    if settings is not None:
        try:
            expected = {sample_key(c, i) for c, n in zip(settings["conditions"], settings["counts"]) for i in range(n)}
            filtered = "filter" in settings
        except (KeyError, TypeError):
            problems.append(f"The settings in {MANIFEST} are unreadable, so the samples cannot be checked against the plan.")
    if expected is not None:
        absent = sorted(expected - set(seen))
        kept = {name: c["kept"] for name, c in (manifest.get("filter") or {}).get("per_class", {}).items()}
        if filtered and kept:  # a confidence filter rejects planned samples: the manifest says how many it kept
            if kept != {name: per_class.get(name, 0) for name in kept}:
                problems.append("The samples kept per class differ from what the manifest's filter counts say.")
        elif absent:
            problems.append(f"{len(absent)} planned samples are missing (first: {absent[0]}).")
        unplanned = sorted(set(seen) - expected)
        if unplanned:
            problems.append(f"{count(len(unplanned), 'sample')} {'was' if len(unplanned) == 1 else 'were'} not planned (first: {unplanned[0]}).")
    if dict(per_class) != manifest["per_class"] and not any("cannot be read" in p or "is missing" in p for p in problems):
        problems.append("The per-class totals differ from the manifest's.")
    return {"folder": str(folder), "shards": len(listed), "samples": total, "per_class": dict(sorted(per_class.items())),
            "problems": problems, "ok": not problems}
