"""Fast Geometric Generation (FissionFusion, Sec. 2) and the run configs of the chapter's zoo.

FGG ("fission"): from a linear-probed model theta_0, train one base model theta_t per learning
rate; from each, train again with the cyclical rate alpha(i) (:func:`medsoup.schedules.cyclical_lr`,
between alpha_1 and alpha_2) and keep the weights at every iteration where alpha(i) = alpha_2
(:class:`CycleSnapshots`). Each group {theta_t, snapshots} is later souped hierarchically
(:func:`medsoup.soups.hierarchical_soup`).

The zoo goes through :mod:`medsoup.runs`: every model is a cached, resumable :class:`RunConfig`,
so generating it resumes after an interruption and spreads over any executor with ``run_many``.

Scale, against the paper: no ImageNet weights offline, so the pre-trained model is a ``smallcnn``
trained from scratch on another MedMNIST dataset (:data:`SOURCE`); theta_0 is a linear probe on
top of it (frozen BatchNorm), as the paper's 10-epoch warm-up on ImageNet weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medsoup.profiles import CPU_DATASETS
from medsoup.runs import RunConfig
from medsoup.schedules import cycle_length, is_cycle_minimum
from medsoup.train import Callback, TrainConfig

#: The metric each dataset is selected and reported by, after the paper's analogue (APTOS: F1,
#: RSNA Pneumonia: F1); BreastMNIST uses AUC, its 78 validation images make F1 very coarse.
METRIC = {"retinamnist": "f1", "pneumoniamnist": "f1", "breastmnist": "auc"}
#: The dataset the stand-in "pre-trained" model is trained on, for each target dataset.
SOURCE = {"breastmnist": "pneumoniamnist", "retinamnist": "pneumoniamnist", "pneumoniamnist": "retinamnist"}

FISSIONFUSION: dict[str, dict] = {
    "smoke": dict(datasets=("breastmnist",), seeds=(0,), grid_seeds=2, model="smallcnn", size=28,
                  train_subset=128, source_subset=512, pretrain_epochs=1, lp_epochs=1, lp_lr=1e-3,
                  epochs=2, lrs=(1e-3, 1e-4), augments=("medium", "heavy"), batch_size=64,
                  weight_decay=1e-4, fgg_augment="heavy", fgg_snapshots=2, fgg_cycle_epochs=2.0,
                  fgg_lr_max=1e-4, fgg_lr_min=1e-7, corruptions=("gaussian_noise", "contrast_down"),
                  severity=3, grid_points=5, lmc_points=5, bn_images=512),
    "cpu": dict(datasets=CPU_DATASETS, seeds=(0, 1, 2), grid_seeds=2, model="smallcnn", size=28,
                train_subset=1000, source_subset=2000, pretrain_epochs=8, lp_epochs=3, lp_lr=1e-3,
                epochs=6, lrs=(3e-3, 1e-3, 3e-4, 1e-4), augments=("medium", "heavy"),
                batch_size=128, weight_decay=1e-4, fgg_augment="heavy", fgg_snapshots=5,
                fgg_cycle_epochs=1.0, fgg_lr_max=1e-4, fgg_lr_min=1e-7,
                corruptions=("gaussian_noise", "speckle_noise", "gaussian_blur", "brightness_down",
                             "contrast_down", "pixelate"),
                severity=3, grid_points=11, lmc_points=11, bn_images=1024),
    "paper": dict(datasets=CPU_DATASETS, seeds=(0, 1, 2), grid_seeds=2, model="resnet50", size=224,
                  train_subset=None, source_subset=None, pretrain_epochs=0, lp_epochs=10, lp_lr=1e-3,
                  epochs=50, lrs=(1e-3, 5e-4, 1e-4, 5e-5, 1e-5, 5e-6, 1e-6, 1e-7),
                  augments=("minimal", "medium", "heavy"), batch_size=128, weight_decay=1e-4,
                  fgg_augment="heavy", fgg_snapshots=5, fgg_cycle_epochs=4.0, fgg_lr_max=1e-5,
                  fgg_lr_min=1e-8,
                  corruptions=("gaussian_noise", "speckle_noise", "gaussian_blur", "brightness_down",
                               "contrast_down", "pixelate"),
                  severity=3, grid_points=21, lmc_points=21, bn_images=None),
}


class CycleSnapshots(Callback):
    """Keep the model's state at every iteration where the cyclical rate is at its minimum.

    ``cycle_epochs`` must equal the run's ``TrainConfig.cycle_epochs`` (:func:`fgg_run` sets
    both). The snapshots are stored with the run as artifacts ``snapshot_0``, ``snapshot_1``, ...
    and are part of the resumable training state.
    """

    def __init__(self, cycle_epochs: float):
        if cycle_epochs <= 0:
            raise ValueError(f"cycle_epochs must be positive, got {cycle_epochs}")
        self.cycle_epochs = float(cycle_epochs)
        self.cycle = 0
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def on_fit_start(self, model: nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        self.cycle = cycle_length(self.cycle_epochs, steps_per_epoch)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if is_cycle_minimum(step + 1, self.cycle):
            self.snapshots.append({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{i}.{k}": v for i, snap in enumerate(self.snapshots) for k, v in snap.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        snapshots: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in state.items():
            index, key = name.split(".", 1)
            snapshots.setdefault(int(index), {})[key] = value
        self.snapshots = [snapshots[i] for i in sorted(snapshots)]

    def artifacts(self) -> dict[str, dict[str, torch.Tensor]]:
        return {f"snapshot_{i}": snap for i, snap in enumerate(self.snapshots)}


def fgg_epochs(snapshots: int, cycle_epochs: float) -> int:
    """Epochs for ``snapshots`` cycle minima: they fall at half a cycle, then every cycle, so
    (snapshots - 1/2) cycles, rounded up. When that is a whole number of epochs and a cycle is an
    even number of iterations, the last minimum is the final iteration."""
    return max(1, math.ceil((snapshots - 0.5) * cycle_epochs - 1e-9))


def _train(s: dict, dataset: str, **changes) -> TrainConfig:
    base = dict(epochs=s["epochs"], batch_size=s["batch_size"], optimizer="adamw", weight_decay=s["weight_decay"],
                schedule="cosine", select_metric=METRIC.get(dataset, "auc"))
    return TrainConfig(**{**base, **changes})


def pretrain_run(s: dict, dataset: str) -> RunConfig | str:
    """The stand-in pre-trained model: trained from scratch on ``SOURCE[dataset]`` (cpu/smoke), or
    ``"imagenet"`` when the profile's ``pretrain_epochs`` is 0 (paper)."""
    if s["pretrain_epochs"] == 0:
        return "imagenet"
    source = SOURCE[dataset]
    train = _train(s, source, epochs=s["pretrain_epochs"], lr=1e-3, augment="medium", schedule="multistep",
                   select_metric="auc", seed=0)
    return RunConfig(dataset=source, size=s["size"], model=s["model"], train=train, train_subset=s["source_subset"])


def warmup_run(s: dict, dataset: str, seed: int) -> RunConfig:
    """theta_0: linear probing (head only, BatchNorm frozen) on top of the pre-trained model."""
    train = _train(s, dataset, epochs=s["lp_epochs"], lr=s["lp_lr"], linear_probe=True, bn_trainable=False,
                   augment="none", seed=seed)
    return RunConfig(dataset=dataset, size=s["size"], model=s["model"], init=pretrain_run(s, dataset),
                     train=train, train_subset=s["train_subset"])


def grid_run(s: dict, dataset: str, seed: int, lr: float, augment: str, replicate: int) -> RunConfig:
    """One grid-search model: full fine-tuning from theta_0 (AdamW, cosine)."""
    return warmup_run(s, dataset, seed).replace(
        init=warmup_run(s, dataset, seed),
        train=_train(s, dataset, lr=lr, augment=augment, seed=seed * s["grid_seeds"] + replicate))


def grid_runs(s: dict, dataset: str, seed: int) -> list[RunConfig]:
    """The grid search of model soups: learning rates x augmentations x ``grid_seeds`` seeds."""
    return [grid_run(s, dataset, seed, lr, augment, r)
            for lr in s["lrs"] for augment in s["augments"] for r in range(s["grid_seeds"])]


def base_runs(s: dict, dataset: str, seed: int) -> list[RunConfig]:
    """FGG's theta_t: one model per learning rate, ``fgg_augment`` and one seed (these are also
    grid-search models when ``fgg_augment`` is in the grid, and then come from the run cache)."""
    return [grid_run(s, dataset, seed, lr, s["fgg_augment"], 0) for lr in s["lrs"]]


def fgg_run(s: dict, base: RunConfig) -> RunConfig:
    """The fission stage from one base model: cyclical rate between ``fgg_lr_max`` (alpha_1) and
    ``fgg_lr_min`` (alpha_2), snapshots at its minima, the last iterate kept (no best-epoch restore)."""
    cycle = s["fgg_cycle_epochs"]
    train = base.train.replace(epochs=fgg_epochs(s["fgg_snapshots"], cycle), schedule="cyclical",
                               lr=s["fgg_lr_max"], min_lr=s["fgg_lr_min"], cycle_epochs=cycle,
                               augment=s["fgg_augment"], restore_best=False)
    return base.replace(init=base, train=train, callbacks=(("cycle_snapshots", {"cycle_epochs": cycle}),))


def fgg_runs(s: dict, dataset: str, seed: int) -> list[RunConfig]:
    return [fgg_run(s, base) for base in base_runs(s, dataset, seed)]
