"""SWA: the average is the hand average of the iterates, resumes exactly, and is an SWA run's final model."""

from __future__ import annotations

import pytest
import torch

from medsoup.core import data as md
from medsoup.core.bn import recalibrate_bn
from medsoup.core.metrics import probability_metrics
from medsoup.core.models import create_model
from medsoup.core.train import Callback, evaluate, fit
from medsoup.merging.swa import SWA, averaging_start, swa_schedule
from medsoup.runs import store as runs
from tests.conftest import TINY_TRAIN, StopAfter
from tests.test_runs import breast_file  # noqa: F401  (a synthetic BreastMNIST where the official file is absent)

TRAIN = TINY_TRAIN.replace(epochs=3, restore_best=False, **swa_schedule(1e-3, 3e-4, 0.5))


class Iterates(Callback):
    """Every iterate's parameters, after each optimizer step."""

    def __init__(self):
        self.states = []

    def on_step_end(self, model, step):
        self.states.append({k: p.detach().clone() for k, p in model.named_parameters()})


def _model(data):
    torch.manual_seed(0)
    return create_model("smallcnn", data.num_classes, 1, 28)


def test_average_is_the_hand_average_of_the_iterates_after_the_start(tiny_data):
    swa, iterates = SWA(start=0.3, every=2), Iterates()
    fit(_model(tiny_data), tiny_data, TRAIN, [swa, iterates], progress=False)
    total = len(iterates.states)  # 2 steps per epoch (24 images, batch 16) x 3 epochs
    first = averaging_start(0.3, total)  # 2 of 6: iterates 4 and 6 are averaged
    kept = [s for i, s in enumerate(iterates.states) if i + 1 > first and (i + 1 - first) % 2 == 0]
    assert swa.n_averaged == len(kept) == 2
    average = swa.average()
    for name in kept[0]:
        assert torch.allclose(average[name], torch.stack([s[name] for s in kept]).mean(0), atol=1e-7)


def test_resume_gives_the_same_average(tiny_data, tmp_path):
    whole = SWA(start=0.3)
    fit(_model(tiny_data), tiny_data, TRAIN, [whole], progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(_model(tiny_data), tiny_data, TRAIN, [SWA(start=0.3), StopAfter(2)], checkpoint=tmp_path / "resume",
            progress=False)
    resumed = SWA(start=0.3)
    fit(_model(tiny_data), tiny_data, TRAIN, [resumed], checkpoint=tmp_path / "resume", progress=False)
    assert resumed.n_averaged == whole.n_averaged > 0
    a, b = whole.average(), resumed.average()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finish_loads_the_average_and_recomputes_batchnorm(tiny_data):
    swa = SWA(start=0.5)
    model = _model(tiny_data)
    fit(model, tiny_data, TRAIN, [swa], progress=False)
    swa.finish(model, tiny_data)
    assert all(torch.equal(p, swa.average()[k]) for k, p in model.named_parameters())
    check = _model(tiny_data)
    check.load_state_dict(model.state_dict())
    recalibrate_bn(check, tiny_data)
    assert all(torch.allclose(check.state_dict()[k], v) for k, v in model.state_dict().items())


def test_bad_settings_are_named(tiny_data):
    with pytest.raises(ValueError, match=r"start must be .* \[0, 1\)"):
        SWA(start=1.0)
    with pytest.raises(ValueError, match="every must be"):
        SWA(every=0)
    with pytest.raises(RuntimeError, match="averaged no iterate"):
        SWA().finish(_model(tiny_data), tiny_data)


def test_swa_run_stores_the_average_as_its_final_model():
    config = runs.RunConfig(dataset="breastmnist", model="smallcnn", in_chans=1, train_subset=32,
                            train=TRAIN.replace(epochs=2), callbacks=(("swa", {"start": 0.5}),))
    result = runs.run(config, progress=False)
    assert result.artifacts == ["swa"] and result.predictions == ["model"]  # the average is no full state
    average, state = result.load_artifact("swa"), result.load_state()
    assert all(torch.equal(average[k], state[k]) for k in average if k != "n_averaged")
    data = md.load_dataset("breastmnist", train_subset=32)
    model = result.load_model()
    assert evaluate(model, data, "test") == pytest.approx(result.test, rel=1e-5)
    probs, targets = result.load_predictions()
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)))
    expected = {k: v for k, v in result.test.items() if k != "loss"}
    assert probability_metrics(data.task, targets, probs) == pytest.approx(expected, rel=1e-5)
