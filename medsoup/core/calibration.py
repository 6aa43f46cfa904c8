"""Calibration of predicted probabilities: expected calibration error, negative log-likelihood, Brier score.

Single-label tasks (binary, multi-class, ordinal): ``probs`` is (N, C), each row a distribution over
the C classes, and ``targets`` (N,) class indices. Multi-label tasks are scored as N x L binary
problems (:func:`binary_columns`), each a two-class distribution (1 - p, p), pooled.

* ECE (Guo et al. 2017, Eq. 3), on the confidence ``conf_i = max_c p_ic`` and the arg-max prediction,
  in B equal-width bins ``I_b = ((b-1)/B, b/B]``::

      ECE = sum_b |I_b| / N * | acc(I_b) - conf(I_b) |

  with ``acc(I_b)`` the fraction of correct arg-max predictions in the bin and ``conf(I_b)`` its mean
  confidence (empty bins contribute nothing);
* NLL: ``-1/N sum_i log p_{i, y_i}`` (natural log; probabilities floored at :data:`PROBABILITY_FLOOR`);
* Brier score (Brier 1950, summed over classes)::

      Brier = 1/N sum_i sum_c (p_ic - 1[y_i = c])^2

  in [0, 2]; a binary task counts both of its classes, so it is twice the one-column form (p - y)^2.
"""

from __future__ import annotations

import numpy as np

#: ECE's bins on the confidence, as in Guo et al. (2017).
ECE_BINS = 15
#: The smallest probability NLL takes the log of: a float32 softmax can underflow to 0 for a wrong class.
PROBABILITY_FLOOR = 1e-12


def _checked(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    if p.ndim != 2 or y.ndim != 1 or len(p) != len(y) or len(p) == 0:
        raise ValueError(f"probabilities must be (N, C) and targets (N,) with N >= 1; got {p.shape} and {y.shape}")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("probabilities must lie in [0, 1] (pass softmax/sigmoid outputs, not logits)")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"targets must be class indices in [0, {p.shape[1] - 1}], got values "
                         f"{y.min()}..{y.max()} of type {y.dtype}")
    return p, y


def binary_columns(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    """A multi-label task's (N, L) sigmoid scores and 0/1 targets as N x L two-class problems:
    probabilities (N L, 2) with columns (1 - p, p), and targets (N L,)."""
    p, y = np.asarray(probs, dtype=np.float64).reshape(-1), np.asarray(targets).reshape(-1).astype(np.int64)
    return np.stack([1 - p, p], axis=1), y


def reliability(probs, targets, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin ``((b-1)/B, b/B]``: ``count``, mean ``confidence`` and ``accuracy`` of the
    arg-max prediction (NaN in an empty bin), and the bin ``edges`` (B + 1 values). ECE and the
    reliability diagram are read from it."""
    p, y = _checked(probs, targets)
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a whole number >= 1, got {bins!r}")
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / count
        accuracy = np.bincount(index, correct, minlength=bins) / count
    return {"edges": edges, "count": count, "confidence": mean_confidence, "accuracy": accuracy}


def ece(probs, targets, bins: int = ECE_BINS) -> float:
    """Expected calibration error (module docstring) over ``bins`` equal-width confidence bins."""
    r = reliability(probs, targets, bins)
    filled = r["count"] > 0
    return float(np.sum(r["count"][filled] * np.abs(r["accuracy"][filled] - r["confidence"][filled]))
                 / r["count"].sum())


def nll(probs, targets) -> float:
    """Mean negative log-likelihood of the true class (module docstring)."""
    p, y = _checked(probs, targets)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], PROBABILITY_FLOOR))))


def brier(probs, targets) -> float:
    """Brier score summed over classes, averaged over samples (module docstring)."""
    p, y = _checked(probs, targets)
    return float(np.mean(np.sum((p - np.eye(p.shape[1])[y]) ** 2, axis=1)))


def calibration(task: str, targets, probs) -> dict[str, float]:
    """``ece``, ``nll`` and ``brier`` of a task's probabilities (multi-label: :func:`binary_columns`)."""
    if task == "multi-label":
        probs, targets = binary_columns(probs, targets)
    return {"ece": ece(probs, targets), "nll": nll(probs, targets), "brier": brier(probs, targets)}
