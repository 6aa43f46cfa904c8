"""Stochastic Weight Averaging (Izmailov et al. 2018) as a training callback, on ``torch.optim.swa_utils``.

SWA averages the weights one training run visits: from the averaging start on, after every ``every``-th
optimizer step the iterate theta_i joins the running average (Izmailov et al., Algorithm 1)::

    theta_SWA <- (theta_SWA * n + theta_i) / (n + 1),    n <- n + 1

kept by ``torch.optim.swa_utils.AveragedModel`` (its default ``avg_fn`` is that update). BatchNorm's
running statistics are not averaged: they belong to no network of the average, so they are recomputed
with one pass over the training data once the average is final (Izmailov et al., Sec. 3.2).

How the pieces of ``torch.optim.swa_utils`` map onto medsoup:

* ``AveragedModel``: :class:`SWA` keeps one, updated in ``on_step_end``; its state is part of the
  resumable training state (``state_dict`` / ``load_state_dict``), so a resumed run averages exactly
  the same iterates.
* ``SWALR``: :func:`~medsoup.core.train.fit` sets every step's learning rate from the run's schedule,
  so a scheduler stepping an optimizer the callback does not hold cannot drive it. SWALR without
  annealing (a constant ``swa_lr`` from the averaging start) is the run's schedule
  ``TrainConfig(schedule="multistep", milestones=(start,), gamma=swa_lr / lr)``:
  :func:`medsoup.chapters.fissionfusion.swa_run` sets it together with this callback's ``start``.
* ``update_bn``: :meth:`SWA.finish` recomputes the statistics with
  :func:`medsoup.core.bn.recalibrate_bn`, the same cumulative average over the training batches
  (``momentum=None``) with dropout left off, as for every soup in the book.

The final model of an SWA run is the average with BatchNorm recomputed: the run layer calls
:meth:`SWA.finish` on the model after ``fit`` (:func:`medsoup.runs.store.run`), which loads the averaged
weights into it, so the stored ``model.safetensors`` and the run's validation and test metrics are
those of the SWA model (the training history's per-epoch validation is that of the iterates). The
average itself is stored as artifact ``swa`` (the averaged parameters and ``n_averaged``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from medsoup.core.bn import recalibrate_bn
from medsoup.core.data import MedData
from medsoup.core.train import Callback


def averaging_start(start: float, total_steps: int) -> int:
    """The optimizer steps before averaging begins: ``round(start * total_steps)``; the iterate after
    the next step is the first averaged (the first at ``swa_lr`` under the multistep schedule above)."""
    return round(start * total_steps)


class SWA(Callback):
    """Average the iterates after step ``averaging_start(start, total_steps)``, every ``every`` steps.

    ``start``: the fraction of the run's optimizer steps before averaging, in [0, 1); ``every``: steps
    between averaged iterates (1: every iterate; Izmailov et al. average once per epoch).
    """

    def __init__(self, start: float = 0.75, every: int = 1):
        if not (isinstance(start, (int, float)) and 0 <= start < 1):
            raise ValueError(f"start must be a fraction of the training steps in [0, 1), got {start!r}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a whole number of steps >= 1, got {every!r}")
        self.start, self.every = float(start), every
        self.first = 0
        self.averaged: AveragedModel | None = None
        self._restored: dict[str, torch.Tensor] = {}

    def on_fit_start(self, model: nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        self.first = averaging_start(self.start, total_steps)
        if self.first >= total_steps:
            raise ValueError(f"SWA would average no iterate: it starts after step {self.first} of {total_steps}; "
                             "lower start or train longer")
        self.averaged = AveragedModel(model)
        if self._restored:  # resumed: the average so far, not the restored iterate
            self._load(self._restored)
            self._restored = {}

    def on_step_end(self, model: nn.Module, step: int) -> None:
        done = step + 1
        if done > self.first and (done - self.first) % self.every == 0:
            self.averaged.update_parameters(model)

    @property
    def n_averaged(self) -> int:
        return 0 if self.averaged is None else int(self.averaged.n_averaged)

    def average(self) -> dict[str, torch.Tensor]:
        """The averaged parameters by name (no buffers), and ``n_averaged``."""
        if self.averaged is None:
            raise RuntimeError("SWA has no average before training starts")
        return {**{name: p.detach() for name, p in self.averaged.module.named_parameters()},
                "n_averaged": self.averaged.n_averaged.detach()}

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.averaged.module.named_parameters():
                p.copy_(state[name])
            self.averaged.n_averaged.copy_(state["n_averaged"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average() if self.averaged is not None else dict(self._restored)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._restored = dict(state)  # applied in on_fit_start, which builds the AveragedModel

    def finish(self, model: nn.Module, data: MedData) -> nn.Module:
        """Load the average into ``model`` and recompute its BatchNorm statistics on ``data``'s
        training split (no augmentation); return it."""
        if self.n_averaged == 0:
            raise RuntimeError("SWA averaged no iterate; was the model trained with this callback?")
        with torch.no_grad():
            for p, q in zip(model.parameters(), self.averaged.module.parameters(), strict=True):
                p.copy_(q)
        return recalibrate_bn(model, data)

    def artifacts(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"swa": self.average()} if self.n_averaged else {}


def swa_schedule(lr: float, swa_lr: float, start: float) -> dict[str, object]:
    """The :class:`~medsoup.core.train.TrainConfig` fields of SWALR without annealing: ``lr`` for the
    first ``start`` of the steps, then ``swa_lr`` (constant) while :class:`SWA` averages."""
    if not (lr > 0 and swa_lr > 0 and math.isfinite(swa_lr / lr)):
        raise ValueError(f"lr and swa_lr must be positive, got lr={lr!r}, swa_lr={swa_lr!r}")
    return {"schedule": "multistep", "lr": lr, "milestones": (start,), "gamma": swa_lr / lr}
