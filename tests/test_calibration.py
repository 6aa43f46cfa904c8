"""ECE, NLL and Brier score against values computed by hand; calibration in compute_metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsoup.core import calibration as cal
from medsoup.core.metrics import METRICS, compute_metrics, probability_metrics

# Four binary predictions, each confidence inside its own 1/15-wide bin (none on an edge).
PROBS = np.array([[0.9, 0.1], [0.65, 0.35], [0.3, 0.7], [0.15, 0.85]])
TARGETS = np.array([0, 1, 1, 1])  # correct, wrong, correct, correct


def test_ece_by_hand():
    # One prediction per bin: mean of |correct - confidence| = (0.1 + 0.65 + 0.3 + 0.15) / 4.
    assert cal.ece(PROBS, TARGETS) == pytest.approx(0.3)
    # Two bins, all four in (0.5, 1]: |accuracy 3/4 - mean confidence 3.1/4|.
    assert cal.ece(PROBS, TARGETS, bins=2) == pytest.approx(0.025)


def test_reliability_bins():
    r = cal.reliability(PROBS, TARGETS)
    assert len(r["edges"]) == 16 and r["count"].sum() == 4
    assert list(np.flatnonzero(r["count"])) == [9, 10, 12, 13]  # 0.65, 0.7, 0.85, 0.9
    assert r["accuracy"][9] == 0 and r["confidence"][13] == pytest.approx(0.9)
    assert np.isnan(r["accuracy"][0])


def test_nll_and_brier_by_hand():
    assert cal.nll(PROBS, TARGETS) == pytest.approx(-(math.log(0.9) + math.log(0.35) + math.log(0.7)
                                                       + math.log(0.85)) / 4)
    assert cal.brier(PROBS, TARGETS) == pytest.approx(2 * (0.1**2 + 0.65**2 + 0.3**2 + 0.15**2) / 4)
    assert cal.brier([[0.5, 0.3, 0.2]], [2]) == pytest.approx(0.25 + 0.09 + 0.64)
    assert cal.nll([[0.5, 0.3, 0.2]], [2]) == pytest.approx(-math.log(0.2))


def test_perfect_predictions_and_zero_probability():
    onehot = np.eye(3)[[0, 2, 1]]
    assert cal.ece(onehot, [0, 2, 1]) == 0 and cal.brier(onehot, [0, 2, 1]) == 0 and cal.nll(onehot, [0, 2, 1]) == 0
    assert cal.nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(cal.PROBABILITY_FLOOR))  # finite


def test_multi_label_is_pooled_binary():
    metrics = cal.calibration("multi-label", np.array([[1, 0]]), np.array([[0.8, 0.3]]))
    assert metrics["brier"] == pytest.approx((2 * 0.2**2 + 2 * 0.3**2) / 2)
    assert metrics["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2)
    assert metrics["ece"] == pytest.approx((0.2 + 0.3) / 2)  # confidences 0.8 and 0.7, both correct


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="logits"):
        cal.ece([[2.0, -1.0]], [0])
    with pytest.raises(ValueError, match="class indices"):
        cal.nll(PROBS, [0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        cal.brier(PROBS, TARGETS[:3])


def test_compute_metrics_reports_calibration_without_changing_selection():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.0], [0.1, 0.3]])
    targets = torch.tensor([0, 1, 1, 0])
    metrics = compute_metrics("binary", targets, logits)
    assert {"ece", "nll", "brier"} <= set(metrics) and not {"ece", "nll", "brier"} & set(METRICS)
    assert metrics["nll"] == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-6)
    assert metrics == probability_metrics("binary", targets, torch.softmax(logits, 1))


def test_reliability_diagram_pools_the_seeds_per_method():
    from medsoup.figures.fissionfusion import reliability_diagram

    pairs = [(PROBS, TARGETS), (PROBS[::-1].copy(), TARGETS[::-1].copy())]
    fig = reliability_diagram({"retinamnist": {"A": pairs, "B": pairs[:1]}, "pneumoniamnist": {"A": pairs}})
    ax = fig.axes[0]
    a = ax.lines[0]
    assert len(fig.axes) == 2 and a.get_label() == "A" and ax.lines[-1].get_label() == "perfect calibration"
    assert list(a.get_xdata()) == pytest.approx([0.65, 0.7, 0.85, 0.9])  # each bin's mean confidence
    assert list(a.get_ydata()) == [0, 1, 1, 1]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["A", "B", "perfect calibration"]
    chosen = reliability_diagram({"retinamnist": {"A": pairs, "B": pairs}}, methods=("B", "C", "A"))
    assert [line.get_label() for line in chosen.axes[0].lines] == ["B", "A", "perfect calibration"]
