"""Progress reporting for long library loops: silent by default; rich bars when the CLI runs at a terminal,
and plain progress lines at a steady interval when its output goes to a log (nohup, SLURM, CI)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_console = None  # the rich console bars draw on, while the CLI has bars enabled
_progress = None  # the rich Progress, started on the first task
_plain = None  # the stream plain progress lines go to, while the CLI has them enabled


def plain_interval() -> float:
    """Seconds between two plain progress lines of one task ($SYNTHAUG_PROGRESS_SECONDS, default 30)."""
    try:
        return max(0.0, float(os.environ.get("SYNTHAUG_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


@contextlib.contextmanager
def enabled(console) -> Iterator[None]:
    """Show rich progress bars (on ``console``) for every task started inside this block."""
    global _console, _progress
    previous = _console, _progress
    _console, _progress = console, None
    try:
        yield
    finally:
        if _progress is not None:
            _progress.stop()
        _console, _progress = previous


@contextlib.contextmanager
def lines(stream=None) -> Iterator[None]:
    """Print a plain line for every (non-transient) task started inside this block: when it starts, every
    :func:`plain_interval` seconds with its rate and ETA, and when it ends."""
    global _plain
    previous = _plain
    _plain = stream or sys.stderr
    try:
        yield
    finally:
        _plain = previous


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _bars():
    """The running Progress, started on first use so a command without loops prints nothing."""
    global _progress
    if _progress is None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        _progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=_console,
        )
        _progress.start()
    return _progress


class PlainLines:
    """One task's plain progress lines: '<description>: 12,800/100,000 (13%), 734/s, <info>, eta 2m00s'."""

    def __init__(self, stream, description: str, total: float | None):
        self.stream, self.description, self.total = stream, description, total
        self.done, self.info = 0.0, ""
        self.start = self.last = time.monotonic()
        self.resumed = 0.0  # what an earlier run had done (not part of the rate)
        self.write("started")

    def write(self, what: str) -> None:
        print(f"{self.description}: {what}", file=self.stream, flush=True)

    def status(self) -> str:
        elapsed = time.monotonic() - self.start
        done = f"{self.done:,.0f}" + (f"/{self.total:,.0f} ({100 * self.done / self.total:.0f}%)" if self.total else "")
        fresh = self.done - self.resumed
        rate = fresh / elapsed if elapsed > 0 else 0.0
        parts = [done, f"{rate:,.1f}/s"] + ([self.info] if self.info else [])
        if self.total and rate > 0:
            parts.append(f"eta {duration((self.total - self.done) / rate)}")
        return ", ".join(parts)

    def advance(self, n: float, info: str | None) -> None:
        self.done += n
        self.info = self.info if info is None else info
        now = time.monotonic()
        if now - self.last >= plain_interval():
            self.last = now
            self.write(self.status())

    def close(self, stopped: bool = False) -> None:
        """The last line: 'done' when the loop finished, 'stopped at' when an error or an interrupt ended it."""
        self.write(f"{'stopped at' if stopped else 'done,'} {self.status()} in {duration(time.monotonic() - self.start)}")


class Task:
    """A handle on one bar: `advance(n, info=...)` moves it and updates its info text."""

    def __init__(self, description: str, total: float | None, transient: bool = False):
        self.transient = transient
        self._id = None if _console is None else _bars().add_task(description, total=total, info="")
        self._lines = PlainLines(_plain, description, total) if _plain is not None and not transient else None

    def resume(self, n: float) -> None:
        """Count ``n`` as done by an earlier run (a resumed training or generation): not part of the rate."""
        if self._lines is not None:
            self._lines.resumed += n
            self._lines.done += n
        if self._id is not None:
            _progress.update(self._id, advance=n)

    def advance(self, n: float = 1, info: str | None = None) -> None:
        if self._lines is not None:
            self._lines.advance(n, info)
        if self._id is None:
            return
        fields = {} if info is None else {"info": info}
        _progress.update(self._id, advance=n, **fields)

    def close(self, stopped: bool = False) -> None:
        """Stop drawing once every bar is done, so later output lands below the bars; ``stopped``: the loop was ended
        by an error or an interrupt, which its last plain line says instead of 'done'."""
        global _progress
        if self._lines is not None:
            self._lines.close(stopped)
            self._lines = None
        if self._id is None or _progress is None:
            return
        if self.transient:
            _progress.remove_task(self._id)
        if all(t.finished or t.id == self._id for t in _progress.tasks):
            _progress.stop()
            _progress = None


@contextlib.contextmanager
def task(description: str, total: float | None = None, transient: bool = False) -> Iterator[Task]:
    """A bar for a loop that is not a plain iterable (training steps, images seen); a transient bar
    disappears when done (for many short runs under one outer bar)."""
    t = Task(description, total, transient)
    try:
        yield t
    except BaseException:
        t.close(stopped=True)
        raise
    t.close()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield `items`, advancing a bar named `description` when bars are enabled."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(description, total) as t:
        for item in items:
            yield item
            t.advance()
