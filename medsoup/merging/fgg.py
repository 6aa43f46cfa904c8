"""Fast Geometric Generation (FissionFusion, Sec. 2): snapshots along a cyclical learning rate.

FGG ("fission"): from a linear-probed model theta_0, train one base model theta_t per learning
rate; from each, train again with the cyclical rate alpha(i) (:func:`medsoup.core.schedules.cyclical_lr`,
between alpha_1 and alpha_2) and keep the weights at every iteration where alpha(i) = alpha_2
(:class:`CycleSnapshots`). Each group {theta_t, snapshots} is later souped hierarchically
(:func:`medsoup.merging.soups.hierarchical_soup`).

The chapter's zoo (settings, run configs of the grid search and of FGG) is in
:mod:`medsoup.chapters.fissionfusion`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medsoup.core.schedules import cycle_length, is_cycle_minimum
from medsoup.core.train import Callback


class CycleSnapshots(Callback):
    """Keep the model's state at every iteration where the cyclical rate is at its minimum.

    ``cycle_epochs`` must equal the run's ``TrainConfig.cycle_epochs`` (:func:`medsoup.chapters.fissionfusion.fgg_run`
    sets both). The snapshots are stored with the run as artifacts ``snapshot_0``, ``snapshot_1``, ...
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
