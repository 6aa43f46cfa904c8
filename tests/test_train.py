"""fit: configs, optimizers and schedules, best-epoch selection, callbacks, linear probing,
task kinds, determinism, exact resume, and non-finite losses."""

from __future__ import annotations

import math

import pytest
import torch

from medsoup.core import checkpoint as ckpt
from medsoup.core import train
from medsoup.core.models import create_model
from tests.conftest import TINY_TRAIN, StopAfter, tiny


def _fit(data, config=TINY_TRAIN, callbacks=(), checkpoint=None, model=None, seed=0, deferred_checks=None):
    torch.manual_seed(seed)
    model = model or create_model("smallcnn", data.num_classes, data.in_chans)
    return model, train.fit(model, data, config, callbacks, checkpoint=checkpoint, progress=False,
                            deferred_checks=deferred_checks)


class Recorder(train.Callback):
    def __init__(self):
        self.calls = []

    def on_fit_start(self, model, steps_per_epoch, total_steps):
        self.calls.append(("start", steps_per_epoch, total_steps))

    def on_step_end(self, model, step):
        self.calls.append(("step", step))

    def on_epoch_end(self, model, epoch, record):
        record["custom"] = epoch
        self.calls.append(("epoch", epoch))

    def on_fit_end(self, model):
        self.calls.append(("end",))

    def load_state_dict(self, state):
        self.calls.append(("load",))


# ---------------------------------------------------------------- config

@pytest.mark.parametrize("field,value", [("optimizer", "lion"), ("schedule", "step"),
                                         ("augment", "max"), ("select_metric", "kappa")])
def test_unknown_config_values_name_valid_ones(field, value):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'; valid: "):
        train.TrainConfig(**{field: value})


def test_unknown_config_field_is_named_with_valid_fields():
    with pytest.raises(ValueError, match="learning_rate.*valid fields: epochs, batch_size"):
        train.TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="epoch\\b"):
        TINY_TRAIN.replace(epoch=3)
    assert TINY_TRAIN.replace(epochs=5).epochs == 5


@pytest.mark.parametrize("changes,pattern", [
    ({"lr": 0}, "lr must be a finite number > 0, got 0"),
    ({"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"gamma": 0}, "gamma must be a finite number > 0"),
    ({"cycle_epochs": 0}, "cycle_epochs must be a finite number > 0"),
    ({"weight_decay": float("inf")}, "weight_decay must be a finite number >= 0"),
    ({"milestones": (0.5, 1.5)}, r"every milestone must be a finite number in \[0, 1\], got 1.5"),
    ({"milestones": (0.75, 0.5)}, "milestones must be increasing"),
    ({"device": "foo"}, "device 'foo' is not a torch device"),
    ({"threads": 0}, "threads must be a whole number >= 1, got 0"),
])
def test_invalid_numbers_are_refused_when_the_config_is_built(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        train.TrainConfig(**changes)


def test_fit_trains_with_its_thread_count_and_restores_the_callers(tiny_data):
    seen = []

    class Threads(train.Callback):
        def on_step_end(self, model, step):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    _fit(tiny_data, TINY_TRAIN.replace(threads=2, epochs=1), [Threads()])
    assert set(seen) == {2} and torch.get_num_threads() == before


def test_a_run_that_ends_at_chance_says_so(tiny_data):
    with pytest.warns(train.ChanceLevelWarning, match="at chance level on the validation split"):
        _fit(tiny_data, TINY_TRAIN.replace(optimizer="adam", lr=1e3, epochs=1))


@pytest.mark.parametrize("changes,pattern", [
    ({"epochs": 2.5}, "epochs must be a whole number, got 2.5"),
    ({"batch_size": 16.0}, "batch_size must be a whole number, got 16.0"),
    ({"epochs": True}, "epochs must be a whole number"),
    ({"epochs": 0}, "epochs=0"),
    ({"label_smoothing": -0.1}, r"label_smoothing must be a finite number in \[0, 1\], got -0.1"),
    ({"momentum": 1.5}, r"momentum must be a finite number in \[0, 1\], got 1.5"),
    ({"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0"),
])
def test_out_of_range_numbers_are_named(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        TINY_TRAIN.replace(**changes)


# ---------------------------------------------------------------- fit

def test_fit_returns_history_and_restores_the_best_epoch(tiny_data):
    config = TINY_TRAIN.replace(epochs=3, select_metric="loss")
    model, result = _fit(tiny_data, config)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert {"train_loss", "lr", "val_acc", "val_auc", "val_f1", "val_recall", "val_loss", "time"} <= set(result.history[0])
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_epoch == best["epoch"]
    assert result.val["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert train.evaluate(model, tiny_data, "val") == result.val
    assert set(result.test) == {"acc", "auc", "f1", "recall", "loss", "ece", "nll", "brier"}
    assert result.steps == 3 * math.ceil(24 / 16)


def test_restore_best_false_keeps_the_last_epoch(tiny_data):
    model, result = _fit(tiny_data, TINY_TRAIN.replace(epochs=2, restore_best=False))
    assert result.val["loss"] == pytest.approx(result.history[-1]["val_loss"], rel=1e-5)


def test_same_config_and_seed_give_identical_numbers(tiny_data):
    _, first = _fit(tiny_data)
    _, second = _fit(tiny_data)
    strip = [{k: v for k, v in h.items() if k != "time"} for h in first.history]
    assert strip == [{k: v for k, v in h.items() if k != "time"} for h in second.history]
    assert first.val == second.val and first.test == second.test
    _, other = _fit(tiny_data, TINY_TRAIN.replace(seed=1))
    assert other.history[0]["train_loss"] != first.history[0]["train_loss"]


@pytest.mark.parametrize("optimizer,schedule,last_lr", [
    ("sgd", "multistep", 1e-3 * 0.1 ** 2),       # both milestones passed in the last epoch
    ("adamw", "cosine", None),
    ("adam", "constant", 1e-3),
    ("sgd", "cyclical", None),
])
def test_optimizers_and_schedules_train(tiny_data, optimizer, schedule, last_lr):
    config = TINY_TRAIN.replace(optimizer=optimizer, schedule=schedule, min_lr=1e-5, cycle_epochs=1.0)
    model, result = _fit(tiny_data, config)
    assert all(math.isfinite(h["train_loss"]) for h in result.history)
    if last_lr is not None:
        assert result.history[-1]["lr"] == pytest.approx(last_lr)
    if schedule == "cosine":  # last step of 4: cos(3/4 pi) half-way between min and base
        assert result.history[-1]["lr"] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(0.75 * math.pi)))
    if schedule == "cyclical":  # 2 steps per epoch, cycle of 2 steps: the last step is the cycle end
        assert result.history[-1]["lr"] == pytest.approx(1e-3)


def test_parameters_change_only_when_trained(tiny_data):
    model = create_model("smallcnn", 2, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _fit(tiny_data, TINY_TRAIN.replace(restore_best=False), model=model)
    assert not torch.equal(model.state_dict()["features.0.weight"], before["features.0.weight"])


def test_callback_hooks_see_every_step_and_epoch(tiny_data):
    recorder = Recorder()
    _, result = _fit(tiny_data, TINY_TRAIN, [recorder])
    steps = math.ceil(24 / 16)
    assert recorder.calls[0] == ("start", steps, 2 * steps)
    assert [c[1] for c in recorder.calls if c[0] == "step"] == list(range(2 * steps))
    assert [c[1] for c in recorder.calls if c[0] == "epoch"] == [0, 1]
    assert recorder.calls[-1] == ("end",)
    assert [h["custom"] for h in result.history] == [0, 1]


@pytest.mark.parametrize("bn_trainable", [False, True])
def test_linear_probe_trains_only_the_head_and_bn_by_flag(tiny_data, bn_trainable):
    model = create_model("smallcnn", 2, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TINY_TRAIN.replace(linear_probe=True, bn_trainable=bn_trainable, restore_best=False)
    _fit(tiny_data, config, model=model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"head.weight", "head.bias"} <= changed
    assert not any(k.endswith(".weight") and k.startswith("features.") and after[k].ndim == 4 for k in changed)
    bn = {"features.1.weight", "features.1.bias", "features.1.running_mean", "features.1.running_var"}
    assert (bn <= changed) if bn_trainable else not (bn & changed)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_multilabel_task_uses_bce_and_reports_per_label_auc():
    data = tiny("chestmnist", n=32)
    model, result = _fit(data)
    assert model.head.out_features == 14
    assert len(result.val["auc_per_label"]) == 14
    assert 0 <= result.val["acc"] <= 1 and math.isfinite(result.val["loss"])
    logits, targets = train.predict(model, data, "val")
    assert targets.shape == (32, 14) and targets.dtype == torch.float32
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert result.val["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_ordinal_task_trains_as_multiclass():
    data = tiny("retinamnist", n=20)
    model, result = _fit(data)
    logits, targets = train.predict(model, data, "val")
    assert logits.shape == (20, 5) and targets.dtype == torch.long
    assert result.val["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)), rel=1e-5)


def test_rgb_dataset_and_grayscale_to_three_channels():
    _, rgb = _fit(tiny("dermamnist", n=14), TINY_TRAIN.replace(epochs=1))
    assert math.isfinite(rgb.val["loss"])
    gray = tiny("breastmnist", n=16)
    model = create_model("smallcnn", 2, in_chans=3)
    _, result = _fit(gray, TINY_TRAIN.replace(epochs=1), model=model)
    assert math.isfinite(result.val["loss"])


def test_evaluation_does_not_change_weights(tiny_data):
    model = create_model("smallcnn", 2, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train.evaluate(model, tiny_data, "test")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


# ---------------------------------------------------------------- resume and failures

def test_resumed_fit_equals_an_uninterrupted_one(tiny_data, tmp_path):
    config = TINY_TRAIN.replace(epochs=4, schedule="cosine")
    _, whole = _fit(tiny_data, config)
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_data, config, [StopAfter(3)], checkpoint=tmp_path / "resume")
    assert ckpt.load_metadata(tmp_path / "resume")["epochs_done"] == 2  # interrupted before epoch 3's save
    recorder = Recorder()
    _, resumed = _fit(tiny_data, config, [recorder], checkpoint=tmp_path / "resume", seed=123)
    assert recorder.calls[:2] == [("load",), ("start", 2, 8)]  # state restored before on_fit_start
    assert [c[1] for c in recorder.calls if c[0] == "epoch"] == [2, 3]  # only the missing epochs ran
    strip = lambda history: [{k: v for k, v in h.items() if k not in ("time", "custom")} for h in history]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.val == whole.val and resumed.test == whole.test
    assert resumed.best_epoch == whole.best_epoch


def test_huge_learning_rate_stops_with_a_clear_message(tiny_data):
    with pytest.raises(train.NonFiniteLossError, match="loss became (nan|inf).*lr 1e\\+30"):
        _fit(tiny_data, TINY_TRAIN.replace(lr=1e30, optimizer="sgd", schedule="constant"))


class PoisonAt(train.Callback):
    """Fills every weight with NaN after optimizer step ``step``."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, model, step):
        if step == self.step:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(math.nan)


def test_non_finite_loss_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    steps = math.ceil(24 / 16)
    with pytest.raises(train.NonFiniteLossError, match="epoch 2"):
        _fit(tiny_data, TINY_TRAIN.replace(epochs=3), [PoisonAt(steps)], checkpoint=tmp_path / "resume")
    tensors, meta = ckpt.load_checkpoint(tmp_path / "resume")
    assert meta["epochs_done"] == 1 and len(meta["history"]) == 1
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith(("model.", "best.")))


def test_non_finite_weights_on_the_last_step_of_an_epoch_stop_training(tiny_data, tmp_path):
    steps = math.ceil(24 / 16)
    with pytest.raises(train.NonFiniteLossError, match="weights or BatchNorm statistics became non-finite in epoch 2"):
        _fit(tiny_data, TINY_TRAIN.replace(epochs=3), [PoisonAt(2 * steps - 1)], checkpoint=tmp_path / "resume")
    assert ckpt.load_metadata(tmp_path / "resume")["epochs_done"] == 1  # the last good epoch's state


def test_deferred_loss_check_gives_the_same_numbers_as_the_per_step_one(tiny_data):
    # the CUDA path's check (flag kept on the device, read at the epoch's end), run on the CPU
    config = TINY_TRAIN.replace(augment="heavy", epochs=3)
    _, immediate = _fit(tiny_data, config, deferred_checks=False)
    _, deferred = _fit(tiny_data, config, deferred_checks=True)
    strip = lambda history: [{k: v for k, v in h.items() if k != "time"} for h in history]  # noqa: E731
    assert strip(deferred.history) == strip(immediate.history)
    assert deferred.val == immediate.val and deferred.test == immediate.test


@pytest.mark.parametrize("deferred", [False, True])
def test_deferred_loss_check_names_the_first_bad_step_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path,
                                                                                          deferred):
    steps = math.ceil(24 / 16)  # NaN weights after step 2 (epoch 2's first): step 3's loss is the first NaN
    with pytest.raises(train.NonFiniteLossError, match=r"loss became nan at epoch 2, step 3\b") as error:
        _fit(tiny_data, TINY_TRAIN.replace(epochs=3), [PoisonAt(steps)], checkpoint=tmp_path / "resume",
             deferred_checks=deferred)
    assert ("checked at the end of the epoch" in str(error.value)) == deferred
    assert ckpt.load_metadata(tmp_path / "resume")["epochs_done"] == 1


def test_deferred_loss_check_reports_the_learning_rate_of_the_bad_step(tiny_data):
    with pytest.raises(train.NonFiniteLossError, match=r"loss became (nan|inf) at epoch 1, step \d+ .*lr 1e\+30"):
        _fit(tiny_data, TINY_TRAIN.replace(lr=1e30, optimizer="sgd", schedule="constant"), deferred_checks=True)


def test_loss_watch_keeps_the_first_non_finite_step_on_the_device():
    watch = train.LossWatch(deferred=True, device=torch.device("cpu"))
    for step, value in enumerate([1.0, 2.0, math.inf, math.nan, 3.0]):
        watch.update(torch.tensor(value), step, epoch=0, lr=0.1)
    assert int(watch.first_step) == 2 and float(watch.first_loss) == math.inf
    with pytest.raises(train.NonFiniteLossError, match=r"loss became inf at epoch 1, step 2 .*lr 0.5"):
        watch.raise_if_bad(0, lambda step: 0.5)
    train.LossWatch(deferred=True, device=torch.device("cpu")).raise_if_bad(0, lambda step: 0.5)  # none: no error


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fit_draws_on_the_gpu_and_is_seeded(tiny_data):
    config = TINY_TRAIN.replace(device="cuda", augment="heavy")
    (_, first), (_, second) = _fit(tiny_data, config), _fit(tiny_data, config)
    strip = lambda history: [{k: v for k, v in h.items() if k != "time"} for h in history]  # noqa: E731
    assert strip(first.history) == strip(second.history)
    with pytest.raises(train.NonFiniteLossError, match="checked at the end of the epoch"):
        _fit(tiny_data, config.replace(lr=1e30, optimizer="sgd", schedule="constant"))


class PoisonStatistics(train.Callback):
    """Sets one BatchNorm running variance to inf after the first step."""

    def on_step_end(self, model, step):
        if step == 0:
            model.features[1].running_var[0] = math.inf


def test_non_finite_batchnorm_statistics_stop_training(tiny_data):
    with pytest.raises(train.NonFiniteLossError, match=r"in epoch 1 \(features.1.running_var\)"):
        _fit(tiny_data, TINY_TRAIN, [PoisonStatistics()])


def test_huge_but_finite_sgd_steps_stop_instead_of_crashing_in_the_metrics(tiny_data):
    # lr 1e3: every training loss is finite, the validation outputs overflow; before, scikit-learn's
    # "Input contains NaN" escaped from the metrics
    with pytest.raises(train.NonFiniteLossError, match="outputs on the val split are not finite.*lr 1000"):
        _fit(tiny_data, TINY_TRAIN.replace(lr=1e3, optimizer="sgd", schedule="constant"))


def test_evaluate_refuses_non_finite_outputs(tiny_data):
    model = create_model("smallcnn", 2, 1)
    with torch.no_grad():
        model.head.bias.fill_(math.nan)
    with pytest.raises(train.NonFiniteLossError, match="outputs on the test split are not finite \\(48 of 48"):
        train.evaluate(model, tiny_data, "test")


@pytest.mark.parametrize("changes,pattern", [
    ({"config": TINY_TRAIN.replace(epochs=4)}, "train_config.epochs: checkpoint 3 vs now 4"),
    ({"config": TINY_TRAIN.replace(epochs=3, optimizer="sgd")}, "train_config.optimizer: checkpoint 'adamw' vs now 'sgd'"),
    ({"data": tiny("breastmnist", n=20)}, "data.train_images: checkpoint 24 vs now 20"),
    ({"model": create_model("smallcnn", 2, 3)}, r"parameters.features.0.weight: checkpoint \[32, 1, 3, 3\] vs now \[32, 3, 3, 3\]"),
])
def test_resume_from_a_checkpoint_of_another_run_is_refused_by_name(tiny_data, tmp_path, changes, pattern):
    config = TINY_TRAIN.replace(epochs=3)
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_data, config, [StopAfter(2)], checkpoint=tmp_path / "resume")
    arguments = {"data": tiny_data, "config": config, **changes}
    with pytest.raises(ckpt.CheckpointError, match=pattern):
        _fit(arguments["data"], arguments["config"], checkpoint=tmp_path / "resume", model=arguments.get("model"))
    assert ckpt.load_metadata(tmp_path / "resume")["epochs_done"] == 1  # refused, not overwritten


def test_a_corrupted_resume_checkpoint_is_set_aside_and_training_starts_over(tiny_data, tmp_path):
    config = TINY_TRAIN.replace(epochs=3)
    _, whole = _fit(tiny_data, config)
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_data, config, [StopAfter(2)], checkpoint=tmp_path / "resume")
    path = tmp_path / "resume.safetensors"
    payload = bytearray(path.read_bytes())
    payload[-1] ^= 0xFF  # a flipped byte on disk
    path.write_bytes(bytes(payload))
    with pytest.warns(UserWarning, match="do not match the SHA-256.*moved to .*resume.unreadable-1.safetensors"):
        _, again = _fit(tiny_data, config, checkpoint=tmp_path / "resume")
    assert again.val == whole.val and again.test == whole.test
    assert (tmp_path / "resume.unreadable-1.safetensors").read_bytes() == bytes(payload)
    assert ckpt.load_metadata(tmp_path / "resume")["epochs_done"] == 3


def test_batches_draw_from_the_generator_on_its_device(tiny_data):
    # a CPU generator gives the order torch.randperm always gave; the draws happen where the generator is
    order = torch.randperm(24, generator=torch.Generator().manual_seed(5))
    batches = list(tiny_data.batches("train", 16, shuffle=True, generator=torch.Generator().manual_seed(5)))
    expected = tiny_data.splits["train"].images[order].float().div(127.5).sub(1.0)
    assert torch.equal(torch.cat([images for images, _ in batches]), expected)


def test_resume_with_a_data_generator_of_another_device_kind_is_refused(tiny_data, tmp_path):
    # a CUDA run's generator state does not fit the CPU generator (and back): named, not a crash
    config = TINY_TRAIN.replace(epochs=3)
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_data, config, [StopAfter(2)], checkpoint=tmp_path / "resume")
    tensors, meta = ckpt.load_checkpoint(tmp_path / "resume")
    tensors["rng.data"] = tensors["rng.data"][:16].clone()  # the size of a CUDA generator's state
    ckpt.save_checkpoint(tmp_path / "resume", tensors, meta)
    with pytest.raises(ckpt.CheckpointError, match="written on another device type"):
        _fit(tiny_data, config, checkpoint=tmp_path / "resume")
