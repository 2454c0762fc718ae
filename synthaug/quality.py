"""Generator quality: FID/KID against real images next to their real-vs-real floors, conditioning
accuracy judged by a classifier trained on real images, and MTCNN face detection for faces.

Inception features of real images are cached per dataset, split, resolution and weights.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import torch

from synthaug import progress
from synthaug.cache import cache_file_is_intact, cache_root, write_cache_file

log = logging.getLogger(__name__)


def features(images, weights: Path | None, device: torch.device, cache: bool = False) -> np.ndarray:
    """(N, 2048) Inception pool features of (N, H, W, C) uint8 images (an array, or a dataset's memory-mapped row
    view, read piece by piece); cached on disk when ``cache`` (for real images, keyed by their bytes and the
    weights file). A cached file is used only when it matches the sha256 recorded beside it; a damaged one is
    computed and written again."""
    from synthaug.images import as_tensor, chunks_of
    from synthaug.weights.fid_inception import FEATURE_DIM, inception_features

    path = None
    if cache:
        digest = hashlib.sha256()
        for chunk in chunks_of(images, 4096):
            digest.update(np.ascontiguousarray(chunk).tobytes())
        digest.update(str(tuple(images.shape)).encode() + str(weights).encode())
        path = cache_root() / "features" / f"inception-{digest.hexdigest()[:24]}.npy"
        intact = cache_file_is_intact(path)
        if intact:
            try:
                cached = np.load(path)
                if cached.shape == (len(images), FEATURE_DIM) and np.isfinite(cached).all():
                    return cached
            except (OSError, ValueError):
                pass
            intact = False
        if intact is False:
            log.warning("The feature cache %s is damaged (it does not match %s.sha256); computing the features again.",
                        path, path.name)
    parts = []
    # a line at start and end (and at the usual interval) for big sets: thousands of images at 299 px take minutes on
    # a CPU, which the benchmark's quality stage otherwise spends in silence
    with progress.task(f"Inception features of {len(images):,} images", total=len(images),
                       transient=len(images) < 1024) as bar:
        for chunk in chunks_of(images, 256):
            parts.append(np.asarray(inception_features(as_tensor(chunk), weights, device), dtype=np.float64))
            bar.advance(len(chunk))
    out = np.concatenate(parts) if parts else np.zeros((0, FEATURE_DIM))
    if path is not None:
        buffer = io.BytesIO()
        np.save(buffer, out)
        write_cache_file(path, buffer.getvalue())  # warns and carries on where the cache is not writable
    return out


def subsample(x: np.ndarray, n: int, *seed_parts: object) -> np.ndarray:
    """``n`` rows of ``x`` (in their order), drawn with a generator seeded by ``derive_seed(*seed_parts)``."""
    from synthaug.seeds import numpy_rng

    return x[np.sort(numpy_rng(*seed_parts).permutation(len(x))[:n])]


def fid_kid_with_floor(synthetic: np.ndarray, real_train: np.ndarray, real_test: np.ndarray, weights: Path | None,
                       device: torch.device, max_images: int, kid_subset_size: int, seed: int = 0) -> dict:
    """FID and KID of synthetic vs real test images, and the floor: real train vs real test at the same n, each
    with its 95% jackknife interval (:func:`synthaug.fid.fid_kid`).

    Both comparisons use n = min(#synthetic, #train, #test, max_images) images per side, drawn with a
    fixed seed, because FID is biased at small n and only the floor at the same n says how far from
    "real" a number is. Only those n images per side go through Inception; real features are cached.
    (The benchmark's ``Evaluator.quality`` does the same on features it also needs for the memorization audit.)
    """
    from synthaug.fid import fid_kid

    n = int(min(len(synthetic), len(real_train), len(real_test), max_images))
    syn = features(subsample(synthetic, n, "quality", seed, "synthetic"), weights, device)
    train = features(subsample(real_train, n, "quality", seed, "train"), weights, device, cache=True)
    test = features(subsample(real_test, n, "quality", seed, "test"), weights, device, cache=True)
    subset = min(kid_subset_size, n)
    main, floor = fid_kid(test, syn, subset, seed), fid_kid(test, train, subset, seed)
    return {"n": n, **main, **{f"floor_{k}": v for k, v in floor.items()}, "kid_subset_size": subset}


def conditioning_accuracy(pred: np.ndarray, intended: np.ndarray, levels: list[int], names: list[list[str]] | list[str]) -> dict:
    """How often the judge sees the condition that was asked for.

    Args:
        pred: (N, A) the judge's predicted level per head.
        intended: (N, A) the requested level per head; a value equal to ``levels[a]`` (the null
            level) means that head was not specified and is not scored.
        levels: levels per head.
        names: per head, the name of each level (a class name list for a single head).

    Returns:
        {"accuracy": over every specified head of every image, "per_head": ..., "per_level": {head: {level name: acc}}}
    """
    pred, intended = np.asarray(pred).reshape(len(pred), -1), np.asarray(intended).reshape(len(intended), -1)
    correct = total = 0
    per_head, per_level = [], []
    for a, n in enumerate(levels):
        asked = intended[:, a] < n
        hits = pred[asked, a] == intended[asked, a]
        correct, total = correct + int(hits.sum()), total + int(asked.sum())
        per_head.append(float(hits.mean()) if len(hits) else None)
        level_names = names[a] if isinstance(names[0], (list, tuple)) else names
        per_level.append({
            str(level_names[v]): float((pred[intended[:, a] == v, a] == v).mean())
            for v in range(n) if np.any(intended[:, a] == v)
        })
    return {"accuracy": correct / total if total else None, "per_head": per_head, "per_level": per_level}


def face_detection(images: np.ndarray, device: torch.device, threshold: float = 0.9, batch_size: int = 64) -> dict:
    """MTCNN (facenet-pytorch, weights shipped in the package): the share of images with a face of
    confidence >= ``threshold``, and the mean confidence of the best face (0 where none is found)."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError:
        from synthaug.errors import SynthaugError

        raise SynthaugError("Face metrics need facenet-pytorch; install it with pip install --no-deps facenet-pytorch==2.5.3.") from None
    from PIL import Image

    if not len(images):  # a mean over no images would be NaN in the report
        raise ValueError("face_detection needs at least one image")
    mtcnn = MTCNN(keep_all=False, device=device)
    scores = []
    with progress.task(f"MTCNN on {len(images):,} images", total=len(images), transient=len(images) < 1024) as bar:
        for start in range(0, len(images), batch_size):
            batch = [Image.fromarray(im[..., 0] if im.shape[2] == 1 else im).convert("RGB") for im in images[start : start + batch_size]]
            if batch[0].size[0] < 64:  # MTCNN's smallest face is 20 px; upscale small images
                batch = [im.resize((160, 160), Image.Resampling.BICUBIC) for im in batch]
            _, probs = mtcnn.detect(batch)
            for p in probs:
                value = None if p is None else np.asarray(p, dtype=object).reshape(-1)[0]
                scores.append(0.0 if value is None else float(value))  # detect() returns object arrays under numpy 2
            bar.advance(len(batch))
    scores = np.array(scores, dtype=np.float64)
    return {"n": int(len(scores)), "threshold": threshold, "detection_rate": float((scores >= threshold).mean()),
            "mean_confidence": float(scores.mean())}
