"""Learning-rate schedules as pure functions of the 0-based training step.

``fit`` sets the learning rate from :func:`make_schedule` before every optimizer step, so
per-epoch and per-iteration schedules are the same thing here.
"""

from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("constant", "multistep", "cosine", "cyclical")


def multistep_lr(step: int, total_steps: int, base_lr: float, milestones: tuple[float, ...],
                 gamma: float) -> float:
    """``base_lr * gamma**k`` after ``k`` milestones (fractions of training) have passed."""
    passed = sum(step >= round(m * total_steps) for m in milestones)
    return base_lr * gamma ** passed


def cosine_lr(step: int, total_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Cosine annealing from ``base_lr`` to ``min_lr`` over ``total_steps``."""
    progress = min(step / max(total_steps, 1), 1.0)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def cyclical_lr(i: int, cycle: int, lr_max: float, lr_min: float) -> float:
    """FissionFusion's cyclical schedule alpha(i) (Sec. 2, FGG), for 1-based iteration ``i``.

    t(i) = (mod(i - 1, c) + 1) / c;
    alpha(i) = alpha_2 * 2t + alpha_1 * (1 - 2t)        if 0 < t <= 1/2,
    alpha(i) = alpha_1 * (2t - 1) + alpha_2 * (2 - 2t)  if 1/2 < t <= 1,
    with alpha_1 = ``lr_max`` and alpha_2 = ``lr_min``: the rate falls linearly from alpha_1 to
    alpha_2 at mid-cycle (t = 1/2, where FGG takes its snapshots) and rises back to alpha_1.
    """
    if cycle < 2 or cycle % 2:
        raise ValueError(f"the cycle length must be an even number of iterations, got {cycle}")
    t = ((i - 1) % cycle + 1) / cycle
    if t <= 0.5:
        return lr_min * 2 * t + lr_max * (1 - 2 * t)
    return lr_max * (2 * t - 1) + lr_min * (2 - 2 * t)


def is_cycle_minimum(i: int, cycle: int) -> bool:
    """True at the 1-based iteration where :func:`cyclical_lr` reaches ``lr_min``."""
    return (i - 1) % cycle + 1 == cycle // 2


def cycle_length(cycle_epochs: float, steps_per_epoch: int) -> int:
    """Iterations per cycle for a cycle of ``cycle_epochs`` epochs, rounded to an even number."""
    return max(2, 2 * round(cycle_epochs * steps_per_epoch / 2))


def make_schedule(name: str, base_lr: float, total_steps: int, steps_per_epoch: int, *,
                  milestones: tuple[float, ...] = (0.5, 0.75), gamma: float = 0.1,
                  min_lr: float = 0.0, cycle_epochs: float = 4.0) -> Callable[[int], float]:
    """A function ``step -> learning rate`` (0-based step) for schedule ``name``."""
    if name == "constant":
        return lambda step: base_lr
    if name == "multistep":
        return lambda step: multistep_lr(step, total_steps, base_lr, milestones, gamma)
    if name == "cosine":
        return lambda step: cosine_lr(step, total_steps, base_lr, min_lr)
    if name == "cyclical":
        cycle = cycle_length(cycle_epochs, steps_per_epoch)
        return lambda step: cyclical_lr(step + 1, cycle, base_lr, min_lr)
    raise ValueError(f"unknown schedule {name!r}; valid schedules: {SCHEDULES}")
