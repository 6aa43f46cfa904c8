"""Benchmark: greedy soup over a zoo of 48 models (evaluations spent and wall time).

The zoo is a grid search as in FissionFusion's code at small scale: 8 learning rates x 3
augmentations x 2 seeds of ``smallcnn`` fine-tuned on RetinaMNIST from one shared initial run
(cached in ``$MEDSOUP_RUNS``, so only the first call trains). Timed:

* :func:`medsoup.merging.soups.greedy_soup` with the runs' recorded validation scores (n - 1 soup
  evaluations) and without them (2n - 1), each with and without BN recalibration;
* a straightforward reference: a deep copy of the model per evaluation and every candidate's
  score recomputed, soups averaged key by key with Python sums.

    MEDSOUP_DATA=... python benchmarks/bench_greedy_soup.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsoup.core.data import load_dataset  # noqa: E402
from medsoup.core.train import TrainConfig, evaluate  # noqa: E402
from medsoup.merging.soups import greedy_soup, state_scorer  # noqa: E402
from medsoup.runs.provenance import code_version, machine  # noqa: E402
from medsoup.runs.store import RunConfig, run_many  # noqa: E402

LRS = (3e-3, 2e-3, 1e-3, 5e-4, 3e-4, 2e-4, 1e-4, 5e-5)
AUGMENTS = ("minimal", "medium", "heavy")
METRIC = "f1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cache = os.environ.get("MEDSOUP_RUNS", "/tmp/medsoup_bench_runs")
    common = dict(optimizer="adamw", weight_decay=1e-4, schedule="cosine", select_metric=METRIC, device="cpu")
    init = RunConfig(dataset="retinamnist", model="smallcnn", train=TrainConfig(epochs=3, lr=1e-3, seed=100, **common))
    configs = [init.replace(init=init, train=TrainConfig(epochs=args.epochs, lr=lr, augment=aug, seed=seed, **common))
               for lr in LRS for aug in AUGMENTS for seed in (0, 1)]
    start = time.perf_counter()
    results = run_many(configs, cache=cache, progress=False)
    print(f"zoo: {len(results)} models (loaded or trained in {time.perf_counter() - start:.1f} s)")
    print(f"code {code_version()}, machine {machine()}")
    data = load_dataset("retinamnist", device="cpu")
    states = [r.load_state() for r in results]
    recorded = [r.val[METRIC] for r in results]
    model = results[0].load_model()

    for recalibrate in (False, True):
        for known in (True, False):
            score = state_scorer(model, data, METRIC, recalibrate=recalibrate)
            start = time.perf_counter()
            soup = greedy_soup(states, score, recorded if known else None)
            elapsed = time.perf_counter() - start
            print(f"greedy_soup recalibrate={recalibrate!s:5} recorded scores={known!s:5}: "
                  f"{soup.evaluations} evaluations, {elapsed:.2f} s ({1000 * elapsed / soup.evaluations:.1f} ms each), "
                  f"kept {len(soup.kept)} of {len(states)}, val {METRIC} {soup.score:.4f}")

    def reference_score(state):
        fresh = copy.deepcopy(model)
        fresh.load_state_dict(state)
        return evaluate(fresh, data, "val")[METRIC]

    start = time.perf_counter()
    individual = [reference_score(s) for s in states]
    order = sorted(range(len(states)), key=lambda i: -individual[i])
    kept, best, evaluations = [order[0]], individual[order[0]], len(states)
    for i in order[1:]:
        members = [states[j] for j in kept + [i]]
        trial = {k: sum(m[k].double() for m in members) / len(members) if members[0][k].is_floating_point()
                 else members[0][k] for k in members[0]}
        trial = {k: v.to(states[0][k].dtype) for k, v in trial.items()}
        value = reference_score(trial)
        evaluations += 1
        if value > best:
            kept, best = kept + [i], value
    elapsed_ref = time.perf_counter() - start
    print(f"reference (deepcopy per evaluation, per-key Python averaging): {evaluations} evaluations, "
          f"{elapsed_ref:.2f} s, kept {len(kept)}, val {METRIC} {best:.4f}")
    score = state_scorer(model, data, METRIC)
    start = time.perf_counter()
    ours = greedy_soup(states, score)
    elapsed = time.perf_counter() - start
    print(f"same work with medsoup (2n - 1 evaluations): {elapsed:.2f} s; ratio reference / medsoup "
          f"{elapsed_ref / elapsed:.2f}x; same ingredients: {sorted(ours.kept) == sorted(kept)}")


if __name__ == "__main__":
    main()
