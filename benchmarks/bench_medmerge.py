"""MedMerge's LP step against the LP step of a single backbone, measured in one run; and baking.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_medmerge.py [--models smallcnn resnet18] [--rounds 7]

One LP step = forward, cross-entropy, backward and an AdamW step, at batch 128 on 28 px images:

* single backbone: the head and BatchNorm trainable (:func:`medsoup.core.train.trainable_parameters`
  with ``linear_probe=True``, ``bn_trainable=True``), the LP stage of LP-FT;
* MedMerge: :class:`~medsoup.merging.medmerge.MedMergeModel` (w, BatchNorm and head trainable; the merged
  kernels are recomputed from both frozen sources at every step);
* for reference, a full fine-tuning step of the single backbone: MedMerge needs the gradient of
  every merged kernel (to reach its w), which a head-and-BN linear probe never computes.

Rounds alternate the two so that machine load hits both alike; per-step times are medians.
Memory at the peak of a step (after the forward, before the backward), counted tensor by tensor on
any device: parameters and buffers of the model (MedMerge holds both sources), the optimizer's
state, and the activations saved for the backward (``torch.autograd.graph.saved_tensors_hooks``);
on CUDA also ``max_memory_allocated``.
Baking (:func:`~medsoup.merging.medmerge.baked_state`) is timed against one pass that clones the plain
model's state dict.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from medsoup.core.models import create_model
from medsoup.core.train import TrainConfig, make_optimizer, trainable_parameters
from medsoup.merging.medmerge import MedMergeModel, baked_state
from medsoup.runs.provenance import code_version

BATCH, SIZE, CLASSES = 128, 28, 5


def models(name: str, device: torch.device):
    """(single backbone ready for LP, MedMerge model) on ``device``."""
    torch.manual_seed(0)
    b, c = create_model(name, 2), create_model(name, 3)
    arch = {"name": name, "num_classes": CLASSES, "in_chans": 3, "img_size": SIZE}
    merged = MedMergeModel(create_model(name, CLASSES), b.state_dict(), c.state_dict(), arch)
    single = create_model(name, CLASSES)
    return single.to(device), merged.to(device)


def stepper(model, device, linear_probe: bool):
    params = trainable_parameters(model, TrainConfig(linear_probe=linear_probe, bn_trainable=True))
    optimizer = make_optimizer(params, TrainConfig(optimizer="adamw", lr=1e-4))
    x = torch.randn(BATCH, 3, SIZE, SIZE, device=device)
    y = torch.randint(0, CLASSES, (BATCH,), device=device)
    model.train()

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    step.optimizer = optimizer
    return step, sum(p.numel() for p in params)


def timed(step, n: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def peak_tensor_mib(model, step) -> float:
    """MiB held at the peak of a step: model tensors, optimizer state, activations saved for backward."""
    step()  # creates the optimizer state
    saved = []

    def pack(t):
        saved.append(t.untyped_storage())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    storages = {s.data_ptr(): s.nbytes() for s in saved}
    model_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for t in list(model.parameters()) + list(model.buffers()):
        storages.pop(t.untyped_storage().data_ptr(), None)  # already counted with the model
    optimizer_bytes = sum(v.numel() * v.element_size() for state in step.optimizer.state.values()
                          for v in state.values() if torch.is_tensor(v))
    return (model_bytes + optimizer_bytes + sum(storages.values())) / 2**20


def bench(name: str, rounds: int, steps: int, device) -> dict:
    single, merged = models(name, device)
    step_single, n_single = stepper(single, device, linear_probe=True)
    step_merged, n_merged = stepper(merged, device, linear_probe=False)
    full = create_model(name, CLASSES).to(device)
    step_full, _ = stepper(full, device, linear_probe=False)
    kinds = {"single": step_single, "medmerge": step_merged, "full_ft": step_full}
    for step in kinds.values():
        timed(step, 2, device)
    times = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind, step in kinds.items():
            times[kind].append(timed(step, steps, device))
    single_s, merged_s, full_s = (statistics.median(times[k]) for k in kinds)
    row = {"model": name, "single_ms": 1e3 * single_s, "medmerge_ms": 1e3 * merged_s, "ratio": merged_s / single_s,
           "full_ft_ms": 1e3 * full_s, "ratio_to_full_ft": merged_s / full_s,
           "trainable_single": n_single, "trainable_medmerge": n_merged,
           "backbone_params": sum(p.numel() for p in single.parameters())}
    for kind, model, step in (("single", single, step_single), ("medmerge", merged, step_merged)):
        row[f"peak_{kind}_mib"] = peak_tensor_mib(model, step)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            timed(step, 2, device)
            row[f"cuda_peak_{kind}_mib"] = torch.cuda.max_memory_allocated() / 2**20
    plain = create_model(name, CLASSES).to(device)
    bake_times, pass_times = [], []
    for _ in range(rounds):
        bake_times.append(timed(lambda: baked_state(merged), 3, device))
        pass_times.append(timed(lambda: {k: v.clone() for k, v in plain.state_dict().items()}, 3, device))
    row.update(bake_ms=1e3 * statistics.median(bake_times), state_pass_ms=1e3 * statistics.median(pass_times))
    row["bake_ratio"] = row["bake_ms"] / row["state_pass_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smallcnn", "resnet18"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(2)
    print(f"medsoup {code_version()}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"device {device}, threads {torch.get_num_threads()}, batch {BATCH} x 3 x {SIZE} x {SIZE}, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print("peak MiB: model tensors + optimizer state + activations saved for backward, at the peak of a step")
    header = (f"{'model':10s} {'single LP ms':>12s} {'MedMerge ms':>12s} {'ratio':>6s} {'full FT ms':>10s} "
              f"{'MM/FT':>6s} {'trainable single':>16s} "
              f"{'trainable MM':>12s} {'peak single MiB':>15s} {'peak MM MiB':>11s} {'bake ms':>8s} "
              f"{'state pass ms':>13s} {'bake ratio':>10s}")
    print(header)
    rows = []
    for name in args.models:
        r = bench(name, args.rounds, args.steps, device)
        rows.append(r)
        print(f"{r['model']:10s} {r['single_ms']:12.1f} {r['medmerge_ms']:12.1f} {r['ratio']:6.2f} "
              f"{r['full_ft_ms']:10.1f} {r['ratio_to_full_ft']:6.2f} "
              f"{r['trainable_single']:16d} {r['trainable_medmerge']:12d} {r['peak_single_mib']:15.1f} "
              f"{r['peak_medmerge_mib']:11.1f} {r['bake_ms']:8.2f} {r['state_pass_ms']:13.2f} {r['bake_ratio']:10.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
