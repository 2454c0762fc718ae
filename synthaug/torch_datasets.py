"""PyTorch datasets for other training pipelines: stream synthetic shards (split over DataLoader
workers and DDP ranks), mix real with synthetic images, or draw fresh images from a generator.

Every dataset yields ``(image, label)``: ``image`` is ``transform(uint8 tensor (C, H, W))`` (by
default a float tensor in [0, 1]) and ``label`` an int in the real dataset's label space.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from synthaug.errors import SynthaugError
from synthaug.files import sha256_file
from synthaug.seeds import derive_seed, numpy_rng
from synthaug.shards import SyntheticSet, held_classes, load_shard_set, map_labels, read_manifest

Transform = Callable[[torch.Tensor], object]


def to_float(image: torch.Tensor) -> torch.Tensor:
    """The default transform: uint8 (C, H, W) -> float32 in [0, 1]."""
    return image.float().div_(255.0)


def decode_png(data: bytes) -> torch.Tensor:
    """PNG bytes -> uint8 (C, H, W), keeping the channels the PNG has (1 for grayscale)."""
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(data)))
    return torch.from_numpy(a.reshape(*a.shape[:2], -1).copy()).permute(2, 0, 1).contiguous()


def class_names_of(real) -> list[str]:
    """The class names of a real dataset: an ImageSet, a torchvision-style dataset with ``.classes``, or a list."""
    if isinstance(real, (list, tuple)):
        return [str(c) for c in real]
    for attr in ("class_names", "classes"):
        if hasattr(real, attr):
            return [str(c) for c in getattr(real, attr)]
    raise SynthaugError("Give the real dataset's class names (an ImageSet, a dataset with .classes, or a list) to check labels.")


class SyntheticShards(IterableDataset):
    """A synthetic shard set as a stream (see :func:`synthetic_dataset`). Call ``set_epoch(e)`` before
    each epoch to reshuffle, as with ``DistributedSampler``."""

    def __init__(self, urls: list[str], label_map: np.ndarray | None, num_samples: int | None, transform: Transform | None,
                 shuffle: int, seed: int, resampled: bool, epoch_size: int | None):
        super().__init__()
        self.urls, self.label_map, self.num_samples = urls, label_map, num_samples
        self.transform = transform or to_float
        self.shuffle, self.seed, self.resampled, self.epoch_size = shuffle, seed, resampled, epoch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import webdataset as wds

        seed = derive_seed("shards", self.seed, self.epoch)
        urls = list(self.urls)
        if self.shuffle and not self.resampled:
            # one shard order per epoch, the same on every rank, before webdataset splits shards by rank and worker
            urls = [urls[i] for i in numpy_rng("shard order", self.seed, self.epoch).permutation(len(urls))]
        ds = wds.WebDataset(urls, resampled=self.resampled, shardshuffle=False, nodesplitter=wds.split_by_node,
                            workersplitter=wds.split_by_worker, seed=seed, empty_check=False)
        if self.shuffle:
            info = get_worker_info()
            ds = ds.shuffle(self.shuffle, seed=derive_seed("shuffle", self.seed, self.epoch, info.id if info else 0))
        ds = ds.to_tuple("png", "cls")
        if self.resampled:
            info = get_worker_info()
            workers = info.num_workers if info else 1
            ds = ds.with_epoch(math.ceil((self.epoch_size or self.num_samples or 1) / workers))
        for png, cls in ds:
            label = int(cls)
            yield self.transform(decode_png(png)), int(self.label_map[label]) if self.label_map is not None else label


def synthetic_dataset(
    source: str | Path | Sequence[str],
    transform: Transform | None = None,
    shuffle: int = 1000,
    seed: int = 0,
    resampled: bool = False,
    epoch_size: int | None = None,
    real_classes=None,
    verify: bool = True,
) -> SyntheticShards:
    """A torch ``IterableDataset`` of ``(image, label)`` over synthetic shards.

    Shards are split across DDP processes (``webdataset.split_by_node``, using the initialised
    process group or ``RANK``/``WORLD_SIZE``) and across DataLoader workers, so in one epoch every
    image is seen exactly once overall. With ``resampled=True`` each process draws shards with
    replacement forever and each epoch stops after ``epoch_size`` images per process, so all
    processes run equal epochs even when shards do not divide evenly.

    Args:
        source: a folder written by ``synthaug generate`` / :func:`write_shards` (its manifest lists
            the shards), or shard paths / URLs.
        transform: applied to each uint8 (C, H, W) image (default: float in [0, 1]).
        shuffle: sample shuffle buffer (0 keeps shard order).
        seed: seeds the shard order and the buffer; epochs differ through ``set_epoch``.
        resampled: sample shards with replacement (equal epochs across processes).
        epoch_size: images per process per epoch when resampled (default: the set's size).
        real_classes: the real dataset (or its class names) to map labels onto; its class names must
            include every class of the synthetic set.
        verify: check every shard's sha256 against the manifest first (a shard folder only).

    >>> ds = synthetic_dataset("synthetic/digits", shuffle=1000)   # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2)   # doctest: +SKIP
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        manifest = read_manifest(Path(source))
        urls = [str(Path(source) / s["name"]) for s in manifest["shards"]]
        if verify:
            for shard, url in zip(manifest["shards"], urls):
                if not Path(url).is_file() or sha256_file(Path(url)) != shard["sha256"]:
                    raise SynthaugError(f"{url} is missing or damaged (sha256 differs from the manifest); run synthaug verify "
                                        f"{source}, then the same generate command again.")
        names, total = manifest["schema"]["class_names"], manifest["num_samples"]
    else:
        urls, names, total = [str(u) for u in ([source] if isinstance(source, (str, Path)) else source)], None, None
        check_bare_urls(urls)
    label_map = None
    if real_classes is not None:
        if names is None:
            raise SynthaugError("Checking labels needs the shard folder (with its manifest), not bare shard URLs.")
        label_map = map_labels(names, class_names_of(real_classes), present=set(manifest["per_class"]))
    if not urls:
        raise SynthaugError(f"{source} holds no shards; run synthaug generate first.")
    return SyntheticShards(urls, label_map, total, transform, shuffle, seed, resampled, epoch_size)


def check_bare_urls(urls: list[str]) -> None:
    """Refuse local shard paths that are absent or still being written (``.partial``): without a manifest to
    go by, webdataset would read a half-written tar as if it were complete."""
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            continue  # remote or piped sources are the caller's to vouch for
        if url.endswith(".partial"):
            raise SynthaugError(
                f"{url} is a partial shard that synthaug generate is still writing (or left when interrupted); pass the "
                "shard folder instead, so that only the complete shards its manifest lists are read."
            )
        if "{" not in url and not Path(url).is_file():
            raise SynthaugError(f"{url} does not exist; pass a shard folder written by synthaug generate, or existing shard paths.")


class ImagePool(Dataset):
    """A map-style dataset over uint8 images held in memory (real and synthetic), for a plain DataLoader."""

    def __init__(self, images: list[np.ndarray], labels: np.ndarray, synthetic: np.ndarray, class_names: list[str],
                 transform: Transform | None = None):
        self.images, self.labels, self.is_synthetic = images, labels, synthetic
        self.class_names = class_names
        self.transform = transform or to_float

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1)
        return self.transform(image), int(self.labels[i])


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1] == size:
        return images
    from synthaug.images import to_device_images

    return to_device_images(images, size, torch.device("cpu")).permute(0, 2, 3, 1).numpy()


def mix(real, synthetic, ratio: float | None = None, probability: float | None = None, seed: int = 0,
        transform: Transform | None = None) -> ImagePool:
    """Real images plus synthetic ones, as a map-style dataset a plain ``DataLoader`` can shuffle.

    Args:
        real: the real training images, an :class:`~synthaug.data.ImageSet` (e.g. ``ds.split("train")``).
        synthetic: a shard folder (or a :class:`~synthaug.shards.SyntheticSet`); its class names must
            be classes of ``real`` (labels are mapped by name).
        ratio: ``ratio`` synthetic images per real image, class by class (1.0 doubles every class).
        probability: instead of a ratio, make each drawn image synthetic with this probability: every
            real image once per epoch plus ``round(N * p / (1 - p))`` synthetic ones.
        seed: which synthetic images are chosen; the same seed gives the same dataset.
        transform: applied to each uint8 (C, H, W) image (default: float in [0, 1]).

    >>> train = mix(load_dataset("digits").split("train"), "synthetic/digits", ratio=0.5)   # doctest: +SKIP
    """
    if (ratio is None) == (probability is None):
        raise SynthaugError("Give mix() either ratio= or probability=, not both or neither.")
    if (ratio is not None and ratio < 0) or (probability is not None and not 0 <= probability < 1):
        raise SynthaugError("ratio must be 0 or more, and probability in [0, 1).")
    syn = synthetic if isinstance(synthetic, SyntheticSet) else load_shard_set(Path(synthetic))
    syn_labels = map_labels(syn.class_names, real.class_names, getattr(real, "name", "the real dataset"), held_classes(syn))[syn.labels]
    if syn.images.shape[-1] != real.images.shape[-1]:
        raise SynthaugError(f"The synthetic images have {syn.images.shape[-1]} channels and the real ones {real.images.shape[-1]}; "
                            "mix sets from the same dataset.")
    rng = numpy_rng("mix", seed)
    if ratio is not None:
        chosen = []
        for c, n_real in enumerate(np.bincount(real.labels, minlength=len(real.class_names))):
            want = int(round(ratio * n_real))
            pool = np.flatnonzero(syn_labels == c)
            if want > len(pool):
                raise SynthaugError(
                    f"The synthetic set has {len(pool)} images of {real.class_names[c]!r} but ratio {ratio:g} needs {want}; "
                    "generate more (synthaug generate --per-class N) or lower the ratio."
                )
            chosen.extend(rng.choice(pool, size=want, replace=False).tolist())
        chosen = np.sort(np.array(chosen, dtype=np.int64))
    else:
        want = int(round(len(real) * probability / (1 - probability)))
        chosen = np.sort(rng.choice(len(syn_labels), size=want, replace=want > len(syn_labels)))
    syn_images = _resized(syn.images, real.images.shape[1])[chosen]
    images = list(real.images) + list(syn_images)
    labels = np.concatenate([real.labels, syn_labels[chosen]]).astype(np.int64)
    synthetic_mask = np.concatenate([np.zeros(len(real), bool), np.ones(len(chosen), bool)])
    return ImagePool(images, labels, synthetic_mask, list(real.class_names), transform)


class OnTheFly(IterableDataset):
    """Fresh images from a generator as training goes (see :func:`on_the_fly`)."""

    def __init__(self, generator, classes, samples_per_epoch: int, cache_size: int, batch_size: int, reuse: float,
                 seed: int, transform: Transform | None):
        super().__init__()
        self.generator, self.samples_per_epoch, self.cache_size = generator, samples_per_epoch, cache_size
        self.conditions = generator.all_classes() if classes is None else generator.resolve_classes(list(classes))
        self.batch_size, self.reuse, self.seed = batch_size, reuse, seed
        self.transform = transform or to_float
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import dataclasses

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        n = self.samples_per_epoch // workers + (worker < self.samples_per_epoch % workers)
        rng = numpy_rng("on-the-fly", self.seed, self.epoch, worker)
        sampling = dataclasses.replace(self.generator.sampling, batch_size=self.batch_size)
        images: list[np.ndarray] = []
        labels: list[int] = []
        drawn = 0
        for i in range(n):
            # keep about `reuse` yields per generated image; the cache holds at most cache_size images
            if not images or i * 1.0 >= drawn * self.reuse:
                picks = rng.integers(0, len(self.conditions), self.batch_size)
                conds = [self.conditions[k] for k in picks]
                key = f"otf-{self.epoch}-{worker}"
                seeds = [derive_seed(self.seed, key, drawn + k) for k in range(self.batch_size)]
                images += list(self.generator.sample_conditions(conds, seeds, sampling))
                labels += [c.label for c in conds]
                drawn += self.batch_size
                images, labels = images[-self.cache_size :], labels[-self.cache_size :]
            j = int(rng.integers(0, len(images)))
            yield self.transform(torch.from_numpy(images[j]).permute(2, 0, 1).contiguous()), labels[j]

    def __len__(self) -> int:
        return self.samples_per_epoch


def on_the_fly(generator, classes: Sequence[str] | None = None, samples_per_epoch: int = 1000, cache_size: int = 512,
               batch_size: int = 64, reuse: float = 1.0, seed: int = 0, transform: Transform | None = None) -> OnTheFly:
    """An ``IterableDataset`` that draws new images from a :class:`~synthaug.generator.Generator` as
    training goes, instead of reading stored shards.

    Images are drawn ``batch_size`` at a time (classes uniformly at random) into a cache of at most
    ``cache_size`` images, and yielded at random from it; a new batch is drawn whenever the yields
    reach ``reuse`` per image drawn so far (1.0: about one yield per fresh image; higher is cheaper).
    Seeds derive from (seed, epoch, worker, counter), so an epoch is reproducible. With DataLoader
    workers each worker samples its own share on its own copy of the model, so keep the generator on
    the CPU there, or use ``num_workers=0`` with a GPU generator.

    >>> stream = on_the_fly(Generator.load("runs/digits"), samples_per_epoch=512)   # doctest: +SKIP
    """
    if samples_per_epoch <= 0 or cache_size <= 0 or batch_size <= 0 or reuse <= 0:
        raise SynthaugError("samples_per_epoch, cache_size, batch_size and reuse must be positive.")
    return OnTheFly(generator, classes, samples_per_epoch, cache_size, batch_size, reuse, seed, transform)
