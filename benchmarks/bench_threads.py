"""One two-thread process against one-thread workers, as many as cores, on the same Lite0 runs.

The book's runs are independent trainings of EfficientNet-Lite0 (ImageNet start) on small MedMNIST
sets. Two ways to spend a 2-core machine on them:

* ``1 process x 2 threads``: ``run_many`` in this process, torch with 2 intra-op threads;
* ``2 workers x 1 thread``: ``run_many`` through ``medsoup.runs.workers.worker_pool(2)``: 2 forked workers, each
  with 1 torch thread (the way ``python -m medsoup.book`` executes the cpu profile's chapters).

Both train the same ``--runs`` configs (BreastMNIST 28 px, the full training split, ``--epochs``
epochs, seeds 0..runs-1), each variant into a fresh cache, in ``--rounds`` rounds whose order
alternates, so that a load that changes during the run falls on both. Reported: wall seconds per
variant and round, the ratio (two-thread process / one-thread workers: above 1 means the workers
are faster), the load average before and after, and whether the two variants' test metrics agree
(they need not: one and two threads sum in different orders).

    python benchmarks/bench_threads.py [--runs 4] [--epochs 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from medsoup.core.train import TrainConfig
from medsoup.runs.provenance import code_version, machine
from medsoup.runs.store import RunConfig, run_many
from medsoup.runs.workers import worker_pool


def configs(runs: int, epochs: int, threads: int) -> list[RunConfig]:
    train = TrainConfig(epochs=epochs, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                        device="cpu", threads=threads)
    return [RunConfig(dataset="breastmnist", model="tf_efficientnet_lite0", init="imagenet",
                      train=train.replace(seed=seed)) for seed in range(runs)]


def timed(variant: str, runs: int, epochs: int) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as cache:
        start = time.perf_counter()
        if variant == "process":
            results = run_many(configs(runs, epochs, 2), cache=cache, progress=False)
        else:
            with worker_pool(2) as pool:
                results = run_many(configs(runs, epochs, 1), pool, cache=cache, progress=False)
        return time.perf_counter() - start, [r.test["auc"] for r in results]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"bench_threads: {args.runs} Lite0 runs (breastmnist 28 px, 546 training images x {args.epochs} epochs, "
          f"batch 64) per variant, {args.rounds} rounds")
    print(f"torch {torch.__version__}; machine {machine()}; code {code_version()}")
    print(f"load average before: {os.getloadavg()[0]:.1f} (1 min)")
    walls: dict[str, list[float]] = {"process": [], "workers": []}
    aucs: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        order = ("process", "workers") if round_ % 2 == 0 else ("workers", "process")
        for variant in order:
            wall, aucs[variant] = timed(variant, args.runs, args.epochs)
            walls[variant].append(wall)
            print(f"round {round_}: {variant:8s} {wall:7.1f} s   load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f} (1 min)")
    process, workers = statistics.median(walls["process"]), statistics.median(walls["workers"])
    print(f"median wall: 1 process x 2 threads {process:.1f} s, 2 workers x 1 thread {workers:.1f} s")
    print(f"1 process x 2 threads / 2 workers x 1 thread: {process / workers:.2f}")
    print("test AUC per run, 2 threads:", " ".join(f"{a:.4f}" for a in aucs["process"]))
    print("test AUC per run, 1 thread: ", " ".join(f"{a:.4f}" for a in aucs["workers"]))


if __name__ == "__main__":
    main()
