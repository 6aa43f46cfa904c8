"""Where the run store is and the lock of one run: the part of :mod:`medsoup.runs.store` that
``python -m medsoup.runs`` needs, importable without torch.

The store is ``$MEDSOUP_RUNS``, else ``runs/`` of the project (:func:`cache_root`); one process
trains a run while holding its :func:`run_lock`, of the kind ``$MEDSOUP_RUN_LOCK`` names.
"""

from __future__ import annotations

import os
from pathlib import Path

import filelock

from medsoup.core.paths import project_folder

RUNS_ENV = "MEDSOUP_RUNS"
#: ``local`` (default) or ``network``: the kind of lock of :func:`run_lock`.
LOCK_ENV = "MEDSOUP_RUN_LOCK"
#: Seconds a ``network`` lock may go unrefreshed before another host takes the run over.
LEASE_SECONDS = 60.0
#: ``runs/`` of the checkout medsoup is used from, or ``./runs`` outside a checkout.
DEFAULT_CACHE = project_folder("runs")


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """``cache`` if given, else ``$MEDSOUP_RUNS``, else :data:`DEFAULT_CACHE`."""
    return Path(cache if cache is not None else os.environ.get(RUNS_ENV, DEFAULT_CACHE))


def run_lock(folder: Path) -> filelock.BaseFileLock:
    """The lock the one process training the run in ``folder`` holds, by ``$MEDSOUP_RUN_LOCK``.

    ``local`` (default): :class:`filelock.FileLock`, an ``flock`` lock the kernel releases when its
    process dies, however it dies (``kill -9`` too). It excludes processes of one machine, and those of
    several on a network filesystem whose locks work (NFSv4, Lustre with ``flock``).
    ``network``: :class:`filelock.SoftFileLease`, a marker file its holder refreshes from a thread; a
    waiter takes it over once the holder's process is gone (same host) or the marker went
    :data:`LEASE_SECONDS` unrefreshed (any host), for filesystems without working locks.
    """
    kind = os.environ.get(LOCK_ENV, "local")
    if kind == "local":
        return filelock.FileLock(folder / "lock", poll_interval=0.25)
    if kind == "network":
        return filelock.SoftFileLease(folder / "lock", lease_duration=LEASE_SECONDS, poll_interval=0.25)
    raise ValueError(f"${LOCK_ENV}={kind!r} is not a lock kind; valid: local, network")
