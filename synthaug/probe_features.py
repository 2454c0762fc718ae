"""The linear probe's feature cache: a frozen backbone's features of an image set (the images themselves, or augmented
views of them), extracted once and kept in this process (least recently used dropped first) and on disk under
``cache_root()/probe-features``, shared by every seed, arm and worker process (a waiting lock: one extracts, the
others read).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from synthaug.augmentation import augment
from synthaug.images import Images
from synthaug.seeds import derive_seed

if TYPE_CHECKING:
    from synthaug.classifier import LinearProbe

log = logging.getLogger(__name__)

PROBE_CHUNK = 256  # images per backbone call; augmented views are drawn per chunk, so it is part of the cache key
FEATURE_MEMO_BYTES = 1 << 30  # features kept in this process (least recently used dropped first); the rest on disk


_FEATURES: OrderedDict[str, torch.Tensor] = OrderedDict()


def image_digest(images: Images) -> str:
    """sha256 of a set's uint8 classifier inputs and their shape, read piece by piece, computed once per object."""
    if images.digest is None:
        h = hashlib.sha256()
        for chunk in images.chunks(PROBE_CHUNK):
            h.update(repr(tuple(chunk.shape)).encode())
            h.update(chunk.cpu().numpy().tobytes())
        images.digest = h.hexdigest()
    return images.digest


def _view_spec(views: int, flip: bool, replicate: int = 0) -> dict:
    """Which inputs a feature set holds: the images themselves (views 0), or ``views`` augmented copies of each,
    drawn from a seed per chunk of :data:`PROBE_CHUNK` images and per ``replicate`` (the same for every arm, so arms
    stay paired; a benchmark seed draws its own views unless ``benchmark.probe_views_per_seed`` is false)."""
    if not views:
        return {"views": 0}
    return {"views": views, "flip": flip, "chunk": PROBE_CHUNK} | ({"replicate": replicate} if replicate else {})


def extract_features(probe: LinearProbe, images: Images, views: int = 0, flip: bool = False,
                     replicate: int = 0) -> torch.Tensor:
    """(N, V, D) float32 backbone features of every image (V = 1 without views), one backbone call per chunk and view."""
    from synthaug.weights.timm_imagenet import input_normalization

    device = images.device
    backbone = probe.backbone
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in input_normalization(backbone))
    out = []
    for k, chunk in enumerate(images.chunks(PROBE_CHUNK)):
        x = chunk.float() / 255.0
        g = torch.Generator(device=device).manual_seed(derive_seed("probe-views", *([replicate] if replicate else []), k))
        inputs = [augment(x, g, flip) for _ in range(views)] if views else [x]
        out.append(torch.stack([backbone(((v - mean) / std).contiguous(memory_format=torch.channels_last)).float()
                                for v in inputs], dim=1))
    return torch.cat(out) if out else torch.zeros(0, max(views, 1), backbone.num_features, device=device)


@contextlib.contextmanager
def _waiting_lock(path: Path):
    """An exclusive lock that waits: the benchmark's worker processes take turns on one feature file, so one
    extracts and the others read."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError:  # a cache that cannot be written costs time, not correctness: extract without the lock
        yield
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remember(key: str, features: torch.Tensor) -> torch.Tensor:
    _FEATURES[key] = features
    _FEATURES.move_to_end(key)
    total = sum(f.numel() * f.element_size() for f in _FEATURES.values())
    while len(_FEATURES) > 1 and total > FEATURE_MEMO_BYTES:
        _, dropped = _FEATURES.popitem(last=False)
        total -= dropped.numel() * dropped.element_size()
    return features


def probe_features(probe: LinearProbe, images: Images, views: int = 0, flip: bool = False,
                   cache: bool = True, replicate: int = 0) -> torch.Tensor:
    """(N, V, D) features of ``images`` (see :func:`extract_features`), extracted once per image set.

    A set taken from a larger one (:meth:`Images.take`) uses that set's features, pooled sets their parts'. Others
    are looked up by the sha256 of their pixels, the backbone and the views: in this process, then in
    ``cache_root()/probe-features`` (shared by processes, written atomically with its checksum), else extracted and
    kept in both. ``cache=False`` extracts without keeping (images seen once, such as a filter's candidates).
    """
    if images.origin is not None and cache:
        parent, rows = images.origin
        return probe_features(probe, parent, views, flip, replicate=replicate)[rows.to(images.device)]
    if images.parts is not None and cache:
        return torch.cat([probe_features(probe, part, views, flip, replicate=replicate) for part in images.parts])
    # created outside inference mode so training can use them (predict runs under inference_mode)
    with torch.inference_mode(False), torch.no_grad():
        if not cache:
            return extract_features(probe, images, views, flip, replicate)
        import json
        import timm

        identity = {**probe.spec, **_view_spec(views, flip, replicate), "images": image_digest(images), "timm": timm.__version__}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        if key in _FEATURES:
            _FEATURES.move_to_end(key)
            return _FEATURES[key]
        return _remember(key, _features_on_disk(key, probe, images, views, flip, replicate).to(images.device))


def _features_on_disk(key: str, probe: LinearProbe, images: Images, views: int, flip: bool,
                      replicate: int = 0) -> torch.Tensor:
    from safetensors.torch import load, save

    from synthaug.cache import cache_root, usable_cache_file, write_cache_file

    path = cache_root() / "probe-features" / f"{key}.safetensors"
    with _waiting_lock(path.with_name(f"{key}.lock")):
        if (usable := usable_cache_file(path)) is not None:
            try:
                return load(usable.read_bytes())["features"].clone()
            except (OSError, KeyError, RuntimeError, ValueError) as e:  # a damaged file: extract again
                log.warning("The cached features in %s are unreadable (%s); extracting them again.", usable, e)
        features = extract_features(probe, images, views, flip, replicate)
        write_cache_file(path, save({"features": features.cpu().contiguous()}))
        return features
