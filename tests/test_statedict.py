"""State-dict arithmetic: pure, exact where it should be, integer buffers by the documented rule."""

from __future__ import annotations

import pytest
import torch

from medsoup.core.models import create_model
from medsoup.merging import statedict as sd


def _model_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = create_model("smallcnn", 2, in_chans=1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(seed + 3)
    return sd.clone(model.state_dict())


@pytest.fixture
def states():
    return [_model_state(s) for s in range(3)]


def _copies(states):
    return [sd.clone(s) for s in states]


def _equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_soup_of_identical_models_is_that_model(states):
    same = [states[0]] * 4
    avg = sd.average(same)
    for k, v in states[0].items():
        assert avg[k].dtype == v.dtype
        assert torch.allclose(avg[k], v, atol=1e-7, rtol=0) if v.is_floating_point() else torch.equal(avg[k], v)


def test_functions_never_change_their_inputs(states):
    before = _copies(states)
    sd.average(states)
    sd.weighted_sum(states, [0.2, 0.3, 0.5])
    sd.interpolate(states[0], states[1], 0.3)
    sd.add(states[0], states[1])
    sd.sub(states[0], states[1])
    sd.scale(states[0], 2.0)
    assert all(_equal(a, b) for a, b in zip(before, states))


def test_weighted_sum_matches_manual_sum_and_integers_take_the_max(states):
    w = [0.2, -0.5, 1.3]
    out = sd.weighted_sum(states, w)
    for k, v in out.items():
        if v.is_floating_point():
            assert torch.allclose(v, sum(wi * s[k] for wi, s in zip(w, states)), atol=1e-6)
        else:
            assert int(v) == 2 + 3  # num_batches_tracked: max over the models (seed 2 -> 5)


def test_average_is_the_mean(states):
    out = sd.average(states)
    key = "features.0.weight"
    assert torch.allclose(out[key], torch.stack([s[key] for s in states]).mean(0), atol=1e-7)


def test_interpolation_endpoints_are_exact(states):
    a, b = states[0], states[1]
    assert _equal(sd.interpolate(a, b, 0.0), a)
    assert _equal(sd.interpolate(a, b, 1.0), b)
    mid = sd.interpolate(a, b, 0.5)
    assert torch.allclose(mid["head.weight"], (a["head.weight"] + b["head.weight"]) / 2)
    assert torch.equal(sd.interpolate(a, b, 0.4)["features.1.num_batches_tracked"], a["features.1.num_batches_tracked"])


def test_task_arithmetic_round_trip(states):
    a, b = states[0], states[1]
    back = sd.add(sd.sub(a, b), b)
    assert all(torch.allclose(back[k].float(), a[k].float(), atol=1e-6) for k in a)
    assert torch.allclose(sd.scale(a, 3.0)["head.bias"], 3 * a["head.bias"])
    assert torch.equal(sd.scale(a, 3.0)["features.1.num_batches_tracked"], a["features.1.num_batches_tracked"])


def test_mismatched_states_raise_naming_the_key(states):
    broken = dict(states[1])
    broken.pop("head.bias")
    with pytest.raises(ValueError, match="head.bias"):
        sd.average([states[0], broken])
    other = dict(states[1], **{"head.weight": torch.zeros(3, 128)})
    with pytest.raises(ValueError, match="head.weight"):
        sd.interpolate(states[0], other, 0.5)
    with pytest.raises(ValueError, match="weights"):
        sd.weighted_sum(states, [1.0])
