"""Training throughput of ``medsoup.core.train.fit`` against a bare loop, measured in the same run.

For each model spec ``name@size`` (``--models``), on ``--device``:

1. ``bare loop``: a plain PyTorch loop over the same resident ``uint8`` tensors: the same model,
   batch size 128, AdamW, the same ``medium`` augmentation done the same way (normalise and
   ``medsoup.core.augment.augment_batch`` on the batch tensor, random numbers drawn by a seeded
   generator on the device, as fit draws them), bfloat16 autocast on CUDA as fit's ``amp``, and
   nothing else: no learning-rate schedule, finite-loss check, callbacks or progress bar.
2. ``fit``: :func:`~medsoup.core.train.fit` with the same settings (``schedule="constant"``).
   Target on CUDA: fit / bare >= 0.95 for every spec (the host waits per step are gone).

With ``--extras`` (28 px specs only) two more variants: ``fit progress=True`` and MedMNIST's own
path (``medmnist.PneumoniaMNIST`` with PIL transforms, a random flip and a reflect-padded random
crop, i.e. the same augmentation, through a ``DataLoader`` with ``num_workers=0``).

Data: PneumoniaMNIST, a stratified training subset. At a size whose official file is not in the
data folder the 28 px images are resized (bilinear) on load: throughput does not depend on the
pixels. ``tf_efficientnet_lite0`` is built with ``pretrained="imagenet"`` (offline,
:mod:`medsoup.core.pretrained`); smallcnn takes 1 channel, the timm models 3 (grayscale repeated,
the run layer's default). Only training steps are timed: fit's per-epoch validation is excluded by
timing from the start of each epoch to its last ``on_step_end`` (a callback, which synchronises
the device there); fit's whole call, validation on a small split included, is reported as well.
The variants are interleaved, their order rotated each round, and the median over rounds is
reported, to damp the noise of a shared machine.

    python benchmarks/bench_fit.py [--device cpu] [--models smallcnn@28,resnet18@28,...] [--rounds 5]
        [--epochs 2] [--subset 1024] [--threads 1] [--extras]
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
from medsoup.core.data import MedData, Split, data_root, file_name, load_dataset, stratified_indices
from medsoup.core.models import create_model
from medsoup.core.train import Callback, TrainConfig, fit
from medsoup.runs.provenance import code_version, machine

DATASET = "pneumoniamnist"
BATCH = 128
LR = 1e-3
CUDA_MODELS = "smallcnn@28,resnet18@28,resnet50@224,tf_efficientnet_lite0@224"
CPU_MODELS = "smallcnn@28,tf_efficientnet_lite0@28,tf_efficientnet_lite0@64"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(Callback):
    """Seconds spent in training steps: from each epoch's start to its last ``on_step_end``."""

    def __init__(self, steps_per_epoch: int, device: torch.device):
        self.steps_per_epoch, self.device, self.seconds = steps_per_epoch, device, 0.0

    def on_fit_start(self, model, steps_per_epoch, total_steps):
        synchronize(self.device)
        self.start = time.perf_counter()

    def on_step_end(self, model, step):
        if (step + 1) % self.steps_per_epoch == 0:
            synchronize(self.device)
            self.seconds += time.perf_counter() - self.start

    def on_epoch_end(self, model, epoch, record):
        synchronize(self.device)
        self.start = time.perf_counter()


def spec_parts(spec: str) -> tuple[str, int, int]:
    """``name@size`` -> (name, size, input channels)."""
    name, _, size = spec.partition("@")
    return name, int(size or 28), 1 if name == "smallcnn" else 3


def fresh_model(spec: str, seed: int, device: torch.device) -> torch.nn.Module:
    name, size, in_chans = spec_parts(spec)
    torch.manual_seed(seed)
    pretrained = "imagenet" if name == "tf_efficientnet_lite0" else None
    return create_model(name, 2, in_chans, size, pretrained=pretrained).to(device)


def load_data(size: int, subset: int, eval_size: int, device: torch.device) -> tuple[MedData, torch.Tensor]:
    """PneumoniaMNIST at ``size`` px (resized from 28 px when the official file is absent) on ``device``."""
    official = (data_root() / file_name(DATASET, size)).is_file()
    full = load_dataset(DATASET, size if official else 28)
    keep = stratified_indices(full.splits["train"].labels, subset, seed=0)
    picks = {"train": keep, "val": slice(0, eval_size), "test": slice(0, eval_size)}

    def split(name: str) -> Split:
        images = full.splits[name].images[picks[name]]
        if images.shape[-1] != size:
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
            images = images.round().clamp(0, 255).to(torch.uint8)
        return Split(images, full.splits[name].labels[picks[name]])

    splits = {name: split(name) for name in picks}
    return MedData(full.name, size, full.task, full.label_names, splits).to(device), keep


def run_fit(spec: str, data: MedData, epochs: int, seed: int, progress: bool,
            device: torch.device) -> tuple[float, float]:
    """(training-step seconds, whole-call seconds) of ``fit``."""
    config = TrainConfig(epochs=epochs, batch_size=BATCH, optimizer="adamw", lr=LR, schedule="constant",
                         augment="medium", device=str(device), seed=seed, amp=True)
    timer = StepTimer(-(-len(data.splits["train"]) // BATCH), device)
    model = fresh_model(spec, seed, device)
    synchronize(device)
    started = time.perf_counter()
    sink = io.StringIO()  # progress bars and epoch lines cost their formatting, not a terminal
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        fit(model, data, config, [timer], progress=progress)
    synchronize(device)
    return timer.seconds, time.perf_counter() - started


def run_bare(spec: str, data: MedData, epochs: int, seed: int, device: torch.device) -> float:
    """A plain loop over the resident tensors with the same batching and augmentation."""
    model = fresh_model(spec, seed, device)
    in_chans = spec_parts(spec)[2]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    images, labels = data.splits["train"].images, data.splits["train"].labels[:, 0].long()
    generator = torch.Generator(device=device).manual_seed(seed)
    model.train()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator, device=device)
        for start in range(0, len(images), BATCH):
            index = order[start:start + BATCH]
            x = augment_batch(normalise(images[index], in_chans), "medium", generator)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    synchronize(device)
    return time.perf_counter() - started


def medmnist_loader(indices: torch.Tensor, seed: int) -> DataLoader:
    shift = 28 // 8  # medsoup's ``medium`` level: flip and up to 1/8 of the side
    transform = transforms.Compose([transforms.RandomHorizontalFlip(),
                                    transforms.RandomCrop(28, padding=shift, padding_mode="reflect"),
                                    transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])])
    dataset = medmnist.PneumoniaMNIST(split="train", transform=transform, root=str(data_root()), size=28)
    return DataLoader(Subset(dataset, indices.tolist()), batch_size=BATCH, shuffle=True, num_workers=0,
                      generator=torch.Generator().manual_seed(seed))


def run_medmnist(spec: str, loader: DataLoader, epochs: int, seed: int, device: torch.device) -> float:
    model = fresh_model(spec, seed, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            x = x.to(device).expand(-1, spec_parts(spec)[2], -1, -1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y[:, 0].long().to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    synchronize(device)
    return time.perf_counter() - started


def bench_spec(spec: str, args, device: torch.device) -> None:
    size = spec_parts(spec)[1]
    data, keep = load_data(size, args.subset, args.eval_size, device)
    variants = {"bare loop": lambda: run_bare(spec, data, args.epochs, 0, device),
                "fit": lambda: run_fit(spec, data, args.epochs, 0, False, device)}
    if args.extras and size == 28:
        loader = medmnist_loader(keep, seed=0)
        variants["fit progress=True"] = lambda: run_fit(spec, data, args.epochs, 0, True, device)
        variants["medmnist DataLoader"] = lambda: run_medmnist(spec, loader, args.epochs, 0, device)
    for variant in variants.values():  # warm-up: allocator, kernels, first-file reads
        variant()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            measured = variants[name]()
            if isinstance(measured, tuple):
                seconds[name].append(measured[0])
                seconds.setdefault(f"{name} (whole call)", []).append(measured[1])
            else:
                seconds[name].append(measured)

    n_images = args.epochs * len(keep)
    rate = {name: [n_images / s for s in values] for name, values in seconds.items()}
    print(f"\n{spec}: {len(keep)} training images x {args.epochs} epochs per measurement, "
          f"{args.rounds} rounds (median)")
    print(f"{'variant':34s} {'images/s (median)':>18s} {'min':>9s} {'max':>9s}")
    for name, values in rate.items():
        print(f"{name:34s} {statistics.median(values):18.1f} {min(values):9.1f} {max(values):9.1f}")

    def ratio(a: str, b: str) -> float:  # median of the per-round ratios (same round = similar load)
        return statistics.median(x / y for x, y in zip(rate[a], rate[b]))

    target = "   (target >= 0.95 on CUDA)" if device.type == "cuda" else ""
    print(f"{spec} fit / bare loop (training steps): {ratio('fit', 'bare loop'):.3f}{target}")
    print(f"{spec} fit whole call ({args.eval_size} val/test images) / bare: "
          f"{ratio('fit (whole call)', 'bare loop'):.3f}")
    if "fit progress=True" in rate:
        print(f"{spec} fit progress=True / bare loop: {ratio('fit progress=True', 'bare loop'):.3f}")
        print(f"{spec} fit / medmnist Dataset + DataLoader: {ratio('fit', 'medmnist DataLoader'):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1")
    parser.add_argument("--models", default=None,
                        help=f"comma-separated name@size; default {CPU_MODELS} on CPU, {CUDA_MODELS} on CUDA")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=1024, help="training images per epoch")
    parser.add_argument("--eval-size", type=int, default=128, help="validation/test images fit evaluates")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--extras", action="store_true",
                        help="also fit progress=True and the medmnist DataLoader path (28 px specs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    specs = (args.models or (CUDA_MODELS if device.type == "cuda" else CPU_MODELS)).split(",")
    print(f"bench_fit: {DATASET}, batch {BATCH}, AdamW, 'medium' augmentation, device {device}"
          f"{' (bf16 autocast)' if device.type == 'cuda' else ''}; models {', '.join(specs)}")
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"torch {torch.__version__}, {args.threads} thread(s); machine {machine()}{gpu}; code {code_version()}")
    for spec in specs:
        bench_spec(spec, args, device)


if __name__ == "__main__":
    main()
