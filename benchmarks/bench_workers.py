"""A grid of runs with shared inits on 2 local worker processes against the same grid run serially.

The grid: ``--inits`` init runs (smallcnn on BreastMNIST 28 px from ``$MEDSOUP_DATA``), each the
``init`` of ``--per-init`` runs (seeds x learning rates), all ``--subset`` training images x
``--epochs`` epochs. ``medsoup.runs.store.run_many`` runs it once in this process and once through a
``ProcessPoolExecutor`` of 2 workers (the platform's default start method, as
``python -m medsoup.book.batch --workers 2``), each against a fresh cache; the pool's time includes
starting its workers, also reported alone. Trainings are counted from each store (``trainings.jsonl``, one line per
training started), so a shared init trained twice would show; every result is checked equal to the
serial one. Reported: wall times, serial / parallel (the speed-up; at most 2 on 2 idle cores), and
the trainings each took. Through a pool, ``run_many`` submits the shared inits first, so at best
(idle cores, no start-up) the 2 workers take half the serial time.

    python benchmarks/bench_workers.py [--inits 2] [--per-init 4] [--subset 384] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # also for the workers, which inherit it

import torch  # noqa: E402

from medsoup.core.train import TrainConfig  # noqa: E402
from medsoup.runs.provenance import code_version, machine  # noqa: E402
from medsoup.runs.store import RunConfig, run_many  # noqa: E402


def grid(inits: int, per_init: int, subset: int, epochs: int) -> list[RunConfig]:
    train = TrainConfig(epochs=epochs, batch_size=32, optimizer="adamw", lr=1e-3, augment="medium", device="cpu")
    base = RunConfig(dataset="breastmnist", model="smallcnn", in_chans=1, train_subset=subset, train=train)
    configs = []
    for i in range(inits):
        init = base.with_train(seed=100 + i)
        configs += [base.replace(init=init).with_train(seed=j // 2, lr=(1e-3, 3e-3)[j % 2]) for j in range(per_init)]
    return configs


def started(seconds: float) -> int:
    """Sleep in a worker that has imported this script (so torch and medsoup too); its process id."""
    time.sleep(seconds)
    return os.getpid()


def trainings(cache: Path) -> tuple[int, int]:
    """(trainings started, run folders) in ``cache``."""
    logs = list(cache.glob("*/trainings.jsonl"))
    return sum(len(log.read_text().splitlines()) for log in logs), len(logs)


def numbers(result) -> tuple:
    return [{k: v for k, v in h.items() if k != "time"} for h in result.history], result.val, result.test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inits", type=int, default=2)
    parser.add_argument("--per-init", type=int, default=4)
    parser.add_argument("--subset", type=int, default=384)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = grid(args.inits, args.per_init, args.subset, args.epochs)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        serial_cache, pool_cache = Path(folder) / "serial", Path(folder) / "pool"
        start = time.perf_counter()
        serial = run_many(configs, cache=serial_cache, progress=False)
        serial_s = time.perf_counter() - start
        start = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:  # the platform's default start (fork on Linux), as batch --workers
            assert len(set(pool.map(started, [1.0, 1.0]))) == 2
            started_s = time.perf_counter() - start
            parallel = run_many(configs, pool, cache=pool_cache, progress=False)
        pool_s = time.perf_counter() - start
        counts = {"serial": trainings(serial_cache), "2 workers": trainings(pool_cache)}
    same = all(numbers(a) == numbers(b) for a, b in zip(serial, parallel))
    print(f"bench_workers: {len(configs)} runs sharing {args.inits} init runs (breastmnist 28 px, smallcnn, "
          f"{args.subset} training images x {args.epochs} epochs, batch 32, 1 torch thread per process)")
    print(f"torch {torch.__version__}; machine {machine()}; code {code_version()}")
    print(f"load average before: {load[0]:.1f} (1 min), after: {os.getloadavg()[0]:.1f}")
    print(f"{'variant':12s} {'wall s':>8s} {'trainings':>10s} {'run folders':>12s}")
    for name, seconds in (("serial", serial_s), ("2 workers", pool_s)):
        print(f"{name:12s} {seconds:8.1f} {counts[name][0]:10d} {counts[name][1]:12d}")
    print(f"starting the 2 workers (included above, 1 s of it a sleep that shows both are up): {started_s:.1f} s")
    print(f"serial / 2 workers (speed-up):                      {serial_s / pool_s:.2f}")
    print(f"serial / 2 workers, their start excluded:           {serial_s / (pool_s - started_s):.2f}")
    print(f"every result equal to the serial one: {same}")


if __name__ == "__main__":
    main()
