"""Convolution kernels as vectors: pairwise cosine similarity, per layer.

A convolution weight of shape ``(n, c_in, kh, kw)`` holds ``n`` kernels ``K_i``; In-Model
Merging (Wang et al., InMerge) compares them through ``sim(k_i, k_j) = k_i^T k_j / (|k_i| |k_j|)``
with ``k_i = vec(K_i)`` (Eq. (1)-(2)). These helpers compute that similarity for whole layers,
for the chapter's figures and for the tests of :mod:`medsoup.merging.inmerge`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

EPS = 1e-12


def kernel_vectors(weight: torch.Tensor) -> torch.Tensor:
    """``vec(K_i)`` of every kernel as the rows of an ``(n, c_in * kh * kw)`` matrix (Eq. (1))."""
    if weight.ndim < 2:
        raise ValueError(f"a convolution weight has at least 2 dimensions (n kernels first), got shape {tuple(weight.shape)}")
    return weight.detach().reshape(weight.shape[0], -1).float()


def pairwise_cosine(weight: torch.Tensor) -> torch.Tensor:
    """The ``(n, n)`` matrix of ``sim(k_i, k_j)`` (Eq. (2)), clamped to [-1, 1]; a zero kernel has similarity 0."""
    vectors = kernel_vectors(weight)
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(EPS)
    return (unit @ unit.T).clamp(-1.0, 1.0)


def off_diagonal(sim: torch.Tensor) -> torch.Tensor:
    """The similarities of the ``n (n - 1) / 2`` distinct pairs ``i < j``."""
    rows, cols = torch.triu_indices(sim.shape[0], sim.shape[1], offset=1)
    return sim[rows, cols]


def layer_similarities(layers: Sequence[tuple[str, nn.Conv2d]]) -> dict[str, np.ndarray]:
    """Layer name -> the cosine similarities of all distinct kernel pairs of that layer."""
    return {name: off_diagonal(pairwise_cosine(conv.weight)).cpu().numpy() for name, conv in layers}


def similarity_summary(sims: dict[str, dict[str, np.ndarray]], tau: float) -> pd.DataFrame:
    """Per model label and layer: mean and 95th percentile of the pairwise similarities and the
    fraction of pairs above ``tau``, from ``label -> layer -> similarities``."""
    rows = [{"model": label, "layer": layer, "mean": float(values.mean()),
             "p95": float(np.percentile(values, 95)), "above_tau": float((values > tau).mean())}
            for label, layers in sims.items() for layer, values in layers.items()]
    return pd.DataFrame(rows)


#: The layer kinds InMerge reports merge counts by (:func:`layer_kind`).
KINDS = ("depthwise", "other")


def layer_kind(conv: nn.Conv2d) -> str:
    """``"depthwise"`` for a depthwise convolution (``groups == in_channels > 1``: each kernel a single
    k x k filter of one input channel, as in EfficientNet), else ``"other"`` (pointwise 1x1 and full
    convolutions, whose kernels are vectors over all input channels)."""
    return "depthwise" if conv.groups > 1 and conv.groups == conv.in_channels else "other"


def similarities_by_kind(layers: Sequence[tuple[str, nn.Conv2d]]) -> dict[str, np.ndarray]:
    """Layer kind (:data:`KINDS`, those present) -> the similarities of all distinct kernel pairs of
    every layer of that kind, pooled (each layer contributes its ``n (n - 1) / 2`` pairs)."""
    pooled: dict[str, list[np.ndarray]] = {}
    for name, values in layer_similarities(layers).items():
        pooled.setdefault(layer_kind(dict(layers)[name]), []).append(values)
    return {kind: np.concatenate(pooled[kind]) for kind in KINDS if kind in pooled}


def kind_summary(sims: dict[str, dict[str, np.ndarray]], tau: float) -> pd.DataFrame:
    """Per group label and layer kind: number of pairs, median similarity and the fraction of pairs
    above ``tau``, from ``label -> kind -> pooled similarities`` (:func:`similarities_by_kind`)."""
    return pd.DataFrame([{"layers": label, "kind": kind, "pairs": int(values.size), "median": float(np.median(values)),
                          "above_tau": float((values > tau).mean())}
                         for label, kinds in sims.items() for kind, values in kinds.items()])


def fraction_above(sim: torch.Tensor, tau: float) -> float:
    """Of the ordered pairs ``(i, j), j != i``, the fraction with ``sim > tau``.

    Averaged over ``i`` this is the probability that a kernel's uniformly drawn partner passes
    the threshold of Eq. (3).
    """
    n = sim.shape[0]
    above = (sim > tau) & ~torch.eye(n, dtype=torch.bool, device=sim.device)
    return float(above.sum()) / (n * (n - 1))


def example_pairs(sim: torch.Tensor, targets: Sequence[float]) -> list[tuple[int, int, float]]:
    """For each target similarity, the distinct pair ``(i, j, sim)`` whose similarity is nearest to it
    (a pair is not reused), as in the paper's Fig. 1."""
    rows, cols = torch.triu_indices(sim.shape[0], sim.shape[1], offset=1)
    values = sim[rows, cols].clone()
    chosen = []
    for target in targets:
        k = int((values - target).abs().argmin())
        chosen.append((int(rows[k]), int(cols[k]), float(sim[rows[k], cols[k]])))
        values[k] = float("inf")
    return chosen


def kernel_mosaic(kernel: torch.Tensor, max_channels: int = 16) -> np.ndarray:
    """A ``(c_in, kh, kw)`` kernel drawn as a square mosaic of its first input-channel slices.

    Up to ``max_channels`` slices are tiled row by row with a one-pixel NaN gap (drawn blank).
    """
    kernel = kernel.detach().float().cpu()
    slices = kernel[:max_channels]
    c, kh, kw = slices.shape
    side = int(np.ceil(np.sqrt(c)))
    mosaic = np.full((side * (kh + 1) - 1, side * (kw + 1) - 1), np.nan)
    for index in range(c):
        r, col = divmod(index, side)
        mosaic[r * (kh + 1):r * (kh + 1) + kh, col * (kw + 1):col * (kw + 1) + kw] = slices[index].numpy()
    return mosaic
