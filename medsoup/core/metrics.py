"""Classification metrics: ACC, AUC, macro F1 and macro recall, per MedMNIST task kind.

* multi-class / ordinal / binary: ACC of the arg-max; AUC one-vs-rest macro over classes
  (binary: AUC of the positive-class score); macro F1 and macro recall of the arg-max.
* multi-label (ChestMNIST): each label thresholded at 0.5; ACC and AUC averaged over labels
  (as MedMNIST v2 reports them), with the per-label AUCs returned under ``auc_per_label``.

AUC is NaN (not an error) when a split holds a single class, as on tiny smoke subsets.

Calibration (:mod:`medsoup.core.calibration`: ``ece``, ``nll``, ``brier``) is reported beside them;
:data:`METRICS`, the names a best epoch can be selected by, leaves it out. :func:`probability_metrics`
scores probabilities directly (an output ensemble's mean of softmax has no logits).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score, recall_score, roc_auc_score

from medsoup.core.calibration import calibration

#: The metrics a best epoch can be selected by (``TrainConfig.select_metric``).
METRICS = ("acc", "auc", "f1", "recall")


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Sigmoid scores for multi-label, softmax otherwise."""
    return torch.sigmoid(logits) if task == "multi-label" else torch.softmax(logits, dim=1)


def _safe_auc(y_true: np.ndarray, scores: np.ndarray, **kwargs) -> float:
    if len(np.unique(y_true)) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(roc_auc_score(y_true, scores, **kwargs))


def compute_metrics(task: str, targets: torch.Tensor, logits: torch.Tensor) -> dict:
    """Metrics of ``logits`` (N, C) against loss ``targets`` (class indices, or (N, L) 0/1)."""
    return probability_metrics(task, targets, probabilities(logits.float(), task))


def probability_metrics(task: str, targets: torch.Tensor, probs: torch.Tensor) -> dict:
    """:data:`METRICS` and calibration of probabilities ``probs`` (N, C) (softmax; multi-label: sigmoid
    scores) against ``targets`` (class indices, or (N, L) 0/1)."""
    probs = probs.float().cpu().numpy()
    y = targets.cpu().numpy()
    if task == "multi-label":
        y = y.astype(int)
        predicted = (probs > 0.5).astype(int)
        per_label = [_safe_auc(y[:, j], probs[:, j]) for j in range(y.shape[1])]
        return {"acc": float((predicted == y).mean()),
                "auc": float(np.nanmean(per_label)) if not all(map(math.isnan, per_label)) else math.nan,
                "f1": float(f1_score(y, predicted, average="macro", zero_division=0)),
                "recall": float(recall_score(y, predicted, average="macro", zero_division=0)),
                **calibration(task, y, probs), "auc_per_label": per_label}
    predicted = probs.argmax(axis=1)
    labels = list(range(probs.shape[1]))
    if probs.shape[1] == 2:
        auc = _safe_auc(y, probs[:, 1])
    elif len(np.unique(y)) == probs.shape[1]:
        auc = _safe_auc(y, probs, multi_class="ovr", average="macro", labels=labels)
    else:  # a class absent from this split: average the one-vs-rest AUCs that exist
        per_class = [_safe_auc((y == c).astype(int), probs[:, c]) for c in labels]
        auc = float(np.nanmean(per_class)) if not all(map(math.isnan, per_class)) else math.nan
    return {"acc": float((predicted == y).mean()),
            "auc": auc,
            "f1": float(f1_score(y, predicted, average="macro", labels=labels, zero_division=0)),
            "recall": float(recall_score(y, predicted, average="macro", labels=labels, zero_division=0)),
            **calibration(task, y, probs)}


def confusion(targets: torch.Tensor, logits: torch.Tensor) -> np.ndarray:
    """Confusion matrix (rows: true class, columns: arg-max prediction) of a single-label task."""
    n = logits.shape[1]
    return confusion_matrix(targets.cpu().numpy(), logits.argmax(1).cpu().numpy(), labels=list(range(n)))
