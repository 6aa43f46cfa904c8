"""Benchmark: greedy soup over a zoo of 48 models (evaluations spent and wall time).

The zoo is a grid search as in FissionFusion's code at small scale: 8 learning rates x 3
augmentations x 2 seeds of ``smallcnn`` fine-tuned on RetinaMNIST from one shared initial run
(``--train-subset`` training images, cached in ``$MEDSOUP_RUNS``, so only the first call trains).
Timed, alternately ``--repeats`` times (medians), with every candidate's score recomputed (2n - 1
evaluations) and with the runs' recorded scores (n - 1):

* :func:`medsoup.merging.soups.greedy_soup` with :func:`~medsoup.merging.soups.state_scorer`
  (one model; each candidate soup from a running sum of the kept states);
* a straightforward reference: a deep copy of the model per evaluation, each candidate soup
  re-averaged key by key from all kept states.

The two must keep the same ingredients. ``--recalibrate`` adds BN recalibration to every evaluation.

    MEDSOUP_DATA=... python benchmarks/bench_greedy_soup.py [--epochs 1] [--train-subset 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsoup.core.bn import recalibrate_bn, train_images  # noqa: E402
from medsoup.core.data import load_dataset  # noqa: E402
from medsoup.core.train import TrainConfig, evaluate  # noqa: E402
from medsoup.merging.soups import greedy_soup, state_scorer  # noqa: E402
from medsoup.runs.provenance import code_version, machine  # noqa: E402
from medsoup.runs.store import RunConfig, run_many  # noqa: E402

LRS = (3e-3, 2e-3, 1e-3, 5e-4, 3e-4, 2e-4, 1e-4, 5e-5)
AUGMENTS = ("minimal", "medium", "heavy")
METRIC = "f1"


def reference_greedy(model, states, data, recorded, batches):
    """Recipe 1 written plainly: a fresh deep copy per evaluation, soups re-averaged from scratch."""
    def score(state):
        fresh = copy.deepcopy(model)
        fresh.load_state_dict(state)
        if batches is not None:
            recalibrate_bn(fresh, batches)
        return evaluate(fresh, data, "val")[METRIC]

    individual = list(recorded) if recorded is not None else [score(s) for s in states]
    evaluations = 0 if recorded is not None else len(states)
    order = sorted(range(len(states)), key=lambda i: (-individual[i], i))
    kept, best = [order[0]], individual[order[0]]
    for i in order[1:]:
        members = [states[j] for j in kept + [i]]
        trial = {k: sum(m[k].double() for m in members) / len(members) if members[0][k].is_floating_point()
                 else torch.stack([m[k] for m in members]).amax(0) for k in members[0]}
        trial = {k: v.to(states[0][k].dtype) for k, v in trial.items()}
        value = score(trial)
        evaluations += 1
        if value > best:
            kept, best = kept + [i], value
    return kept, best, evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recalibrate", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cache = os.environ.get("MEDSOUP_RUNS", "/tmp/medsoup_bench_runs")
    common = dict(optimizer="adamw", weight_decay=1e-4, schedule="cosine", select_metric=METRIC, device="cpu")
    init = RunConfig(dataset="retinamnist", model="smallcnn", train_subset=args.train_subset,
                     train=TrainConfig(epochs=args.epochs, lr=1e-3, seed=100, **common))
    configs = [init.replace(init=init, train=TrainConfig(epochs=args.epochs, lr=lr, augment=aug, seed=seed, **common))
               for lr in LRS for aug in AUGMENTS for seed in (0, 1)]
    start = time.perf_counter()
    results = run_many(configs, cache=cache, progress=False)
    print(f"zoo: {len(results)} smallcnn models, {args.epochs} epoch(s) on {args.train_subset} RetinaMNIST images "
          f"(loaded or trained in {time.perf_counter() - start:.1f} s); BN recalibration: {args.recalibrate}")
    print(f"code {code_version()}, machine {machine()}")
    data = load_dataset("retinamnist", device="cpu", train_subset=args.train_subset)
    states = [r.load_state() for r in results]
    model = results[0].load_model()
    batches = train_images(data, model) if args.recalibrate else None
    for recorded in ([r.val[METRIC] for r in results], None):
        times = {"medsoup": [], "reference": []}
        same = True
        for repeat in range(args.repeats):
            for name in (("medsoup", "reference") if repeat % 2 == 0 else ("reference", "medsoup")):
                start = time.perf_counter()
                if name == "medsoup":
                    soup = greedy_soup(states, state_scorer(model, data, METRIC, recalibrate=args.recalibrate), recorded)
                    ours = (soup.kept, soup.score, soup.evaluations)
                else:
                    theirs = reference_greedy(model, states, data, recorded, batches)
                times[name].append(time.perf_counter() - start)
            same &= ours[0] == theirs[0] and ours[2] == theirs[2]
        fast, slow = statistics.median(times["medsoup"]), statistics.median(times["reference"])
        label = "recorded candidate scores" if recorded is not None else "candidate scores recomputed"
        print(f"{label}: {ours[2]} evaluations; medsoup {fast:.2f} s ({1000 * fast / ours[2]:.1f} ms each), "
              f"reference {slow:.2f} s ({1000 * slow / theirs[2]:.1f} ms each); speed-up {slow / fast:.2f}x "
              f"(median of {args.repeats} interleaved); kept {len(ours[0])} of {len(states)}, val {METRIC} "
              f"{ours[1]:.4f} (reference {theirs[1]:.4f}); same ingredients and evaluation count: {same}")


if __name__ == "__main__":
    main()
