"""Error landscapes: linear mode connectivity, Garipov et al.'s plane through three models, and
Li et al.'s filter-normalised random directions.

Every point evaluated is an affine combination ``sum_k c_k * theta_k`` of a few states (two
endpoints; three models; a centre and two directions), so one :class:`StateMixer` serves all
three: it stacks the states' float entries once as a (K, P) matrix and writes ``c @ M`` into a
single reused model, whose BatchNorm statistics are then optionally recomputed on the training
data (:func:`medsoup.core.bn.recalibrate_bn`). No deep copies, no per-point state-dict arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from medsoup.core.bn import for_evaluation, recalibrate_bn, train_images
from medsoup.core.data import MedData
from medsoup.core.progress import progress
from medsoup.core.train import evaluate
from medsoup.merging.statedict import StateDict, check_compatible, is_float


class StateMixer:
    """Write affine combinations of fixed states into one model, fast.

    ``keys``: the entries to combine (default: every float entry; pass the parameter names to
    leave BatchNorm buffers to recalibration). Other entries keep the first state's values.
    Combined BatchNorm running variances are clamped at 0.
    """

    def __init__(self, model: nn.Module, states: Sequence[StateDict], keys: Sequence[str] | None = None):
        check_compatible(list(states))
        own = model.state_dict()
        self.model = model
        model.load_state_dict({k: v for k, v in states[0].items()})
        self.keys = [k for k in own if is_float(own[k])] if keys is None else list(keys)
        self.targets = [own[k] for k in self.keys]
        self.matrix = torch.stack([torch.cat([s[k].detach().reshape(-1).to(self.targets[0].device, torch.float32)
                                              for k in self.keys]) for s in states])
        self.sizes = [t.numel() for t in self.targets]
        self.variances = [t for k, t in zip(self.keys, self.targets) if k.endswith("running_var")]

    @torch.no_grad()
    def load(self, coefficients: Sequence[float]) -> nn.Module:
        """Set the model to ``sum_k coefficients[k] * states[k]``; return it."""
        c = torch.as_tensor(coefficients, dtype=self.matrix.dtype, device=self.matrix.device)
        if c.shape != (len(self.matrix),):
            raise ValueError(f"need {len(self.matrix)} coefficients, got {tuple(c.shape)}")
        flat = c @ self.matrix
        for target, chunk in zip(self.targets, flat.split(self.sizes)):
            target.copy_(chunk.view_as(target))
        for variance in self.variances:  # negative coefficients can push a combined variance below 0
            variance.clamp_(min=0)
        return self.model


def evaluate_combinations(model: nn.Module, states: Sequence[StateDict], coefficients: Sequence[Sequence[float]],
                          data: MedData, split: str = "val", recalibrate: bool = False,
                          bn_images: int | None = None, desc: str = "points") -> list[dict]:
    """Metrics on ``split`` of each combination ``sum_k c_k * states[k]`` (one row of
    ``coefficients`` each). ``recalibrate``: recompute BatchNorm statistics at every point (on at
    most ``bn_images`` training images) instead of combining the stored ones. ``model`` is
    overwritten and laid out by :func:`~medsoup.core.bn.for_evaluation`. A progress bar
    named ``desc`` shows the point being evaluated."""
    options = for_evaluation(model)  # before the mixer takes the model's tensors
    keys = [k for k, _ in model.named_parameters()] if recalibrate else None
    mixer = StateMixer(model, states, keys)
    batches = train_images(data, model, max_images=bn_images) if recalibrate else None
    results = []
    bar = progress(coefficients, desc=desc)
    for row in bar:
        bar.set_postfix_str("c = " + ", ".join(f"{c:+.2f}" for c in row))
        mixer.load(row)
        if recalibrate:
            recalibrate_bn(model, batches)
        results.append(evaluate(model, data, split, **options))
    return results


# --- Linear mode connectivity -------------------------------------------------------------------

@dataclass
class LMCCurve:
    """Metrics along theta(lambda) = lambda * theta_A + (1 - lambda) * theta_B."""

    lambdas: list[float]
    metrics: list[dict]

    def values(self, metric: str) -> list[float]:
        return [m[metric] for m in self.metrics]


def lmc_curve(model: nn.Module, state_a: StateDict, state_b: StateDict, data: MedData, points: int = 11,
              split: str = "val", recalibrate: bool = False, bn_images: int | None = None) -> LMCCurve:
    """FissionFusion's LMC analysis (Appendix B1): metrics at ``points`` evenly spaced lambdas in
    [0, 1] of theta(lambda) = lambda * theta_A + (1 - lambda) * theta_B (lambda = 1 is A)."""
    lambdas = np.linspace(0.0, 1.0, points).tolist()
    metrics = evaluate_combinations(model, [state_a, state_b], [(lam, 1 - lam) for lam in lambdas], data, split,
                                    recalibrate, bn_images, desc="LMC curve")
    return LMCCurve(lambdas, metrics)


#: The barrier's reference: the straight line between the endpoint values (Entezari et al. 2022) or their
#: mean (Frankle et al. 2020).
BARRIER_DEFINITIONS = ("linear", "mean")


def barrier(lambdas: Sequence[float], values: Sequence[float], higher_is_better: bool = True,
            definition: str = "linear") -> float:
    """Barrier height of a curve ``values`` at ``lambdas``: how far the path falls below a reference
    set by its endpoints (``lambdas[0]`` and ``lambdas[-1]``), never below 0.

    ``definition="linear"`` (default): the largest shortfall below the straight line between the
    endpoint values, the loss barrier of Entezari et al. (2022),
    ``max_lambda [(1 - t) v_0 + t v_1 - v(lambda)]`` with ``t = (lambda - lambda_0) / (lambda_1 - lambda_0)``;
    0 when the path is never worse than the endpoints' interpolation.

    ``definition="mean"``: the largest shortfall below the mean of the endpoint values, the error
    barrier height of Frankle et al. (2020), ``max_lambda [(v_0 + v_1) / 2 - v(lambda)]``; half the
    endpoints' difference even for a straight path between unequal endpoints.

    For a loss or an error pass ``higher_is_better=False``: the largest excess above the reference.
    """
    if definition not in BARRIER_DEFINITIONS:
        raise ValueError(f"unknown barrier definition {definition!r}; valid: {', '.join(BARRIER_DEFINITIONS)}")
    lam = np.asarray(lambdas, dtype=float)
    v = np.asarray(values, dtype=float)
    if lam.shape != v.shape or lam.size < 2:
        raise ValueError("barrier needs matching lambdas and values, at least two points")
    if definition == "linear":
        reference = v[0] + (v[-1] - v[0]) * (lam - lam[0]) / (lam[-1] - lam[0])
    else:
        reference = np.full_like(v, (v[0] + v[-1]) / 2)
    gap = reference - v if higher_is_better else v - reference
    return float(max(gap.max(), 0.0))


def seed_noise_floor(curves: Sequence[LMCCurve], metric: str) -> float:
    """A single point's noise floor for barriers in ``metric``: the standard deviation of ``metric``
    between models that differ only in their fine-tuning seed, pooled over seed pairs.

    Each curve of ``curves`` joins two such models (its endpoints, lambda = 0 and 1); a pair's variance
    estimate is ``(v_A - v_B)^2 / 2`` and the floor is the square root of its mean over the pairs,
    ``sqrt(mean_pairs (v_A - v_B)^2 / 2)``. A barrier (:func:`barrier`) of this size is what seed alone
    moves one model's value by, so it cannot be told from a second seed's model. Costs nothing: the
    endpoints are already evaluated."""
    if not curves:
        raise ValueError("seed_noise_floor needs at least one seed pair's curve")
    gaps = np.array([c.metrics[0][metric] - c.metrics[-1][metric] for c in curves], dtype=float)
    return float(np.sqrt(np.mean(gaps ** 2 / 2)))


# --- Garipov et al.'s plane through three models ------------------------------------------------

@dataclass
class Plane:
    """Orthonormal basis (u, v) of the plane through w1, w2, w3 (parameter vectors), with the three
    models at (0, 0), (dx, 0) and (w3_x, dy)."""

    u: torch.Tensor
    v: torch.Tensor
    dx: float
    dy: float
    w3_x: float

    def coordinates(self) -> list[tuple[float, float]]:
        return [(0.0, 0.0), (self.dx, 0.0), (self.w3_x, self.dy)]

    def coefficients(self, x: float, y: float) -> tuple[float, float, float]:
        """(c1, c2, c3) with w1 + x u + y v = c1 w1 + c2 w2 + c3 w3 (u, v spanned by w2 - w1, w3 - w1)."""
        b = y / self.dy
        a = x / self.dx - b * self.w3_x / self.dx
        return 1.0 - a - b, a, b


def flatten(state: StateDict, keys: Sequence[str]) -> torch.Tensor:
    return torch.cat([state[k].detach().reshape(-1).double() for k in keys])


def plane_basis(w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> Plane:
    """Garipov et al. (2018), ``plane.py``: u = (w2 - w1) / |w2 - w1|; v = Gram-Schmidt of w3 - w1
    against u, normalised."""
    u = w2 - w1
    dx = float(u.norm())
    if dx == 0:
        raise ValueError("w1 and w2 coincide; the plane is undefined")
    u = u / dx
    v = w3 - w1
    w3_x = float(v @ u)
    v = v - w3_x * u
    dy = float(v.norm())
    if dy < 1e-12 * max(dx, 1.0):
        raise ValueError("w1, w2 and w3 are collinear; the plane is undefined")
    return Plane(u, v / dy, dx, dy, w3_x)


def plane_grid(plane: Plane, points: int = 21, margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates (xs, ys) covering the three models with ``margin`` of the extent on each side."""
    xs_models = [c[0] for c in plane.coordinates()]
    x_lo, x_hi = min(xs_models), max(xs_models)
    width = x_hi - x_lo
    xs = np.linspace(x_lo - margin * width, x_hi + margin * width, points)
    ys = np.linspace(-margin * plane.dy, (1 + margin) * plane.dy, points)
    return xs, ys


@dataclass
class Landscape:
    """Metrics on a grid: ``metrics[i][j]`` at (xs[j], ys[i]); ``models`` are the anchors' coordinates."""

    xs: np.ndarray
    ys: np.ndarray
    metrics: list[list[dict]]
    models: list[tuple[float, float]]

    def values(self, metric: str) -> np.ndarray:
        return np.array([[m[metric] for m in row] for row in self.metrics])


def plane_landscape(model: nn.Module, states: Sequence[StateDict], data: MedData, points: int = 21,
                    margin: float = 0.2, split: str = "val", recalibrate: bool = True,
                    bn_images: int | None = None) -> Landscape:
    """The 2-D slice of Fig. 1 (after Garipov et al.): metrics on a ``points`` x ``points`` grid in
    the plane through three models (parameters only; BatchNorm recomputed at every point when
    ``recalibrate``, else the running statistics combined with the same coefficients)."""
    if len(states) != 3:
        raise ValueError(f"a plane needs exactly three models, got {len(states)}")
    keys = [k for k, _ in model.named_parameters()]
    plane = plane_basis(*(flatten(s, keys) for s in states))
    xs, ys = plane_grid(plane, points, margin)
    rows = [plane.coefficients(x, y) for y in ys for x in xs]
    flat = evaluate_combinations(model, states, rows, data, split, recalibrate, bn_images, desc="plane")
    metrics = [flat[i * len(xs):(i + 1) * len(xs)] for i in range(len(ys))]
    return Landscape(xs, ys, metrics, plane.coordinates())


# --- Li et al.'s filter-normalised random directions --------------------------------------------

def filter_normalized_direction(state: StateDict, parameter_keys: Sequence[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """A Gaussian direction with each filter rescaled to the norm of the matching filter of
    ``state`` (Li et al. 2018, Sec. 4); 1-D parameters (biases, BatchNorm) and buffers are zero
    ("ignore biasbn")."""
    generator = torch.Generator().manual_seed(seed)
    direction = {}
    for key, value in state.items():
        if key in parameter_keys and value.dim() > 1:
            d = torch.randn(value.shape, generator=generator, dtype=torch.float32)
            w = value.detach().float().cpu()
            dims = tuple(range(1, value.dim()))
            norm = torch.linalg.vector_norm
            d = d * (norm(w, dim=dims, keepdim=True) / norm(d, dim=dims, keepdim=True).clamp_min(1e-12))
            direction[key] = d.to(value.device, value.dtype)
        else:
            direction[key] = torch.zeros_like(value)
    return direction


def random_landscape(model: nn.Module, state: StateDict, data: MedData, points: int = 21, extent: float = 1.0,
                     seed: int = 0, split: str = "val", recalibrate: bool = True,
                     bn_images: int | None = None) -> Landscape:
    """Metrics on ``state + x d1 + y d2`` for x, y in [-extent, extent] with two filter-normalised
    directions (Li et al. 2018)."""
    keys = [k for k, _ in model.named_parameters()]
    d1 = filter_normalized_direction(state, keys, seed)
    d2 = filter_normalized_direction(state, keys, seed + 1)
    xs = ys = np.linspace(-extent, extent, points)
    rows = [(1.0, x, y) for y in ys for x in xs]
    flat = evaluate_combinations(model, [state, d1, d2], rows, data, split, recalibrate, bn_images,
                                 desc="random directions")
    metrics = [flat[i * len(xs):(i + 1) * len(xs)] for i in range(len(ys))]
    return Landscape(xs, ys, metrics, [(0.0, 0.0)])

