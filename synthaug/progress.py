"""Progress reporting for long library loops: silent by default, rich bars when the CLI turns them on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_console = None  # the rich console bars draw on, while the CLI has bars enabled
_progress = None  # the rich Progress, started on the first task


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


class Task:
    """A handle on one bar: `advance(n, info=...)` moves it and updates its info text."""

    def __init__(self, description: str, total: float | None, transient: bool = False):
        self.transient = transient
        self._id = None if _console is None else _bars().add_task(description, total=total, info="")

    def advance(self, n: float = 1, info: str | None = None) -> None:
        if self._id is None:
            return
        fields = {} if info is None else {"info": info}
        _progress.update(self._id, advance=n, **fields)

    def close(self) -> None:
        """Stop drawing once every bar is done, so later output lands below the bars."""
        global _progress
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
    finally:
        t.close()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield `items`, advancing a bar named `description` when bars are enabled."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(description, total) as t:
        for item in items:
            yield item
            t.advance()
