"""Output ensembles of a zoo from its runs' stored test predictions: the mean of the members' softmax."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medsoup.chapters import fissionfusion as ff
from medsoup.chapters.fissionfusion_ensembles import ENSEMBLES, ensembles, output_ensemble
from medsoup.core.metrics import probability_metrics

TARGETS = torch.tensor([0, 1, 1, 0, 1])


def _run(lr, augment, probs, snapshots=(), targets=TARGETS):
    stored = {"model": probs, **{f"snapshot_{i}": p for i, p in enumerate(snapshots)}}
    return SimpleNamespace(config={"train": {"lr": lr, "augment": augment, "seed": 0}},
                           artifacts=[f"snapshot_{i}" for i in range(len(snapshots))],
                           load_predictions=lambda name="model": (stored[name], targets))


def _probs(seed):
    return torch.softmax(torch.randn(5, 2, generator=torch.Generator().manual_seed(seed)), 1)


def _zoo(targets=TARGETS):
    grid = [_run(1e-3, "heavy", _probs(0)), _run(1e-4, "heavy", _probs(1), targets=targets)]
    fission = [_run(1e-3, "heavy", _probs(2), snapshots=(_probs(3), _probs(4))),
               _run(1e-4, "heavy", _probs(5), snapshots=(_probs(6), _probs(7)))]
    return ff.Zoo("breastmnist", 0, (1e-3, 1e-4), 1, grid, grid, fission, None)


def test_ensembles_average_the_members_stored_softmax():
    out = ensembles(_zoo(), "binary")
    assert tuple(out) == ENSEMBLES
    gs, fgg = out["GS ensemble"], out["FGG ensemble"]
    brute = (_probs(0) + _probs(1)) / 2
    assert torch.allclose(gs.predictions[0], brute) and torch.equal(gs.predictions[1], TARGETS)
    assert gs.test == probability_metrics("binary", TARGETS, brute) and gs.evaluations == 0 and gs.val == {}
    # FGG: each base model (a grid run) and its two snapshots
    assert torch.allclose(fgg.predictions[0], torch.stack([_probs(i) for i in (0, 3, 4, 1, 6, 7)]).mean(0))
    assert fgg.ingredients == 6 and list(fgg.weights)[:3] == ["lr 0.001 base", "lr 0.001 snapshot 0",
                                                                 "lr 0.001 snapshot 1"]
    assert sum(fgg.weights.values()) == pytest.approx(1)


def test_members_tested_on_other_images_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="GS ensemble were tested on different test sets"):
        ensembles(_zoo(targets=torch.tensor([1, 1, 1, 0, 1])), "binary")
    with pytest.raises(ValueError, match="differ in shape"):
        output_ensemble([torch.ones(5, 2) / 2, torch.ones(4, 2) / 2])
    with pytest.raises(ValueError, match="at least one"):
        output_ensemble([])


def test_reference_claims_are_kept_where_both_sides_ran():
    assert ff.claims({"GoG", "FGG ensemble", "SWA"}, ff.REFERENCE_CLAIMS) == [("GoG", "FGG ensemble"), ("GoG", "SWA")]
