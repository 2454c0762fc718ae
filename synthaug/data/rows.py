"""Rows of one (N, ...) array picked by index, without copying them: what ``ImageSet.images`` holds.

A dataset's images are one memory-mapped array (the decode cache); its splits and subsets are
:class:`RowView` s of it. A view reads like the NumPy array it stands for, and streaming consumers
read it in pieces (:meth:`RowView.iter_chunks`, :meth:`RowView.gather`) so memory stays flat.
"""

from __future__ import annotations

import mmap
import operator
from collections.abc import Iterator

import numpy as np


class RowView:
    """The rows ``rows`` of ``base`` (an (N, ...) array, usually a read-only ``np.memmap``), as an array-like.

    What it does like the (M, ...) array it stands for: ``len``, ``shape``, ``dtype``, ``ndim``, iteration,
    ``np.asarray(view)``, and indexing (an int, a slice, an index array, a list or a boolean mask) that
    returns an ``np.ndarray``: a view of ``base`` where the rows asked for are consecutive in it (so no
    copy, and read-only for a memory map), else a gathered copy. Any other ndarray method (``mean``,
    ``reshape``, ``astype`` ...) runs on a gathered copy of every row: fine for small sets; consumers of
    large ones read in pieces instead. ``torch.from_numpy`` needs a real array: pass ``np.asarray(view)``
    (all rows at once) or the pieces.

    Streaming: :meth:`iter_chunks` yields consecutive pieces, :meth:`gather` takes any rows (a batch),
    :meth:`select` makes a narrower view (no copy). Pages of a memory map that were read stay resident
    (counted in the process's RSS) until :meth:`release` drops them; :meth:`iter_chunks` does that after
    each piece, and a long random-access loop calls it now and then (the OS keeps them in its page cache).

    >>> view = RowView(np.arange(12).reshape(6, 2), [4, 1, 2])
    >>> view.shape, view[1:].tolist(), view.select([0, 2]).rows.tolist()
    ((3, 2), [[2, 3], [4, 5]], [4, 2])
    """

    __slots__ = ("_base", "_rows")

    def __init__(self, base: np.ndarray, rows=None):
        self._base = base
        self._rows = _compact(range(len(base)) if rows is None else _resolve(rows, len(base)))

    # -- what the view is ---------------------------------------------------------------------------
    @property
    def base(self) -> np.ndarray:
        """The whole array the rows index (one object shared by every view of it)."""
        return self._base

    @property
    def rows(self) -> np.ndarray:
        """(M,) int64 indices of the rows in ``base``."""
        r = self._rows
        return np.arange(r.start, r.stop, dtype=np.int64) if isinstance(r, range) else r

    @property
    def contiguous(self) -> bool:
        """Whether the rows are consecutive in ``base`` (then ``np.asarray`` gives a view, not a copy)."""
        return isinstance(self._rows, range)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._rows), *self._base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self._base.dtype

    @property
    def ndim(self) -> int:
        return self._base.ndim

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self._base.itemsize

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        where = f", memory-mapped from {self._base.filename}" if isinstance(self._base, np.memmap) else ""
        return f"RowView({len(self)} of {len(self._base)} rows of {self._base.shape[1:]} {self.dtype}{where})"

    # -- reading ------------------------------------------------------------------------------------
    def select(self, rows) -> RowView:
        """A view of some of these rows (an index array, a list, a slice or a boolean mask); no copy."""
        return RowView(self._base, self._absolute(rows))

    def gather(self, rows) -> np.ndarray:
        """The rows ``rows`` (relative to this view: an index array, a list, a slice or a boolean mask) as
        a new array, e.g. one training batch."""
        return self._read(self._absolute(rows), copy=True)

    def iter_chunks(self, size: int, release: bool = True) -> Iterator[np.ndarray]:
        """Consecutive pieces of at most ``size`` rows, in order. A piece is a view of ``base`` where its rows
        are consecutive there, else a copy; either way valid after the next piece is read. With ``release``
        the memory map's resident pages are dropped after each piece (see :meth:`release`)."""
        if size < 1:
            raise ValueError(f"chunk size must be positive, not {size}")
        for start in range(0, len(self), size):
            rows = _compact(self._rows[start : start + size])
            yield self._read(rows, copy=False)
            if release:
                self.release(rows)

    def release(self, rows=None) -> None:
        """Drop the pages of a read-only memory map from this process's resident memory: all of them, or those
        holding ``rows`` of ``base`` (a range or an index array). They stay in the OS page cache and are read
        back on the next access, so reading a large set once does not count its whole size in the process's
        RSS, and every view of the map keeps working. Nothing happens for in-memory arrays."""
        base = self._base
        handle = getattr(base, "_mmap", None)
        if not (isinstance(base, np.memmap) and base.mode == "r" and handle is not None and hasattr(mmap, "MADV_DONTNEED")):
            return
        if rows is None or len(rows) == 0:
            handle.madvise(mmap.MADV_DONTNEED)  # on a shared read-only mapping this loses nothing
            return
        lo, hi = (rows.start, rows.stop - 1) if isinstance(rows, range) else (int(np.min(rows)), int(np.max(rows)))
        row_bytes = base.strides[0]
        offset = base.ctypes.data - np.frombuffer(handle, dtype=np.uint8).ctypes.data  # the array's start in the map
        start = offset + lo * row_bytes
        aligned = start - start % mmap.PAGESIZE
        handle.madvise(mmap.MADV_DONTNEED, aligned, min(offset + (hi + 1) * row_bytes, len(handle)) - aligned)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):  # e.g. view[rows, ..., 0]: rows first, then the rest on what they give
            if not key:
                return np.asarray(self)
            head, rest = key[0], key[1:]
            if head is Ellipsis:
                return np.asarray(self)[key]
            out = self[head]
            return out[rest] if _is_int(head) else out[(slice(None), *rest)]
        if _is_int(key):
            i = operator.index(key)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of bounds for {len(self)} rows")
            return self._base[self._rows[i]].view(np.ndarray)
        return self._read(self._absolute(key), copy=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        for chunk in self.iter_chunks(256):
            yield from chunk

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False and not self.contiguous:
            raise ValueError(f"{self!r} picks rows that are not consecutive, so it cannot be an array without a copy")
        out = self._read(self._rows, copy=bool(copy))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getattr__(self, name: str):
        # ndarray methods this class does not define (mean, reshape, astype, tobytes ...) on a gathered copy
        if name.startswith("_") or not hasattr(np.ndarray, name):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(np.asarray(self), name)

    def __reduce__(self):
        # a memory map travels to another process as its file name, not as its contents
        base = self._base
        if isinstance(base, np.memmap) and base.filename and getattr(base, "_mmap", None) is not None:
            return _reopen, (base.filename, base.offset, base.shape, base.dtype.str, self._rows)
        return RowView, (np.asarray(base), self._rows)

    # -- helpers ------------------------------------------------------------------------------------
    def _absolute(self, key) -> range | np.ndarray:
        """Rows of ``base`` for a key relative to this view."""
        if isinstance(key, slice):
            return _compact(self._rows[key])
        rows = _resolve(key, len(self))
        return _compact(rows + self._rows.start if isinstance(self._rows, range) else self._rows[rows])

    def _read(self, rows: range | np.ndarray, copy: bool) -> np.ndarray:
        """``base[rows]`` for rows from :func:`_compact`: a view for a range (copied when ``copy``), else a copy."""
        if isinstance(rows, range):
            out = self._base[rows.start : rows.stop].view(np.ndarray)
            return out.copy() if copy else out
        return np.asarray(self._base[rows])  # fancy indexing copies


def _is_int(key) -> bool:
    return isinstance(key, (int, np.integer)) and not isinstance(key, bool)


def _resolve(key, n: int) -> np.ndarray | range:
    """An index array, list, range, slice or boolean mask over ``n`` rows -> non-negative row numbers."""
    if isinstance(key, range):
        key = np.arange(key.start, key.stop, key.step, dtype=np.int64)
    if isinstance(key, slice):
        return range(*key.indices(n))
    rows = np.asarray(key)
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise IndexError(f"a boolean mask over {n} rows has shape {rows.shape}")
        return np.flatnonzero(rows)
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise IndexError(f"rows must be one-dimensional integers or a boolean mask, not {rows.dtype} of shape {rows.shape}")
    rows = rows.astype(np.int64, copy=False)
    if rows.min() < -n or rows.max() >= n:
        raise IndexError(f"a row index is out of bounds for {n} rows")
    return np.where(rows < 0, rows + n, rows)


def _compact(rows: range | np.ndarray) -> range | np.ndarray:
    """A range for consecutive rows (no index array kept, and reads are views), else an int64 array."""
    if isinstance(rows, range):
        if rows.step == 1 or len(rows) <= 1:
            return range(rows.start, rows.start + len(rows))
        return np.arange(rows.start, rows.stop, rows.step, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and (len(rows) < 3 or np.all(np.diff(rows) == 1)):
        return range(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _reopen(filename: str, offset: int, shape: tuple, dtype: str, rows) -> RowView:
    return RowView(np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape), rows)
