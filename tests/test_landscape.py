"""Landscapes: the mixer, LMC endpoints and barrier, Garipov's plane, Li et al.'s directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsoup.core.bn import evaluate_state
from medsoup.core.models import create_model
from medsoup.merging.landscape import (
    LMCCurve,
    StateMixer,
    barrier,
    filter_normalized_direction,
    flatten,
    lmc_curve,
    plane_basis,
    plane_landscape,
    random_landscape,
    seed_noise_floor,
)
from tests.conftest import tiny


def _states(n=3):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append({k: v.clone() for k, v in create_model("smallcnn", 2, in_chans=1).state_dict().items()})
    return out


@pytest.fixture
def model():
    return create_model("smallcnn", 2, in_chans=1)


def test_plane_basis_is_orthonormal_and_places_the_models():
    g = torch.Generator().manual_seed(0)
    w1, w2, w3 = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    plane = plane_basis(w1, w2, w3)
    assert float(plane.u @ plane.u) == pytest.approx(1.0)
    assert float(plane.v @ plane.v) == pytest.approx(1.0)
    assert float(plane.u @ plane.v) == pytest.approx(0.0, abs=1e-12)
    for w, (x, y), unit in zip((w1, w2, w3), plane.coordinates(), np.eye(3)):
        assert torch.allclose(w1 + x * plane.u + y * plane.v, w, atol=1e-10)
        assert np.allclose(plane.coefficients(x, y), unit, atol=1e-12)
    x, y = 0.3, -0.7  # any grid point is the affine combination given by its coefficients
    c = plane.coefficients(x, y)
    assert torch.allclose(w1 + x * plane.u + y * plane.v, c[0] * w1 + c[1] * w2 + c[2] * w3, atol=1e-10)
    with pytest.raises(ValueError, match="collinear"):
        plane_basis(w1, w2, 2 * w2 - w1)


def test_mixer_reproduces_each_state_and_combinations(model):
    states = _states()
    mixer = StateMixer(model, states)
    for k, unit in enumerate(np.eye(3)):
        mixer.load(unit)
        assert all(torch.allclose(model.state_dict()[key].float(), states[k][key].float(), atol=1e-6)
                   for key in states[k] if "num_batches" not in key)
    mixer.load([0.5, 0.25, 0.25])
    expected = 0.5 * states[0]["head.weight"] + 0.25 * states[1]["head.weight"] + 0.25 * states[2]["head.weight"]
    assert torch.allclose(model.head.weight, expected, atol=1e-6)
    with pytest.raises(ValueError, match="coefficients"):
        mixer.load([1.0, 0.0])


def test_lmc_endpoints_are_the_models(model):
    data = tiny(n=32)
    a, b = _states(2)
    curve = lmc_curve(model, a, b, data, points=5)
    assert curve.lambdas[0] == 0.0 and curve.lambdas[-1] == 1.0
    assert curve.metrics[-1]["loss"] == pytest.approx(evaluate_state(model, a, data)["loss"], rel=1e-5)
    assert curve.metrics[0]["loss"] == pytest.approx(evaluate_state(model, b, data)["loss"], rel=1e-5)
    recal = lmc_curve(model, a, b, data, points=3, recalibrate=True)
    assert len(recal.values("acc")) == 3


def test_barrier():
    lam = np.linspace(0, 1, 5)
    assert barrier(lam, [0.8, 0.85, 0.9, 0.95, 1.0]) == pytest.approx(0.0, abs=1e-12)
    assert barrier(lam, [0.8, 0.6, 0.5, 0.7, 0.8]) == pytest.approx(0.3)
    assert barrier(lam, [1.0, 1.5, 2.0, 1.2, 1.0], higher_is_better=False) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        barrier([0.0], [1.0])


def test_seed_noise_floor_is_the_pooled_std_of_the_seed_pairs_endpoints():
    def curve(a, b):  # lambda = 0 is model B, lambda = 1 model A; the middle point must not count
        return LMCCurve([0.0, 0.5, 1.0], [{"loss": b}, {"loss": 9.0}, {"loss": a}])

    one = seed_noise_floor([curve(1.0, 1.2)], "loss")
    assert one == pytest.approx(np.std([1.0, 1.2], ddof=1))  # two models: their sample std
    pooled = seed_noise_floor([curve(1.0, 1.2), curve(0.5, 0.5), curve(2.0, 1.6)], "loss")
    assert pooled == pytest.approx(np.sqrt((0.2 ** 2 + 0.0 + 0.4 ** 2) / 2 / 3))
    assert seed_noise_floor([curve(0.7, 0.7)], "loss") == 0.0
    with pytest.raises(ValueError, match="at least one seed pair"):
        seed_noise_floor([], "loss")


def test_barrier_definitions_on_a_hand_made_curve():
    lam = np.linspace(0, 1, 5)
    dip = [0.6, 0.5, 0.7, 0.9, 1.0]  # straight line 0.6 .. 1.0; endpoint mean 0.8
    assert barrier(lam, dip) == barrier(lam, dip, definition="linear") == pytest.approx(0.2)  # at lambda 0.25
    assert barrier(lam, dip, definition="mean") == pytest.approx(0.3)
    straight = [0.8, 0.85, 0.9, 0.95, 1.0]  # no barrier to the line; half the endpoints' gap to their mean
    assert barrier(lam, straight, definition="linear") == pytest.approx(0.0, abs=1e-12)
    assert barrier(lam, straight, definition="mean") == pytest.approx(0.1)
    loss = [1.0, 1.5, 2.0, 1.2, 3.0]  # never above the line 1 .. 3; 1.0 above the endpoints' mean 2 at the end
    assert barrier(lam, loss, higher_is_better=False) == pytest.approx(0.0, abs=1e-12)
    assert barrier(lam, loss, higher_is_better=False, definition="mean") == pytest.approx(1.0)
    uneven = ([0.0, 0.25, 1.0], [0.0, 0.0, 1.0])  # the line is 0.25 at lambda 0.25; the mean is 0.5
    assert barrier(*uneven) == pytest.approx(0.25)
    assert barrier(*uneven, definition="mean") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown barrier definition 'max'; valid: linear, mean"):
        barrier(lam, dip, definition="max")


def test_plane_landscape_grid_and_model_coordinates(model):
    data = tiny(n=32)
    states = _states()
    keys = [k for k, _ in model.named_parameters()]
    scape = plane_landscape(model, states, data, points=3, margin=0.0, recalibrate=True)
    plane = plane_basis(*(flatten(s, keys) for s in states))
    assert scape.models == plane.coordinates()
    assert scape.values("acc").shape == (3, 3)
    assert np.isfinite(scape.values("loss")).all()
    # without recalibration and no margin, the grid corner (0, 0) is model 1 exactly
    plain = plane_landscape(model, states, data, points=3, margin=0.0, recalibrate=False)
    assert plain.xs[0] == pytest.approx(min(0.0, plane.w3_x)) and plain.ys[0] == 0.0
    if plane.w3_x >= 0:
        assert plain.metrics[0][0]["loss"] == pytest.approx(evaluate_state(model, states[0], data)["loss"], rel=1e-5)


def test_filter_normalised_direction(model):
    state = _states(1)[0]
    keys = [k for k, _ in model.named_parameters()]
    d = filter_normalized_direction(state, keys, seed=3)
    w, dw = state["features.0.weight"], d["features.0.weight"]
    assert torch.allclose(dw.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-5)
    assert torch.count_nonzero(d["features.1.weight"]) == 0 and torch.count_nonzero(d["head.bias"]) == 0
    assert torch.count_nonzero(d["features.1.running_mean"]) == 0
    assert torch.equal(d["features.0.weight"], filter_normalized_direction(state, keys, seed=3)["features.0.weight"])
    scape = random_landscape(model, state, tiny(n=32), points=3, recalibrate=False)
    assert scape.metrics[1][1]["loss"] == pytest.approx(evaluate_state(model, state, tiny(n=32))["loss"], rel=1e-5)
