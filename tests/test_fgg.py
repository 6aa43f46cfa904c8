"""Fast Geometric Generation: the cyclical schedule, snapshots at its minima, the zoo's configs."""

from __future__ import annotations

import math

import pytest
import torch

from medsoup.chapters import fissionfusion as ff, fissionfusion_soups as soups
from medsoup.chapters.fissionfusion import FISSIONFUSION
from medsoup.core.models import create_model
from medsoup.core.schedules import cycle_length, cyclical_lr, is_cycle_minimum
from medsoup.core.train import Callback, fit
from medsoup.merging.fgg import CycleSnapshots, fgg_epochs
from medsoup.runs.profiles import settings
from medsoup.runs.store import run
from tests.conftest import TINY_TRAIN, real_file, tiny

HI, LO = 1e-5, 1e-8


@pytest.mark.parametrize("cycle", [2, 4, 8])
def test_schedule_start_middle_end(cycle):
    # start of a cycle: one step down from alpha_1; middle: alpha_2; end: back at alpha_1
    assert cyclical_lr(1, cycle, HI, LO) == pytest.approx(LO * 2 / cycle + HI * (1 - 2 / cycle))
    assert cyclical_lr(cycle // 2, cycle, HI, LO) == pytest.approx(LO, rel=1e-12)
    assert cyclical_lr(cycle, cycle, HI, LO) == pytest.approx(HI, rel=1e-12)
    for i in range(1, 3 * cycle + 1):
        assert cyclical_lr(i + cycle, cycle, HI, LO) == pytest.approx(cyclical_lr(i, cycle, HI, LO))
        assert LO - 1e-20 <= cyclical_lr(i, cycle, HI, LO) <= HI + 1e-20
        assert is_cycle_minimum(i, cycle) == (cyclical_lr(i, cycle, HI, LO) == pytest.approx(LO, rel=1e-9))
    with pytest.raises(ValueError, match="even"):
        cyclical_lr(1, 3, HI, LO)


class RecordStates(Callback):
    def __init__(self):
        self.states = []

    def on_step_end(self, model, step):
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def test_snapshots_are_the_states_at_the_cycle_minima():
    data = tiny(n=32)                    # 2 steps per epoch at batch size 16: a cycle of 4 steps
    cycle_epochs, n = 2.0, 3
    config = TINY_TRAIN.replace(epochs=fgg_epochs(n, cycle_epochs), schedule="cyclical", lr=HI, min_lr=LO,
                                cycle_epochs=cycle_epochs, restore_best=False)
    torch.manual_seed(0)
    model = create_model("smallcnn", 2, in_chans=1)
    snapshots, record = CycleSnapshots(cycle_epochs), RecordStates()
    fit(model, data, config, [snapshots, record], progress=False)
    cycle = cycle_length(cycle_epochs, 2)
    minima = [s for s in range(len(record.states)) if is_cycle_minimum(s + 1, cycle)]
    assert len(snapshots.snapshots) == len(minima) == n
    for snap, step in zip(snapshots.snapshots, minima):
        assert all(torch.equal(snap[k], record.states[step][k]) for k in snap)
    final = model.state_dict()  # the last iteration is a minimum: the last snapshot is the final model
    assert all(torch.equal(snapshots.snapshots[-1][k], final[k]) for k in final)
    assert sorted(snapshots.artifacts()) == [f"snapshot_{i}" for i in range(n)]
    resumed = CycleSnapshots(cycle_epochs)
    resumed.load_state_dict(snapshots.state_dict())
    assert all(torch.equal(a[k], b[k]) for a, b in zip(resumed.snapshots, snapshots.snapshots) for k in a)


def test_fgg_epochs_cover_the_snapshots():
    assert fgg_epochs(5, 4.0) == 18 and fgg_epochs(5, 2.0) == 9 and fgg_epochs(3, 1.0) == 3
    with pytest.raises(ValueError, match="positive"):
        CycleSnapshots(0)


def test_zoo_configs_follow_the_paper_recipe():
    s = settings(FISSIONFUSION, "cpu")
    grid = ff.grid_runs(s, "retinamnist", seed=1)
    assert len(grid) == len(s["lrs"]) * len(s["augments"]) * s["grid_seeds"]
    assert len({repr(g) for g in grid}) == len(grid)
    warm = ff.warmup_run(s, "retinamnist", 1)
    assert all(g.init == warm for g in grid)
    assert warm.train.linear_probe and not warm.train.bn_trainable
    assert warm.init == "imagenet" and warm.model == "tf_efficientnet_lite0"  # one shared pre-trained init
    assert {g.train.seed for g in grid} == {1}  # one grid seed: the zoo's seed
    bases = ff.base_runs(s, "retinamnist", 1)
    assert all(b in grid for b in bases)            # shared with the grid search through the run cache
    assert [b.train.lr for b in bases] == list(s["lrs"])
    for base, run_ in zip(bases, ff.fgg_runs(s, "retinamnist", 1)):
        t = run_.train
        assert run_.init == base and t.schedule == "cyclical" and not t.restore_best
        assert (t.lr, t.min_lr, t.cycle_epochs) == (s["fgg_lr_max"], s["fgg_lr_min"], s["fgg_cycle_epochs"])
        assert run_.callbacks == (("cycle_snapshots", {"cycle_epochs": s["fgg_cycle_epochs"]}),)
        assert t.epochs == math.ceil((s["fgg_snapshots"] - 0.5) * s["fgg_cycle_epochs"])
    assert ff.pretrain_run(settings(FISSIONFUSION, "paper"), "retinamnist") == "imagenet"
    swa = ff.swa_run(s, "retinamnist", 1)  # from theta_0 at a grid model's budget, the average kept
    t, (lr, swa_lr) = swa.train, s["swa_lrs"]
    assert swa.init == warm and t.epochs == s["epochs"] and not t.restore_best and t.augment == s["fgg_augment"]
    assert (t.schedule, t.lr, t.milestones, t.gamma) == ("multistep", lr, (s["swa_start"],), pytest.approx(swa_lr / lr))
    assert swa.callbacks == (("swa", {"start": s["swa_start"]}),)


def test_every_profile_starts_from_imagenet_and_names_known_methods():
    for profile in ("smoke", "cpu", "paper"):
        s = settings(FISSIONFUSION, profile)
        assert ff.pretrain_run(s, s["datasets"][0]) == "imagenet"
        assert set(s["averaged_methods"]) <= set(s["methods"]) <= set(soups.SOUPS)
        assert "SWA" in s["methods"] and "SWA" not in s["averaged_methods"]  # its BN was recomputed, not averaged
        assert set(s["lmc_bn"]) <= {"averaged", "recomputed"} and 0 < s["lmc_seeds"] <= len(s["seeds"])
    assert settings(FISSIONFUSION, "paper")["methods"] == soups.METHODS + soups.ABLATION + tuple(soups.REFERENCES)
    cpu = settings(FISSIONFUSION, "cpu")
    assert len(cpu["seeds"]) >= 5 and "retinamnist" in cpu["datasets"] and cpu["train_subset"] is None
    assert cpu["fgg_snapshots"] >= 4 and cpu["fgg_augment"] in cpu["augments"]  # FGG's bases are grid models
    assert {"GoG", "FGG+Greedy", "Greedy soup", "GS(best)"} <= set(cpu["methods"])


def test_lmc_pairs_differ_in_one_hyperparameter_only():
    for profile in ("smoke", "cpu"):
        s = settings(FISSIONFUSION, profile)
        seed = s["seeds"][-1]
        pairs = ff.lmc_pairs(s, s["datasets"][0], seed)
        assert tuple(pairs) == ff.PAIR_KINDS
        grid = ff.grid_runs(s, s["datasets"][0], seed)
        for kind, (a, b) in pairs.items():
            ta, tb = a.train, b.train
            differs = {k for k in ("lr", "augment", "seed") if getattr(ta, k) != getattr(tb, k)}
            assert differs == {{"seed": "seed", "augmentation": "augment", "learning rate": "lr"}[kind]}, (profile, kind)
            assert a in grid  # the first run is always this zoo's (a run-cache hit after notebook 20)
            if kind == "augmentation":  # from the grid where it has two levels, else one run trained for the pair
                assert (b in grid) == (len(s["augments"]) > 1)
    for profile in ("smoke", "cpu"):  # two grid seeds (both replicates in the grid), one (replicate 1 beside it)
        s = settings(FISSIONFUSION, profile)
        a, b = ff.lmc_pairs(s, s["datasets"][0], 0)["seed"]
        assert a.init == b.init and a.init.train.seed == 0  # the same warm-up: only the fine-tuning seed differs
        assert a.replace(train=a.train.replace(seed=b.train.seed)) == b
        assert (b in ff.grid_runs(s, s["datasets"][0], 0)) == (s["grid_seeds"] > 1)


@pytest.mark.skipif(real_file("breastmnist") is None, reason="breastmnist.npz not available")
def test_fgg_run_stores_snapshots_as_artifacts(run_cache):
    s = settings(FISSIONFUSION, "smoke")
    base = ff.grid_run(s, "breastmnist", 0, 1e-3, "heavy", 0).replace(init=None, train_subset=64, model="smallcnn")
    base = base.with_train(epochs=1, device="cpu")
    result = run(ff.fgg_run(s, base), run_cache, progress=False)
    assert result.artifacts == [f"snapshot_{i}" for i in range(s["fgg_snapshots"])]
    last = result.load_artifact(f"snapshot_{s['fgg_snapshots'] - 1}")
    final = result.load_state()
    assert all(torch.equal(last[k], final[k]) for k in final)
    # per-image test predictions of the final model and of every snapshot (a state of the model)
    assert result.predictions == ["model", *result.artifacts]
    assert torch.equal(result.load_predictions(f"snapshot_{s['fgg_snapshots'] - 1}")[0], result.load_predictions()[0])
    with pytest.raises(KeyError, match="no test predictions 'swa'; it has: model, snapshot_0"):
        result.load_predictions("swa")
