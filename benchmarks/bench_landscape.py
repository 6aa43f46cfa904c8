"""Benchmark: a 21 x 21 error-landscape plane with BatchNorm recalibration on RetinaMNIST.

medsoup's path (:func:`medsoup.merging.landscape.plane_landscape`): one model, the grid point written as
``c @ M`` into its parameters, BN statistics recomputed in place on pre-normalised training
batches. Reference (a straightforward implementation): per point, ``copy.deepcopy`` of the
model, a per-key state-dict combination, ``torch.optim.swa_utils.update_bn`` over a DataLoader
of the training images (same batch size), then evaluation in the model's default layout and
:func:`~medsoup.core.train.evaluate`'s default batch (medsoup lays its model out with
:func:`~medsoup.core.bn.for_evaluation`: channels-last and smaller batches on a CPU). The reference runs on ``--ref-points``
grid points sampled at random (the full grid would double the run time); its per-point time is
compared with medsoup's on the same points, the two timed alternately point by point (each going
first at every other point) so that a
shared machine's changing load affects both alike, and the numbers are checked to agree. The time
spent inside the model's forward passes (recalibration and evaluation; a hook on the model) is
reported for both, and the rest (copies, state-dict arithmetic, data handling, metrics) as a
fraction of each one's time. ``--no-full`` skips the full-grid timing.

    MEDSOUP_DATA=... python benchmarks/bench_landscape.py [--points 21] [--ref-points 42]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsoup.core.bn import for_evaluation, recalibrate_bn, train_images  # noqa: E402
from medsoup.core.data import load_dataset  # noqa: E402
from medsoup.core.train import TrainConfig, evaluate  # noqa: E402
from medsoup.merging import statedict as sd  # noqa: E402
from medsoup.merging.landscape import StateMixer, flatten, plane_basis, plane_grid, plane_landscape  # noqa: E402
from medsoup.runs.provenance import code_version, machine  # noqa: E402
from medsoup.runs.store import RunConfig, run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=21)
    parser.add_argument("--ref-points", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of each of the three models")
    parser.add_argument("--no-full", action="store_true", help="skip timing the full grid")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cache = os.environ.get("MEDSOUP_RUNS", "/tmp/medsoup_bench_runs")
    configs = [RunConfig(dataset="retinamnist", model="smallcnn",
                         train=TrainConfig(epochs=args.epochs, optimizer="adamw", lr=1e-3, weight_decay=1e-4,
                                           schedule="cosine", select_metric="f1", seed=seed, device="cpu"))
               for seed in range(3)]
    results = [run(c, cache, progress=False) for c in configs]
    states = [r.load_state() for r in results]
    model = results[0].load_model()
    plain = copy.deepcopy(model)  # the reference's model, in its default layout
    data = load_dataset("retinamnist", device="cpu")
    print(f"benchmark: {args.points} x {args.points} plane through 3 smallcnn models on RetinaMNIST "
          f"({len(data.splits['train'])} training images for BN, {len(data.splits['val'])} validation images)")
    print(f"code {code_version()}, machine {machine()}")

    if not args.no_full:
        start = time.perf_counter()
        scape = plane_landscape(model, states, data, points=args.points, recalibrate=True)
        fast_total = time.perf_counter() - start
        print(f"medsoup plane_landscape: {fast_total:.1f} s for {args.points ** 2} points "
              f"({1000 * fast_total / args.points ** 2:.1f} ms/point)")
        errors = 1 - scape.values("acc")
        print(f"validation error over the grid: min {errors.min():.3f}, max {errors.max():.3f}")

    keys = [k for k, _ in model.named_parameters()]
    plane = plane_basis(*(flatten(s, keys) for s in states))
    xs, ys = plane_grid(plane, args.points)
    rng = np.random.default_rng(0)
    sample = rng.choice(args.points ** 2, size=min(args.ref_points, args.points ** 2), replace=False)
    coefficients = [plane.coefficients(xs[int(f) % args.points], ys[int(f) // args.points]) for f in sample]
    images = torch.cat(train_images(data, model))
    loader = DataLoader(TensorDataset(images), batch_size=256, shuffle=False)
    batches = train_images(data, model)
    options = for_evaluation(model)  # what plane_landscape does, before the mixer takes the tensors
    mixer = StateMixer(model, states, keys)
    forward = [0.0, None]  # seconds inside the model's forward, start of the current call

    def enter(module, inputs):
        forward[1] = time.perf_counter()

    def leave(module, inputs, output):
        forward[0] += time.perf_counter() - forward[1]

    for network in (model, plain):
        network.register_forward_pre_hook(enter)
        network.register_forward_hook(leave)  # copied along with ``plain`` by the reference's deepcopy
    fast_time = ref_time = fast_forward = ref_forward = 0.0
    differences = []
    for index, c in enumerate(coefficients):
        for name in ("medsoup", "reference") if index % 2 == 0 else ("reference", "medsoup"):  # alternate who goes first
            forward[0] = 0.0
            start = time.perf_counter()
            if name == "medsoup":
                mixer.load(c)
                recalibrate_bn(model, batches)
                ours = evaluate(model, data, "val", **options)["loss"]
                fast_time += time.perf_counter() - start
                fast_forward += forward[0]
            else:
                point = sd.weighted_sum(states, c)
                reference = copy.deepcopy(plain)
                reference.load_state_dict({k: point[k] if k in keys else states[0][k] for k in point})
                update_bn(loader, reference)
                theirs = evaluate(reference, data, "val")["loss"]
                ref_time += time.perf_counter() - start
                ref_forward += forward[0]
        differences.append(abs(ours - theirs))
    n = len(coefficients)
    print(f"interleaved on {n} sampled points: medsoup {1000 * fast_time / n:.1f} ms/point, reference "
          f"(deepcopy + state-dict arithmetic + update_bn) {1000 * ref_time / n:.1f} ms/point")
    print(f"time outside the forward passes: medsoup {1000 * (fast_time - fast_forward) / n:.1f} ms/point "
          f"({100 * (1 - fast_forward / fast_time):.1f}% of its time), reference "
          f"{1000 * (ref_time - ref_forward) / n:.1f} ms/point ({100 * (1 - ref_forward / ref_time):.1f}%); "
          f"forward passes {1000 * fast_forward / n:.1f} vs {1000 * ref_forward / n:.1f} ms/point")
    print(f"speed-up (reference / medsoup): {ref_time / fast_time:.2f}x; full grid at these rates: medsoup "
          f"{fast_time / n * args.points ** 2:.0f} s, reference {ref_time / n * args.points ** 2:.0f} s")
    print(f"agreement: max |val loss difference| = {max(differences):.2e}")


if __name__ == "__main__":
    main()
