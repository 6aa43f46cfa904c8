"""Profiles every notebook honours: ``smoke`` (CI, minutes), ``cpu`` (a 2-core machine, the three
offline MedMNIST datasets at 28 px) and ``paper`` (a GPU, the papers' datasets and settings).

Each chapter keeps a table ``{profile: {setting: value}}``; notebooks take flat parameters where
``None`` means "the profile's value", and :func:`settings` merges the two.
"""

from __future__ import annotations

from typing import Any

import torch

PROFILES = ("smoke", "cpu", "paper")
CPU_DATASETS = ("pneumoniamnist", "breastmnist", "retinamnist")


def resolve_profile(profile: str) -> str:
    """``auto`` is ``paper`` with a CUDA GPU and ``cpu`` without one."""
    if profile == "auto":
        return "paper" if torch.cuda.is_available() else "cpu"
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: auto, {', '.join(PROFILES)}")
    return profile


def settings(table: dict[str, dict[str, Any]], profile: str, **overrides) -> dict[str, Any]:
    """The profile's settings from ``table`` with every non-None override applied.

    An override the table does not know raises an error listing the known settings.
    """
    base = dict(table[resolve_profile(profile)])
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(base))}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["profile"] = resolve_profile(profile)
    return base


#: The baseline recipe (quickstart and every chapter's plain fine-tuning). ``cpu`` is the recipe
#: whose measured numbers are recorded in ``results/baselines.json``.
BASELINE: dict[str, dict[str, Any]] = {
    "smoke": dict(datasets=("breastmnist",), model="smallcnn", size=28, epochs=2, seeds=(0,),
                  batch_size=64, lr=1e-3, weight_decay=1e-4, augment="medium", train_subset=256),
    "cpu": dict(datasets=CPU_DATASETS, model="smallcnn", size=28, epochs=30, seeds=(0, 1, 2),
                batch_size=128, lr=1e-3, weight_decay=1e-4, augment="medium", train_subset=None),
    "paper": dict(datasets=CPU_DATASETS + ("dermamnist", "bloodmnist", "pathmnist"), model="resnet18",
                  size=28, epochs=100, seeds=(0, 1, 2), batch_size=128, lr=1e-3, weight_decay=0.0,
                  augment="none", train_subset=None),
}


def baseline_run(recipe: dict[str, Any], dataset: str, seed: int):
    """The :class:`~medsoup.runs.RunConfig` of the baseline recipe for one dataset and seed."""
    from medsoup.runs import RunConfig
    from medsoup.train import TrainConfig

    train = TrainConfig(epochs=recipe["epochs"], batch_size=recipe["batch_size"], optimizer="adamw",
                        lr=recipe["lr"], weight_decay=recipe["weight_decay"], augment=recipe["augment"],
                        schedule="multistep", milestones=(0.5, 0.75), select_metric="auc", seed=seed)
    return RunConfig(dataset=dataset, size=recipe["size"], model=recipe["model"],
                     train_subset=recipe["train_subset"], train=train)
