"""Which arms of a comparison learnt little more than the majority class.

A method "worse" than an arm, or an arm "worse" than another, says little about the method when one
side predicts the majority class for (nearly) every test image: that side failed to learn at the
budget, whatever its method. :func:`majority_scores` is the score of that constant predictor
(computed with the book's own metrics), :func:`against_majority` sets every method's per-seed
scores beside it and :func:`majority_sentence` says it in words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from medsoup.core.data import MedData
from medsoup.core.metrics import compute_metrics


def majority_scores(data: MedData) -> dict[str, float]:
    """Test ACC, AUC and F1 of predicting the training split's most frequent class for every test image
    (single-label tasks; the AUC of a constant score is 0.5)."""
    if data.task == "multi-label":
        raise ValueError(f"{data.name}: a majority class is defined for single-label tasks, not multi-label")
    train, test = data.targets(data.splits["train"].labels), data.targets(data.splits["test"].labels)
    majority = int(torch.bincount(train, minlength=data.num_classes).argmax())
    logits = torch.zeros(len(test), data.num_classes)
    logits[:, majority] = 1.0
    return {k: float(v) for k, v in compute_metrics(data.task, test, logits).items() if k in ("acc", "auc", "f1")}


def against_majority(rows: pd.DataFrame, majority: Mapping[str, float], metric: str = "f1",
                     by: Sequence[str] = ("dataset", "method")) -> pd.DataFrame:
    """Per group of ``by`` (``dataset`` among them): the seeds whose ``metric`` equals the majority-class
    predictor's (``majority``: dataset -> score, :func:`majority_scores`), of how many, and the mean
    margin above that score."""
    keys = list(by)
    if "dataset" not in keys:
        raise ValueError("against_majority needs 'dataset' among the groups: the majority score is per dataset")
    missing = sorted(set(rows["dataset"]) - set(majority))
    if missing:
        raise KeyError(f"no majority-class score for {', '.join(missing)}")
    floor = rows["dataset"].map(majority)
    rows = rows.assign(_at=np.isclose(rows[metric], floor, atol=1e-6), _margin=rows[metric] - floor)
    out = rows.groupby(keys, sort=False).agg(at_majority=("_at", "sum"), seeds=("_at", "size"),
                                             margin=("_margin", "mean")).reset_index()
    return out.assign(majority=out["dataset"].map(majority), metric=metric)


def majority_sentence(table: pd.DataFrame) -> str:
    """:func:`against_majority` in words, one clause per dataset."""
    if table.empty:
        return "No arm is listed against the majority-class predictor."
    label = "" if "stage" not in table else "stage"
    parts = []
    for dataset, part in table.groupby("dataset", sort=False):
        arms = "; ".join(f"{r['method']}{f' ({r[label]})' if label else ''}: {r['margin']:+.3f} above it on average, "
                         f"{int(r['at_majority'])} of {int(r['seeds'])} seed{'s' if r['seeds'] != 1 else ''} exactly at it" for _, r in part.iterrows())
        parts.append(f"On {dataset}, predicting the majority class for every test image scores "
                     f"{part['metric'].iloc[0].upper()} {part['majority'].iloc[0]:.3f}; against it: {arms}.")
    return " ".join(parts)
