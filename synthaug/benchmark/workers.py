"""The benchmark's classifier workers: single-threaded CPU processes that train classifier runs side by side (on 2
cores, two one-thread classifiers train 1.9x as fast as one two-thread one, and a classifier's numbers do not depend
on how many workers there are), and die with the process that started them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor, wait

import torch


class WorkerPool:
    """``workers`` single-threaded processes for classifier runs. Each reports its process id when it starts, so the
    pool can be stopped at once (:meth:`stop` with ``abort``), killing runs in progress, which the executor itself
    cannot do; and each is killed when the process that started it dies, even by SIGKILL (Linux)."""

    def __init__(self, workers: int):
        import torch.multiprocessing  # noqa: F401 - tensors travel to the workers through shared memory

        # fork (as DataLoader workers do) where there is one: spawn would run a user's script again in every worker
        # unless it guards its top level with `if __name__ == "__main__"`
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        self._started: multiprocessing.Queue = context.Queue()
        self._pids: set[int] = set()
        self._futures: list[Future] = []
        self.executor = ProcessPoolExecutor(workers, mp_context=context, initializer=start_worker, initargs=(self._started,))

    def submit(self, fn, *args, **kwargs) -> Future:
        future = self.executor.submit(fn, *args, **kwargs)
        self._futures = [f for f in self._futures if not f.done()] + [future]
        return future

    def pids(self) -> list[int]:
        """The process ids of the workers started so far."""
        while True:
            try:
                self._pids.add(self._started.get_nowait())
            except queue.Empty:
                return sorted(self._pids)

    def stop(self, abort: bool = False) -> None:
        """Shut down after the queued runs; ``abort`` cancels queued runs and kills running ones instead."""
        if not abort:
            self.executor.shutdown(cancel_futures=True)
            return
        pids = self.pids()
        self.executor.shutdown(wait=False, cancel_futures=True)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # the executor's own thread marks the killed runs failed (a broken pool) once it sees their workers gone:
        # wait for that, so no caller finds a run still pending after the pool was stopped
        wait(self._futures, timeout=30)


def start_worker(started=None) -> None:
    """A classifier worker: one thread, its process id reported on ``started``, and (on Linux) killed when its parent
    dies, so that a benchmark stopped by SIGTERM or SIGKILL leaves no workers training on."""
    import ctypes

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the workers
    if started is not None:
        started.put(os.getpid())
    if sys.platform.startswith("linux"):
        try:
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def resolve_workers(workers: int, device: torch.device, processes: int) -> int:
    """How many single-threaded classifier workers one process runs: ``benchmark.workers``, or (0) one per CPU core
    this process has (its share when several processes run), and 1 on a GPU."""
    if workers:
        return workers
    return 1 if device.type != "cpu" else max(1, len(os.sched_getaffinity(0)) // max(1, processes))


@contextlib.contextmanager
def one_thread(device: torch.device):
    """Train a CPU classifier on one thread, as the workers do, so its numbers do not depend on the worker count."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
