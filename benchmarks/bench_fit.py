"""Training throughput of ``medsoup.core.train.fit`` against two references, measured in the same run.

1. A bare PyTorch loop over the same pre-loaded ``uint8`` tensors: the same model (``smallcnn``),
   batch size 128, AdamW, the same ``medium`` augmentation done the same way (normalise and
   ``medsoup.core.augment.augment_batch`` on the batch tensor), and nothing else: no learning-rate
   schedule, finite-loss check, callbacks or progress bar. Target: fit / bare >= 0.9.
2. MedMNIST's own path: ``medmnist.PneumoniaMNIST`` with PIL transforms (random flip and a
   3-pixel reflect-padded random crop, i.e. the same augmentation, then ``ToTensor`` and
   ``Normalize(.5, .5)``) through a ``torch.utils.data.DataLoader`` with ``num_workers=0``.

PneumoniaMNIST 28 px (the official file from ``$MEDSOUP_DATA``), a stratified training subset.
Only the training steps are timed: fit's per-epoch validation is excluded by timing from the
start of each epoch to its last ``on_step_end`` (a callback); fit's whole call, validation on a
small split included, is reported as well. The variants are interleaved, their order rotated each
round, and the median over rounds is reported, to damp the noise of a shared machine.

    python benchmarks/bench_fit.py [--rounds 5] [--epochs 2] [--subset 1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import medmnist
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from medsoup.core.augment import augment_batch, normalise
from medsoup.core.data import MedData, Split, data_root, load_dataset, stratified_indices
from medsoup.core.models import create_model
from medsoup.core.train import Callback, TrainConfig, fit
from medsoup.runs.provenance import code_version, machine

DATASET = "pneumoniamnist"
BATCH = 128
LR = 1e-3


class StepTimer(Callback):
    """Seconds spent in training steps: from each epoch's start to its last ``on_step_end``."""

    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch, self.seconds = steps_per_epoch, 0.0

    def on_fit_start(self, model, steps_per_epoch, total_steps):
        self.start = time.perf_counter()

    def on_step_end(self, model, step):
        if (step + 1) % self.steps_per_epoch == 0:
            self.seconds += time.perf_counter() - self.start

    def on_epoch_end(self, model, epoch, record):
        self.start = time.perf_counter()


def fresh_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("smallcnn", 2, in_chans=1)


def run_fit(data: MedData, epochs: int, seed: int, progress: bool) -> tuple[float, float]:
    """(training-step seconds, whole-call seconds) of ``fit``."""
    config = TrainConfig(epochs=epochs, batch_size=BATCH, optimizer="adamw", lr=LR, schedule="constant",
                         augment="medium", device="cpu", seed=seed, amp=False)
    timer = StepTimer(-(-len(data.splits["train"]) // BATCH))
    model = fresh_model(seed)
    started = time.perf_counter()
    sink = io.StringIO()  # progress bars and epoch lines cost their formatting, not a terminal
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        fit(model, data, config, [timer], progress=progress)
    return timer.seconds, time.perf_counter() - started


def run_bare(data: MedData, epochs: int, seed: int) -> float:
    """A plain loop over the resident tensors with the same batching and augmentation."""
    model = fresh_model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    images, labels = data.splits["train"].images, data.splits["train"].labels[:, 0].long()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), BATCH):
            index = order[start:start + BATCH]
            x = augment_batch(normalise(images[index]), "medium", generator)
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def medmnist_loader(indices: torch.Tensor, seed: int) -> DataLoader:
    shift = 28 // 8  # medsoup's ``medium`` level: flip and up to 1/8 of the side
    transform = transforms.Compose([transforms.RandomHorizontalFlip(),
                                    transforms.RandomCrop(28, padding=shift, padding_mode="reflect"),
                                    transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])
    dataset = medmnist.PneumoniaMNIST(split="train", transform=transform, root=str(data_root()), size=28)
    return DataLoader(Subset(dataset, indices.tolist()), batch_size=BATCH, shuffle=True, num_workers=0,
                      generator=torch.Generator().manual_seed(seed))


def run_medmnist(loader: DataLoader, epochs: int, seed: int) -> float:
    model = fresh_model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y[:, 0].long())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=1024, help="training images per epoch")
    parser.add_argument("--eval-size", type=int, default=128, help="validation/test images fit evaluates")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    full = load_dataset(DATASET)
    keep = stratified_indices(full.splits["train"].labels, args.subset, seed=0)
    small = {s: Split(full.splits[s].images[:args.eval_size], full.splits[s].labels[:args.eval_size]) for s in ("val", "test")}
    data = MedData(full.name, full.size, full.task, full.label_names,
                   {"train": Split(full.splits["train"].images[keep], full.splits["train"].labels[keep]), **small})
    loader = medmnist_loader(keep, seed=0)
    n_images = args.epochs * len(keep)

    variants = {
        "bare loop": lambda: run_bare(data, args.epochs, 0),
        "fit": lambda: run_fit(data, args.epochs, 0, progress=False),
        "fit progress=True": lambda: run_fit(data, args.epochs, 0, progress=True),
        "medmnist DataLoader": lambda: run_medmnist(loader, args.epochs, 0),
    }
    for variant in variants.values():  # warm-up: allocator, kernels, first-file reads
        variant()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    seconds["fit (whole call)"], seconds["fit progress=True (whole call)"] = [], []
    names = list(variants)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            measured = variants[name]()
            if isinstance(measured, tuple):
                seconds[name].append(measured[0])
                seconds[f"{name} (whole call)"].append(measured[1])
            else:
                seconds[name].append(measured)

    rate = {name: [n_images / s for s in values] for name, values in seconds.items()}
    print(f"bench_fit: {DATASET} 28 px, smallcnn, batch {BATCH}, AdamW, 'medium' augmentation, "
          f"{len(keep)} training images x {args.epochs} epochs per measurement, {args.rounds} rounds (median)")
    print(f"torch {torch.__version__}, {args.threads} thread(s); machine {machine()}; code {code_version()}")
    print(f"{'variant':34s} {'images/s (median)':>18s} {'min':>8s} {'max':>8s}")
    for name, values in rate.items():
        print(f"{name:34s} {statistics.median(values):18.1f} {min(values):8.1f} {max(values):8.1f}")

    def ratio(a: str, b: str) -> float:  # median of the per-round ratios (same round = similar load)
        return statistics.median(x / y for x, y in zip(rate[a], rate[b]))

    print(f"fit / bare loop (training steps):          {ratio('fit', 'bare loop'):.3f}   (target >= 0.9)")
    print(f"fit progress=True / bare loop:             {ratio('fit progress=True', 'bare loop'):.3f}")
    print(f"fit whole call ({args.eval_size} val/test images) / bare: {ratio('fit (whole call)', 'bare loop'):.3f}")
    print(f"fit / medmnist Dataset + DataLoader:       {ratio('fit', 'medmnist DataLoader'):.3f}")


if __name__ == "__main__":
    main()
