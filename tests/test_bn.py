"""BatchNorm recalibration: same statistics as torch's update_bn, weights and modes untouched."""

from __future__ import annotations

import copy

import torch
from torch.optim.swa_utils import update_bn

from medsoup.core.bn import evaluate_state, recalibrate_bn, train_images
from medsoup.core.models import create_model
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
