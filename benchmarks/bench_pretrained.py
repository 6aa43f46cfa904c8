"""ImageNet EfficientNet-Lite0 on the CPU: which variant and input scale fit the weights, what a
training step costs against ``smallcnn``, and a linear-probe vs fine-tune probe on BreastMNIST 64 px.

Three parts, each a few minutes on a busy 2-core machine:

``variants``: the package's weights in timm's ``efficientnet_lite0`` (symmetric padding, BatchNorm
  eps 1e-5) and ``tf_efficientnet_lite0`` (TF "same" padding, eps 1e-3), fed ImageNet mean/std or
  [-1, 1] inputs (mean = std = 0.5, medsoup's ``normalise``). Criterion: how well the batch
  statistics of every BatchNorm input, over scikit-image's photographs at 224 px, agree with the
  running statistics stored with the weights (mean over channels of |batch mean - running mean| /
  running std, and of |log(batch var / running var)|; lower is a closer match to the training
  distribution), plus the top-5 classes of the cat and the coffee photograph.
``steps``: seconds per training step (forward, backward, Adam step; batch 64, 1 thread), the
  variants interleaved and the median over rounds reported, as a ratio to ``smallcnn`` at 28 px:
  Lite0 at 28 px with the stride-1 stem (medsoup's adaptation), 28 px upsampled on the fly to 56
  (same final map, stride-2 stem), 64 and 128, and 64 px images (BreastMNIST 64) as they are.
``probe``: BreastMNIST 64 px (the official ``breastmnist_64.npz``), 2 epochs (``--epochs``), seed 0,
  batch 32, ``medium`` augmentation, Adam, TrainConfig's multistep schedule (x0.1 at 50 % and 75 %),
  ``fit``'s best-validation-AUC epoch: Lite0 linear probe (ImageNet, BN frozen, lr 1e-3), Lite0
  fine-tuned (ImageNet, lr 1e-4; ``ft-fast``: 1e-3), Lite0 and ``smallcnn`` from random init (lr 1e-3).
  ``--size 28`` runs the same on 28-px images, where ``ft-fast-up56`` compares upsampling to 56 px
  (stride-2 stem) with medsoup's stride-1 stem. One seed: an indication, not a comparison.

    python benchmarks/bench_pretrained.py [--part variants|steps|probe|all] [--rounds 3] [--size 64]
                                          [--epochs 2] [--runs lp,ft,ft-fast,ft-fast-up56,scratch,smallcnn]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F
from skimage import data as skdata
from torch import nn

from medsoup.core.data import load_dataset
from medsoup.core.models import create_model
from medsoup.core.pretrained import imagenet_lite0_state
from medsoup.core.train import TrainConfig, fit
from medsoup.runs.provenance import code_version, machine

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "horse", "coins", "brick", "grass",
          "gravel", "retina", "hubble_deep_field", "immunohistochemistry", "colorwheel")
NORMALISATIONS = {"imagenet mean/std": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "[-1, 1] (mean=std=0.5)": ((0.5,) * 3, (0.5,) * 3)}


def photo(name: str, size: int = 224) -> torch.Tensor:
    """A scikit-image photograph as RGB floats in [0, 1], centre square resized to ``size`` px."""
    array = getattr(skdata, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, -1)
    x = torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    side = min(h, w)
    x = x[..., (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def bn_agreement(model: nn.Module, images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per BatchNorm layer: mean |batch mean - running mean| / running std, mean |log var ratio|."""
    means, variances = [], []

    def hook(module, inputs, _output):
        x = inputs[0]
        std = module.running_var.add(module.eps).sqrt()
        means.append(((x.mean((0, 2, 3)) - module.running_mean).abs() / std).mean().item())
        ratio = x.var((0, 2, 3)).add(module.eps) / module.running_var.add(module.eps)
        variances.append(ratio.log().abs().mean().item())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return means, variances


def part_variants() -> None:
    images = torch.cat([photo(n) for n in PHOTOS])
    state = imagenet_lite0_state()
    print(f"variants: {len(PHOTOS)} scikit-image photographs at 224 px ({', '.join(PHOTOS)})")
    print(f"{'model':24s} {'input':24s} {'|dmean|/sd first':>16s} {'all BN':>7s} {'|log var ratio|':>15s}  "
          "top-5 chelsea / coffee")
    for name in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        model = timm.create_model(name).eval()
        model.load_state_dict(state)
        for label, (mean, std) in NORMALISATIONS.items():
            x = (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
            means, variances = bn_agreement(model, x)
            with torch.no_grad():
                probs = model(x[:2]).softmax(1)
            tops = [" ".join(f"{i}:{p:.2f}" for p, i in zip(*probs[k].topk(5))) for k in range(2)]
            print(f"{name:24s} {label:24s} {means[0]:16.3f} {statistics.mean(means):7.3f} "
                  f"{statistics.mean(variances):15.3f}  {tops[0]} / {tops[1]}")


def part_steps(rounds: int, batch: int = 64) -> None:
    # (label, model, img_size the model is built for, input side, side it is upsampled to or None)
    variants = [("smallcnn 28", "smallcnn", 28, 28, None),
                ("lite0 28, stride-1 stem", "tf_efficientnet_lite0", 28, 28, None),
                ("lite0 28 -> 56 upsampled", "tf_efficientnet_lite0", 64, 28, 56),
                ("lite0 28 -> 64 upsampled", "tf_efficientnet_lite0", 64, 28, 64),
                ("lite0 28 -> 128 upsampled", "tf_efficientnet_lite0", 128, 28, 128),
                ("lite0 64 (64-px images)", "tf_efficientnet_lite0", 64, 64, None)]
    setups = []
    for _, name, size, side, _ in variants:
        torch.manual_seed(0)
        model = create_model(name, 2, 1, size)
        setups.append((model, torch.optim.Adam(model.parameters(), 1e-3),
                       torch.randn(batch, 1, side, side), torch.randint(0, 2, (batch,))))
    times: list[list[float]] = [[] for _ in variants]
    for r in range(rounds + 1):  # round 0 warms up and is discarded
        order = list(range(len(variants)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            model, optimizer, x, y = setups[i]
            up = variants[i][4]
            start = time.perf_counter()
            inputs = x if up is None else F.interpolate(x, size=(up, up), mode="bilinear", align_corners=False)
            loss = F.cross_entropy(model(inputs), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if r:
                times[i].append(time.perf_counter() - start)
    reference = statistics.median(times[0])
    print(f"steps: batch {batch}, 1 input channel, Adam, {rounds} rounds (median, order rotated)")
    print(f"{'variant':28s} {'s/step':>8s} {'min':>7s} {'max':>7s} {'/ smallcnn 28':>14s}")
    for (label, *_), values in zip(variants, times):
        print(f"{label:28s} {statistics.median(values):8.3f} {min(values):7.3f} {max(values):7.3f} "
              f"{statistics.median(values) / reference:14.2f}")


# name: (label, model, init, TrainConfig options, side the images are upsampled to or None)
PROBE_RUNS = {"lp": ("lite0 linear probe (ImageNet)", "tf_efficientnet_lite0", "imagenet",
                     dict(lr=1e-3, linear_probe=True, bn_trainable=False), None),
              "ft": ("lite0 fine-tune (ImageNet)", "tf_efficientnet_lite0", "imagenet", dict(lr=1e-4), None),
              "ft-fast": ("lite0 fine-tune (ImageNet)", "tf_efficientnet_lite0", "imagenet", dict(lr=1e-3), None),
              "ft-fast-up56": ("lite0 fine-tune, -> 56 upsampled", "tf_efficientnet_lite0", "imagenet",
                               dict(lr=1e-3), 56),
              "scratch": ("lite0 from scratch", "tf_efficientnet_lite0", None, dict(lr=1e-3), None),
              "smallcnn": ("smallcnn from scratch", "smallcnn", None, dict(lr=1e-3), None)}


def probe_model(name: str, init: str | None, num_classes: int, size: int, upsample: int | None) -> nn.Module:
    """``create_model`` at ``size`` px, or at 64 px (stride-2 stem) behind a bilinear upsampling."""
    if upsample is None:
        return create_model(name, num_classes, 1, size, pretrained=init)
    return nn.Sequential(nn.Upsample(size=(upsample, upsample), mode="bilinear", align_corners=False),
                         create_model(name, num_classes, 1, 64, pretrained=init))


def part_probe(size: int, epochs: int, names: list[str]) -> None:
    data = load_dataset("breastmnist", size)
    print(f"probe: breastmnist {size} px ({len(data.splits['train'])} train / {len(data.splits['val'])} val / "
          f"{len(data.splits['test'])} test), {epochs} epochs, seed 0, batch 32, medium augmentation, Adam")
    print(f"{'run':32s} {'lr':>7s} {'best ep':>7s} {'val auc':>8s} {'val acc':>8s} {'test auc':>8s} "
          f"{'test acc':>8s} {'wall s':>7s}")
    for label, name, init, options, upsample in (PROBE_RUNS[n] for n in names):
        torch.manual_seed(0)
        model = probe_model(name, init, data.num_classes, size, upsample)
        config = TrainConfig(epochs=epochs, batch_size=32, seed=0, device="cpu", **options)
        result = fit(model, data, config, progress=False)
        print(f"{label:32s} {config.lr:7.0e} {result.best_epoch:7d} {result.val['auc']:8.3f} {result.val['acc']:8.3f} "
              f"{result.test['auc']:8.3f} {result.test['acc']:8.3f} {result.wall_time:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("variants", "steps", "probe", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=3, help="steps: timed rounds")
    parser.add_argument("--epochs", type=int, default=2, help="probe: epochs per run")
    parser.add_argument("--size", type=int, choices=(28, 64), default=64, help="probe: BreastMNIST image size")
    parser.add_argument("--runs", default="lp,ft,scratch,smallcnn", help=f"probe: some of {','.join(PROBE_RUNS)}")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"bench_pretrained: torch {torch.__version__}, timm {timm.__version__}, 1 thread; "
          f"machine {machine()}; code {code_version()}")
    if args.part in ("variants", "all"):
        part_variants()
    if args.part in ("steps", "all"):
        part_steps(args.rounds)
    if args.part in ("probe", "all"):
        part_probe(args.size, args.epochs, args.runs.split(","))


if __name__ == "__main__":
    main()
