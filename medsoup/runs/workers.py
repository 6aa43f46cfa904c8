"""Where a chapter's runs train: one-thread worker processes, as many as the machine has cores.

The book's runs are many small, independent trainings. On a CPU, one torch thread per run and one
run per core beats one process whose runs use every core in turn (``benchmarks/bench_threads.py``:
the two-thread process against two one-thread workers, measured side by side), and a one-thread
run gives the same numbers on any machine (``TrainConfig.threads`` is part of the run key).
With a CUDA GPU the runs train one after the other in the notebook's own process.

:func:`worker_pool` gives the executor that :func:`medsoup.runs.store.run_many` and the chapters'
``executor`` arguments take; it is ``None`` (train in this process) where one worker would do.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

import torch


def default_workers() -> int:
    """Worker processes a notebook uses when not told: the CPU cores without a CUDA GPU, else 0
    (the runs train in the notebook's process, on the GPU)."""
    return 0 if torch.cuda.is_available() else (os.cpu_count() or 1)


#: Linux's prctl option that has the kernel signal a process when the thread that created it ends.
PR_SET_PDEATHSIG = 1


def _start_worker(parent: int) -> None:
    """One torch thread; on Linux the worker is also sent SIGTERM when ``parent``, the process that made it,
    dies, so a killed notebook kernel (or a stopped book execution) does not leave its workers behind, idle.
    (Linux signals when the creating thread ends: :func:`worker_pool`'s first ``submit`` forks the workers, so
    submit from a thread that outlives the pool, as the chapters do from the notebook's.)"""
    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)


@contextmanager
def worker_pool(workers: int | None = None) -> Iterator[ProcessPoolExecutor | None]:
    """``workers`` one-thread worker processes (None: :func:`default_workers`), shut down on exit;
    ``None`` instead of a pool for 0 or 1 worker. Workers are forked where the platform can (they
    start in a second, with medsoup already imported), else spawned."""
    workers = default_workers() if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"workers must be a whole number >= 0 (0 or 1: train in this process), got {workers!r}")
    if workers <= 1:
        yield None
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_start_worker,
                               initargs=(os.getpid(),))
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)
