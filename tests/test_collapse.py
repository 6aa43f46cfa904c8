"""Arms set against the majority-class predictor (an arm there learnt nothing the comparison can use)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsoup.chapters import collapse, tables
from medsoup.core import data as md


def _data():
    arrays = md.synthetic_arrays("breastmnist", 28, n_per_split=20, seed=0)
    arrays["train_labels"] = np.array([1] * 15 + [0] * 5).reshape(-1, 1)
    arrays["test_labels"] = np.array([1] * 12 + [0] * 8).reshape(-1, 1)
    return md.from_arrays("breastmnist", 28, arrays)


def test_majority_scores_are_those_of_predicting_the_training_majority_for_every_image():
    scores = collapse.majority_scores(_data())
    # class 1 for all 20 test images, 12 right: ACC 0.6; F1 of class 1 is 2 * 0.6 / 1.6 = 0.75, of class 0 zero
    assert scores["acc"] == pytest.approx(0.6) and scores["f1"] == pytest.approx(0.375)
    assert scores["auc"] == 0.5  # a constant score ranks no positive above a negative


def test_against_majority_counts_seeds_at_it_and_the_margin_above():
    rows = pd.DataFrame([tables.row("M", m, "method", "breastmnist", s, {"f1": v})
                         for m, values in (("A", (0.375, 0.375, 0.475)), ("B", (0.6, 0.7, 0.8)))
                         for s, v in enumerate(values)])
    table = collapse.against_majority(rows, {"breastmnist": 0.375})
    a, b = table.set_index("method").loc["A"], table.set_index("method").loc["B"]
    assert (a["at_majority"], a["seeds"], b["at_majority"]) == (2, 3, 0)
    assert a["margin"] == pytest.approx(0.1 / 3) and b["margin"] == pytest.approx(0.325)
    text = collapse.majority_sentence(table)
    assert text.startswith("On breastmnist, predicting the majority class for every test image scores F1 0.375")
    assert "A: +0.033 above it on average, 2 of 3 seeds exactly at it" in text
    with pytest.raises(KeyError, match="no majority-class score for breastmnist"):
        collapse.against_majority(rows, {"retinamnist": 0.1})
    with pytest.raises(ValueError, match="'dataset' among the groups"):
        collapse.against_majority(rows, {"breastmnist": 0.375}, by=("method",))
