"""Images as classifier and network inputs: uint8 pixels (an array, or a dataset's memory-mapped row view) turned
into device tensors at a resolution, piece by piece, and :class:`Images`, a set of inputs with their targets that is
held on the device when it fits and read from its memory-mapped source a batch at a time when it does not.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    """A uint8 piece of images as a CPU tensor; a read-only piece of a memory map is copied first (torch wants
    writable memory)."""
    pixels = np.ascontiguousarray(pixels)
    return torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())


def resize_batch(pixels: np.ndarray, resolution: int, device: torch.device) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, R, R) uint8 on ``device``, resized with antialiasing (bilinear)."""
    x = as_tensor(pixels).permute(0, 3, 1, 2)
    if x.shape[-1] != resolution:
        x = F.interpolate(x.float(), size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x.contiguous().to(device)


def chunks_of(images, size: int = 1024):
    """Consecutive pieces of (N, H, W, C) images: an array, or a dataset's row view read piece by piece."""
    if hasattr(images, "iter_chunks"):
        yield from images.iter_chunks(size)
    else:
        for start in range(0, len(images), size):
            yield images[start : start + size]


def to_device_images(images, resolution: int, device: torch.device) -> torch.Tensor:
    """(N, H, W, C) uint8 (an array or a dataset's row view) -> (N, C, R, R) uint8 on ``device``, resized once."""
    out = torch.empty((len(images), images.shape[3], resolution, resolution), dtype=torch.uint8, device=device)
    start = 0
    for chunk in chunks_of(images):  # filled in place: the set is in memory once, never twice
        out[start : start + len(chunk)] = resize_batch(chunk, resolution, device)
        start += len(chunk)
    return out


def resident_bytes() -> int:
    """Classifier inputs up to this size are held whole on the device ($SYNTHAUG_RESIDENT_BYTES, default 256 MiB:
    a CUB-sized set at 64 px, 72 MB, is well inside); larger ones are read from their memory-mapped source a batch
    at a time, so memory stays flat as datasets grow (benchmarks/bench_memory.py)."""
    import os

    return int(float(os.environ.get("SYNTHAUG_RESIDENT_BYTES", 1 << 28)))


RELEASE_BYTES = 16 << 20  # a streamed set's memory-mapped pages are dropped from RSS after this much is read


class Images:
    """Classifier inputs: uint8 images (N, C, R, R) at the classifier's resolution and integer targets (N, A),
    on one device; or several such parts pooled (real + synthetic), addressed as one.

    A set that fits in :func:`resident_bytes` is held whole on the device (``x``): the fast path, one
    indexing per batch. A larger one keeps its source, the dataset's memory-mapped (N, H, W, C) row view,
    and reads each batch from it (``gather``), resized as it comes, so memory does not grow with the data.
    """

    def __init__(self, x: torch.Tensor | None, y: torch.Tensor, source=None, resolution: int = 0, parts: list | None = None,
                 origin: tuple[Images, torch.Tensor] | None = None):
        self.x, self.y, self.source, self.resolution, self.parts = x, y, source, resolution, parts
        # (the set, its rows) this one was taken from: a linear probe takes its features from the larger set's
        self.origin = origin
        self.read_bytes = 0  # read from ``source`` since its pages were last released (see gather)
        self.digest: str | None = None  # sha256 of the pixels, computed once (see image_digest)

    @classmethod
    def of(cls, images, targets, resolution: int, device: torch.device) -> Images:
        """From (N, H, W, C) uint8 images (an array or a row view) and (N, A) targets."""
        y = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=device)
        if len(images) * images.shape[3] * resolution * resolution <= resident_bytes():
            return cls(to_device_images(images, resolution, device), y)
        return cls(None, y, images, resolution)

    @classmethod
    def concat(cls, parts: list[Images]) -> Images:
        """Several sets addressed as one (rows of the first, then of the second, ...). The parts are kept, so a linear
        probe reuses each part's features."""
        if all(p.x is not None for p in parts):
            return cls(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), parts=list(parts))
        return cls(None, torch.cat([p.y for p in parts]), parts=list(parts))

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def channels(self) -> int:
        if self.x is not None:
            return int(self.x.shape[1])
        return self.parts[0].channels if self.parts else int(self.source.shape[3])

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The images of ``rows`` (a 1-d index tensor), (B, C, R, R) uint8 on the device, in the order asked."""
        if self.x is not None:
            return self.x[rows.to(self.x.device)]
        if self.parts is None:
            if not hasattr(self.source, "gather"):
                return resize_batch(np.asarray(self.source)[rows.cpu().numpy()], self.resolution, self.device)
            pixels = self.source.gather(rows.cpu().numpy())
            # scattered rows fault in (and read ahead) pages all over the map, which would stay in this process's
            # RSS: drop them once every RELEASE_BYTES read (they stay in the OS page cache); training and
            # prediction both read through here, pooled sets through each part's own gather
            self.read_bytes += pixels.nbytes
            if self.read_bytes >= RELEASE_BYTES:
                self.source.release()
                self.read_bytes = 0
            return resize_batch(pixels, self.resolution, self.device)
        out, start = None, 0
        for part in self.parts:
            mine = (rows >= start) & (rows < start + len(part))
            if mine.any():
                pixels = part.gather(rows[mine] - start)
                out = pixels.new_empty((len(rows), *pixels.shape[1:])) if out is None else out
                out[mine.to(pixels.device)] = pixels
            start += len(part)
        return out

    def take(self, rows) -> Images:
        """A subset (an index array or tensor): an indexed copy when resident, a narrower view when streamed."""
        rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        origin = (self, rows)
        if self.x is not None:
            rows = rows.to(self.x.device)
            return Images(self.x[rows], self.y[rows], origin=origin)
        if self.parts is None and hasattr(self.source, "select"):
            return Images(None, self.y[rows.to(self.device)], self.source.select(rows.numpy()), self.resolution, origin=origin)
        return Images(self.gather(rows), self.y[rows.to(self.device)], origin=origin)

    def chunks(self, size: int):
        """Consecutive (B, C, R, R) pieces, in order (what prediction reads)."""
        for start in range(0, len(self), size):
            if self.x is not None:
                yield self.x[start : start + size]
            else:
                yield self.gather(torch.arange(start, min(start + size, len(self))))
