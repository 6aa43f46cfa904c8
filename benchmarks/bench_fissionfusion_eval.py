"""Benchmark: FissionFusion's evaluation step as a fraction of its zoo's training time.

The evaluation step is notebook 20's cell for one (dataset, seed): :func:`soup_methods` without and
with BatchNorm recalibration, each followed by :func:`ood_metrics` on the profile's corrupted test
sets. The zoo (stand-in pre-training, warm-up, grid search, FGG) is trained once through the run
cache; its training time is the recorded wall time of those runs. Reference (a straightforward
implementation, measured in the same run): every score, and each method's validation and test
metrics, a fresh load and recalibration, evaluated in the model's default layout and
:func:`~medsoup.core.train.evaluate`'s default batch (medsoup: :func:`~medsoup.core.bn.for_evaluation`,
channels-last and smaller batches on a CPU, whose numbers differ only in float rounding); the OOD sets corrupted anew for
every (corruption, method), each with its own recalibration (the soups themselves are built by
the same functions). The two are timed alternately,
``--repeats`` times (medians; one by default, ~5 minutes on two busy cores), and their numbers compared: the
same soups (ingredients and weights), and the largest difference of any metric.

    MEDSOUP_DATA=... python benchmarks/bench_fissionfusion_eval.py [--profile smoke] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsoup.chapters import fissionfusion as ff, fissionfusion_soups as soups  # noqa: E402
from medsoup.core.bn import recalibrate_bn, train_images  # noqa: E402
from medsoup.core.checkpoint import load_state_into  # noqa: E402
from medsoup.core.corruptions import corrupt  # noqa: E402
from medsoup.core.data import MedData, Split, load_dataset  # noqa: E402
from medsoup.core.train import evaluate  # noqa: E402
from medsoup.runs.profiles import settings  # noqa: E402
from medsoup.runs.provenance import code_version, machine  # noqa: E402
from medsoup.runs.store import run  # noqa: E402


def evaluate_state(model, state, data, split, recalibrate):
    """Load, recalibrate (unless ``recalibrate`` is False), evaluate: every time, in the model's own layout."""
    load_state_into(model, state)
    if recalibrate is not False:
        recalibrate_bn(model, recalibrate)
    return evaluate(model, data, split)


def reference_step(zoo, data, metric, recalibrate, corruptions, severity):
    """The evaluation as written first: nothing shared between evaluations."""
    model = zoo.grid[0].load_model()
    bn = train_images(data, model) if recalibrate else False

    def score(state):
        return float(evaluate_state(model, state, data, "val", bn)[metric])

    grid_states = [r.load_state() for r in zoo.grid]
    grid_scores = [score(s) for s in grid_states] if recalibrate else [r.val[metric] for r in zoo.grid]
    groups = zoo.fgg_groups()
    group_scores = [[score(g[0]) if recalibrate else b.val[metric]] + [score(s) for s in g[1:]]
                    for b, g in zip(zoo.base, groups)]
    by_lr = [[zoo.grid.index(r) for r in g] for g in zoo.grid_groups()]
    pools = {"grid": soups.Pool(grid_states, grid_scores),
             "fgg": soups.Pool([s for g in groups for s in g], [v for g in group_scores for v in g]),
             "grid by lr": soups.Pool([[grid_states[i] for i in g] for g in by_lr], [[grid_scores[i] for i in g] for g in by_lr]),
             "fgg groups": soups.Pool(groups, group_scores)}
    results = {}
    for name in soups.METHODS + soups.ABLATION:
        pool, soup = soups.SOUPS[name]
        state = soup(pools[pool], score)[0]
        results[name] = (state, evaluate_state(model, state, data, "val", bn), evaluate_state(model, state, data, "test", bn))
    ood = {name: {} for name in results}
    for corruption in corruptions:
        splits = dict(data.splits)
        splits["test"] = Split(corrupt(data.splits["test"].images, corruption, severity), data.splits["test"].labels)
        shifted = MedData(data.name, data.size, data.task, data.label_names, splits)
        for name, (state, _, _) in results.items():
            ood[name][corruption] = evaluate_state(model, state, shifted, "test", bn)
    return results, ood


def medsoup_step(zoo, data, metric, recalibrate, corruptions, severity):
    model = zoo.grid[0].load_model()
    results = soups.soup_methods(zoo, data, metric, recalibrate)
    return results, soups.ood_metrics(model, results, data, corruptions, severity, recalibrate)


def _difference(a: dict, b: dict) -> float:
    """The largest |a[k] - b[k]| over the metrics (NaN on both sides counts as equal)."""
    assert a.keys() == b.keys()
    return max(0.0 if (x != x and y != y) else abs(x - y) for x, y in ((a[k], b[k]) for k in a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke", choices=("smoke", "cpu"))
    parser.add_argument("--dataset", default="breastmnist")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats (one takes ~5 min on 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.environ["MEDSOUP_PROGRESS"] = "0"
    os.environ.setdefault("MEDSOUP_RUNS", "/tmp/medsoup_bench_runs")
    s = settings(ff.FISSIONFUSION, args.profile)
    ds, metric = args.dataset, ff.METRIC[args.dataset]
    zoo = ff.generate_zoo(s, ds, 0)
    runs = {r.key: r for r in zoo.grid + zoo.base + zoo.fission}
    for config in (ff.warmup_run(s, ds, 0), ff.pretrain_run(s, ds)):
        if not isinstance(config, str):  # "imagenet": no pre-training run
            result = run(config, progress=False)
            runs[result.key] = result
    training = sum(r.wall_time for r in runs.values())
    data = load_dataset(ds, s["size"], train_subset=s["train_subset"])
    print(f"benchmark: FissionFusion evaluation step ({args.profile} settings, {ds}, seed 0): {len(zoo.grid)} grid "
          f"models, {len(zoo.base)} FGG runs, corruptions {', '.join(s['corruptions'])}; "
          f"{len(data.splits['train'])}/{len(data.splits['val'])}/{len(data.splits['test'])} train/val/test images")
    print(f"code {code_version()}, machine {machine()}")
    print(f"zoo training time (recorded wall time of its {len(runs)} runs, pre-training and warm-up included): "
          f"{training:.1f} s")
    network = type(zoo.grid[0].load_model())
    images = [0]

    def count(module, inputs):  # images through the whole network: the forward work, whatever the load
        if type(module) is network:
            images[0] += len(inputs[0])

    torch.nn.modules.module.register_module_forward_pre_hook(count)
    times = {"medsoup": [], "reference": []}
    cpu = {"medsoup": [], "reference": []}
    work = {}
    same_soups, difference = True, 0.0
    for repeat in range(args.repeats):
        order = ("medsoup", "reference") if repeat % 2 == 0 else ("reference", "medsoup")
        outputs = {}
        for name in order:
            step = medsoup_step if name == "medsoup" else reference_step
            start, start_cpu, images[0] = time.perf_counter(), time.process_time(), 0
            outputs[name] = [step(zoo, data, metric, recalibrate, s["corruptions"], s["severity"])
                             for recalibrate in (False, True)]
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            work[name] = images[0]
        for (ours, ours_ood), (ref, ref_ood) in zip(outputs["medsoup"], outputs["reference"]):
            for method, r in ours.items():
                same_soups &= all(torch.equal(r.state[k], ref[method][0][k]) for k in r.state)
                difference = max(difference, _difference(r.val, ref[method][1]), _difference(r.test, ref[method][2]),
                                 *(_difference(ours_ood[method][c], ref_ood[method][c]) for c in s["corruptions"]))
    fast, slow = statistics.median(times["medsoup"]), statistics.median(times["reference"])
    print(f"evaluation step, median of {args.repeats} interleaved repeats: medsoup {fast:.1f} s "
          f"({100 * fast / training:.1f}% of the zoo's training), reference {slow:.1f} s "
          f"({100 * slow / training:.1f}%); speed-up {slow / fast:.2f}x")
    print(f"all repeats: medsoup {', '.join(f'{t:.1f}' for t in times['medsoup'])} s; "
          f"reference {', '.join(f'{t:.1f}' for t in times['reference'])} s")
    fast_cpu, slow_cpu = statistics.median(cpu["medsoup"]), statistics.median(cpu["reference"])
    print(f"process CPU time (less sensitive to other jobs), median: medsoup {fast_cpu:.1f} s, reference "
          f"{slow_cpu:.1f} s; ratio {slow_cpu / fast_cpu:.2f}x")
    print(f"images through the network: medsoup {work['medsoup']}, reference {work['reference']} "
          f"({work['reference'] / work['medsoup']:.2f}x)")
    print(f"same soups (every method, both BN modes): {same_soups}; largest difference of any val, test or OOD "
          f"metric: {difference:.2e}")


if __name__ == "__main__":
    main()
