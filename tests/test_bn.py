"""BatchNorm recalibration: same statistics as torch's update_bn, weights and modes untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.swa_utils import update_bn

from medsoup.core import bn
from medsoup.core.bn import evaluate_state, recalibrate_bn, train_images
from medsoup.core.models import create_model
from medsoup.core.train import evaluate
from medsoup.merging import statedict as sd
from tests.conftest import tiny


def _model():
    torch.manual_seed(0)
    return create_model("smallcnn", 2, in_chans=1)


def test_recalibration_matches_update_bn():
    data = tiny(n=40)
    model = _model()
    batches = train_images(data, model, batch_size=16)
    reference = copy.deepcopy(model)
    update_bn(batches, reference)
    before = {k: v.clone() for k, v in model.named_parameters()}
    model.eval()
    momentum = model.features[1].momentum
    recalibrate_bn(model, batches)
    ours, ref = model.state_dict(), reference.state_dict()
    for key in ours:
        if "running" in key:
            assert torch.allclose(ours[key], ref[key], atol=1e-5), key
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
    assert not model.training and model.features[1].momentum == momentum


def test_recalibration_from_meddata_and_max_images():
    data = tiny(n=40)
    model = _model()
    recalibrate_bn(model, data)
    stats = model.features[1].running_mean.clone()
    assert not torch.allclose(stats, torch.zeros_like(stats))
    assert sum(len(b) for b in train_images(data, model, batch_size=16, max_images=20)) == 20


def test_evaluate_state_with_and_without_recalibration():
    data = tiny(n=32)
    model = _model()
    soup = sd.average([_model().state_dict(), create_model("smallcnn", 2, in_chans=1).state_dict()])
    plain = evaluate_state(model, soup, data, "val")
    recal = evaluate_state(model, soup, data, "val", recalibrate=True)
    assert set(plain) >= {"acc", "auc", "f1", "loss"} and set(recal) == set(plain)
    assert not torch.allclose(model.features[1].running_var, soup["features.1.running_var"])


def _same(a: dict, b: dict) -> bool:
    """Equal metric dicts, NaN equal to NaN (tiny splits can have an undefined AUC)."""
    return a.keys() == b.keys() and all(x == y or (x != x and y != y) for x, y in ((a[k], b[k]) for k in a))


def test_state_evaluator_matches_evaluate_state_and_recalibrates_once_per_state(monkeypatch):
    data = tiny(n=32)
    states = [_model().state_dict(), create_model("smallcnn", 2, in_chans=1).state_dict()]
    expected = {(i, split): evaluate_state(_model(), s, data, split, recalibrate=True)
                for i, s in enumerate(states) for split in ("val", "test", "train")}
    calls = []
    monkeypatch.setattr(bn, "recalibrate_bn", lambda model, batches: calls.append(1) or recalibrate_bn(model, batches))
    model = _model()
    evaluator = bn.StateEvaluator(model, data, recalibrate=True)
    for i, s in enumerate(states):
        assert _same(evaluator.metrics(s, "val"), expected[i, "val"])
        assert _same(evaluator.metrics(s, "test"), expected[i, "test"])
    assert len(calls) == 2  # one recalibration per state, shared by its two splits
    assert _same(evaluator.metrics(states[0], "test"), expected[0, "test"]) and len(calls) == 2  # remembered
    statistics = bn.bn_statistics(model)
    assert set(statistics) == {k for k in model.state_dict() if "running" in k or "num_batches" in k}
    evaluate_state(model, states[0], data)  # written to from outside: the evaluator reloads states[1]
    assert _same(evaluator.metrics(states[1], "train"), expected[1, "train"]) and len(calls) == 3
    other = bn.StateEvaluator(_model(), data, recalibrate=True)
    other.load(states[1], statistics)  # known statistics instead of a recalibration
    assert len(calls) == 3 and _same(other.metrics(states[1], "test"), expected[1, "test"])


def test_for_evaluation_lays_out_channels_last_and_keeps_the_numbers():
    data = tiny(n=300)  # more validation images than one CPU evaluation batch
    model = _model()
    expected = {split: evaluate(copy.deepcopy(model), data, split) for split in ("val", "test")}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    options = bn.for_evaluation(model)
    assert options == {"batch_size": bn.CPU_EVALUATION_BATCH} and bn.CPU_EVALUATION_BATCH < len(data.splits["val"])
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    for split, metrics in expected.items():
        got = evaluate(model, data, split, **options)
        assert got["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
        assert got["acc"] == metrics["acc"]
    evaluate_state(model, state, data)  # loading a (contiguous) state keeps the layout
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
