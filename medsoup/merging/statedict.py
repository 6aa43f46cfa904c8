"""State-dict arithmetic as pure functions (FusionBench's names: add, sub, scale, weighted_sum,
average, interpolate).

Every function returns a new dict of new tensors and never changes its inputs. Floating-point
entries (weights, biases, BatchNorm running mean/var) are combined arithmetically. Integer
entries cannot be averaged meaningfully; the only ones in our models are BatchNorm's
``num_batches_tracked`` counters, and the rule is:

* :func:`weighted_sum` / :func:`average`: the element-wise **maximum** over the models (the
  counter of the most-trained ingredient; it only matters for BN with ``momentum=None``);
* :func:`add` / :func:`sub` / :func:`scale` (task-vector arithmetic): the **first** operand's;
* :func:`interpolate`: the nearer endpoint's, so ``t = 0`` and ``t = 1`` return the endpoints
  exactly.

All states must have the same keys and shapes; a mismatch raises an error naming the keys.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

StateDict = Mapping[str, torch.Tensor]


def is_float(tensor: torch.Tensor) -> bool:
    """True for entries that are combined arithmetically (floating point or complex)."""
    return tensor.is_floating_point() or tensor.is_complex()


def check_compatible(states: Sequence[StateDict]) -> None:
    """Raise ``ValueError`` naming the keys or shapes that differ between ``states``."""
    if not states:
        raise ValueError("need at least one state dict")
    first = states[0]
    for index, state in enumerate(states[1:], start=1):
        missing = sorted(set(first) - set(state))
        extra = sorted(set(state) - set(first))
        shapes = sorted(k for k in first if k in state and first[k].shape != state[k].shape)
        if missing or extra or shapes:
            raise ValueError(f"state {index} does not match state 0: missing {missing[:5]}, "
                             f"extra {extra[:5]}, different shapes {shapes[:5]}")


def weighted_sum(states: Sequence[StateDict], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """``sum_k weights[k] * states[k]`` for float entries (accumulated in float64 for float32
    models, returned in each entry's dtype); integer entries: element-wise max over ``states``."""
    states = list(states)
    weights = [float(w) for w in weights]
    if len(weights) != len(states):
        raise ValueError(f"got {len(states)} states but {len(weights)} weights")
    check_compatible(states)
    out = {}
    for key, first in states[0].items():
        if is_float(first):
            acc_dtype = torch.float64 if first.dtype in (torch.float32, torch.float64) else first.dtype
            acc = torch.zeros_like(first, dtype=acc_dtype)
            for state, weight in zip(states, weights):
                acc.add_(state[key].to(acc_dtype), alpha=weight)
            out[key] = acc.to(first.dtype)
        else:
            out[key] = torch.stack([state[key] for state in states]).amax(dim=0)
    return out


def average(states: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """Uniform average of ``states`` (the uniform soup, Wortsman et al. 2022, Eq. 1)."""
    states = list(states)
    return weighted_sum(states, [1.0 / len(states)] * len(states))


def interpolate(a: StateDict, b: StateDict, t: float) -> dict[str, torch.Tensor]:
    """``(1 - t) * a + t * b`` for float entries via ``torch.lerp`` (exact at t = 0 and t = 1);
    integer entries from ``a`` when ``t < 0.5``, else from ``b``.

    FissionFusion's LMC path ``theta(lambda) = lambda * theta_A + (1 - lambda) * theta_B`` is
    ``interpolate(theta_B, theta_A, lambda)``.
    """
    check_compatible([a, b])
    t = float(t)
    return {k: torch.lerp(v, b[k].to(v.dtype), t) if is_float(v) else (v if t < 0.5 else b[k]).clone()
            for k, v in a.items()}


def add(a: StateDict, b: StateDict) -> dict[str, torch.Tensor]:
    """``a + b`` for float entries; integer entries from ``a``."""
    check_compatible([a, b])
    return {k: v + b[k] if is_float(v) else v.clone() for k, v in a.items()}


def sub(a: StateDict, b: StateDict) -> dict[str, torch.Tensor]:
    """``a - b`` for float entries (a task vector when ``b`` is the pre-trained model); integer
    entries from ``a``."""
    check_compatible([a, b])
    return {k: v - b[k] if is_float(v) else v.clone() for k, v in a.items()}


def scale(a: StateDict, factor: float) -> dict[str, torch.Tensor]:
    """``factor * a`` for float entries; integer entries copied."""
    return {k: v * float(factor) if is_float(v) else v.clone() for k, v in a.items()}


def clone(a: StateDict) -> dict[str, torch.Tensor]:
    """A detached copy of every entry (e.g. of ``model.state_dict()``, whose tensors alias the model)."""
    return {k: v.detach().clone() for k, v in a.items()}
