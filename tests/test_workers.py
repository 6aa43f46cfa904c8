"""Many workers, one run store: every run trained once, the same numbers as a serial run, and a
store a killed worker leaves behind still completes.

Trainings are counted from the store: every training a process starts appends a line to its run's
``trainings.jsonl``. The workers are real processes (a dask ``LocalCluster``, a process pool, a
subprocess killed with SIGKILL), reading the official BreastMNIST from ``MEDSOUP_DATA``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from medsoup.runs import store as runs
from tests.conftest import ROOT, TINY_TRAIN, real_file

#: The shared init: every config of the grid starts from its final model.
INIT = runs.RunConfig(dataset="breastmnist", model="smallcnn", in_chans=1, train_subset=32,
                      train=TINY_TRAIN.replace(epochs=1, seed=100))
GRID = [INIT.replace(init=INIT).with_train(seed=seed, lr=lr) for seed in (0, 1) for lr in (1e-3, 3e-3)]
#: Long enough (256 images, 4 epochs) to be killed between two epochs.
KILLED = INIT.replace(init=INIT, train_subset=256).with_train(epochs=4, seed=7)

pytestmark = pytest.mark.skipif(real_file("breastmnist") is None,
                                reason="worker processes read the official breastmnist.npz from MEDSOUP_DATA")


@pytest.fixture(autouse=True)
def importable(monkeypatch):
    """Worker processes import this checkout's medsoup and tests."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def trainings(cache: Path) -> dict[str, list[dict]]:
    """The trainings each run folder of ``cache`` records, by key."""
    return {log.parent.name: [json.loads(line) for line in log.read_text().splitlines()]
            for log in cache.glob("*/trainings.jsonl")}


def numbers(result: runs.RunResult) -> tuple:
    return ([{k: v for k, v in h.items() if k != "time"} for h in result.history], result.best_epoch,
            result.val, result.test)


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict[str, tuple]:
    """The grid run one after another in this process: the reference numbers, by key."""
    cache = tmp_path_factory.mktemp("serial")
    results = runs.run_many(GRID, cache=cache, progress=False)
    assert all(len(t) == 1 for t in trainings(cache).values()) and len(trainings(cache)) == 5
    return {r.key: numbers(r) for r in results}


def check_once_and_equal(results, cache: Path, serial: dict) -> None:
    counted = trainings(cache)
    assert sorted(counted) == sorted({runs.run_key(INIT), *(runs.run_key(c) for c in GRID)})
    assert {key: len(t) for key, t in counted.items()} == {key: 1 for key in counted}
    assert len({t[0]["pid"] for t in counted.values()}) > 1, "one worker trained everything; nothing was shared"
    assert [numbers(r) for r in results] == [serial[r.key] for r in results]


@pytest.mark.parametrize("lock", ["local", "network"])
def test_process_pool_trains_every_run_once(serial, tmp_path, monkeypatch, lock):
    monkeypatch.setenv(runs.LOCK_ENV, lock)
    cache = tmp_path / "shared"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        results = runs.run_many(GRID, pool, cache=cache, progress=False)
    check_once_and_equal(results, cache, serial)


def test_dask_cluster_trains_every_run_once(serial, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    cache = tmp_path / "shared"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        results = runs.run_many(GRID, client, cache=cache, progress=False)
    check_once_and_equal(results, cache, serial)


@pytest.mark.parametrize("lock", ["local", pytest.param("network", marks=pytest.mark.slow)])
def test_a_killed_worker_leaves_a_store_the_grid_completes_from(serial, tmp_path, monkeypatch, lock):
    monkeypatch.setenv(runs.LOCK_ENV, lock)
    cache = tmp_path / "shared"
    folder = cache / runs.run_key(KILLED)
    worker = subprocess.Popen([sys.executable, "-c", "import sys; from medsoup.runs import store; "
                               "from tests.test_workers import KILLED; store.run(KILLED, sys.argv[1], False)",
                               str(cache)], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (folder / "resume.safetensors").exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert (folder / "resume.safetensors").exists() and not (folder / "result.json").exists(), "not killed mid-training"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        results = runs.run_many([*GRID, KILLED], pool, cache=cache, progress=False)
    reference = {**serial, runs.run_key(KILLED): numbers(runs.run(KILLED, tmp_path / "serial", progress=False))}
    assert [numbers(r) for r in results] == [reference[r.key] for r in results]
    counted = trainings(cache)
    assert [t["resumed"] for t in counted[runs.run_key(KILLED)]] == [False, True]
    assert all(len(t) == 1 for key, t in counted.items() if key != runs.run_key(KILLED))


def test_a_second_caller_waits_for_the_trainer_then_loads(tmp_path):
    cache = tmp_path / "shared"
    folder = cache / runs.run_key(INIT)
    folder.mkdir(parents=True)
    lock = runs.run_lock(folder)
    lock.acquire()
    results = []
    waiter = threading.Thread(target=lambda: results.append(runs.run(INIT, cache, progress=False)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not trainings(cache), "run() did not wait for the lock"
    lock.release()
    waiter.join(60)
    assert len(trainings(cache)[folder.name]) == 1 and results[0].key == folder.name


def test_unknown_lock_kind_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.LOCK_ENV, "nfs")
    with pytest.raises(ValueError, match=r"MEDSOUP_RUN_LOCK='nfs' is not a lock kind; valid: local, network"):
        runs.run_lock(tmp_path)


def test_shared_inits_are_listed_once_deepest_first():
    deeper = INIT.replace(init=INIT.with_train(seed=200))
    assert runs.shared_inits(GRID) == [INIT]
    assert runs.shared_inits([*GRID, KILLED.replace(init=deeper)]) == [INIT, INIT.with_train(seed=200), deeper]


def _threads_and_pid():
    import torch
    return torch.get_num_threads(), os.getpid()


def _slow_pid() -> int:
    time.sleep(0.3)  # long enough that each worker takes a task
    return os.getpid()


def _pool_then_hang(pids) -> None:
    from medsoup.runs.workers import worker_pool
    with worker_pool(2) as pool:
        pids.put(sorted({future.result() for future in [pool.submit(_slow_pid) for _ in range(4)]}))
        time.sleep(120)  # killed before


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie (dead, not yet reaped) counts as gone
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_killed_owner_takes_its_workers_with_it():
    context = multiprocessing.get_context("fork")
    pids = context.Queue()
    owner = context.Process(target=_pool_then_hang, args=(pids,))
    owner.start()
    workers = pids.get(timeout=60)
    assert len(workers) == 2 and owner.pid not in workers and all(_alive(pid) for pid in workers)
    os.kill(owner.pid, signal.SIGKILL)
    owner.join()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # so that a failure leaves nothing behind either
        os.kill(pid, signal.SIGKILL)
    assert not left, "a killed notebook's workers were left behind"


def test_worker_pool_gives_one_thread_workers_or_none():
    from medsoup.runs.workers import worker_pool
    with worker_pool(2) as pool:
        answers = [pool.submit(_threads_and_pid).result() for _ in range(4)]
    assert {threads for threads, _ in answers} == {1}
    assert os.getpid() not in {pid for _, pid in answers}
    for workers in (0, 1):
        with worker_pool(workers) as pool:
            assert pool is None
    with pytest.raises(ValueError, match="workers must be a whole number >= 0"):
        with worker_pool(-1):
            pass
