"""Pure helpers checked by hand or against scipy: schedules, metrics, stats, profiles, figures."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from medsoup import figures
from medsoup.chapters import baselines
from medsoup.core import schedules, stats
from medsoup.core.metrics import compute_metrics, confusion
from medsoup.runs import profiles

# ---------------------------------------------------------------- schedules


def test_multistep():
    lr = schedules.make_schedule("multistep", 1.0, 100, 10, milestones=(0.5, 0.75), gamma=0.1)
    assert [lr(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine():
    lr = schedules.make_schedule("cosine", 1.0, 100, 10, min_lr=0.1)
    assert lr(0) == pytest.approx(1.0)
    assert lr(50) == pytest.approx(0.55)
    assert lr(100) == pytest.approx(0.1)
    assert lr(25) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))


def test_constant():
    assert schedules.make_schedule("constant", 0.3, 10, 5)(7) == 0.3


def test_cyclical_at_cycle_start_middle_and_end():
    c, hi, lo = 8, 1e-5, 1e-8
    assert schedules.cyclical_lr(1, c, hi, lo) == pytest.approx(hi - (hi - lo) * 2 / c)  # t = 1/c
    assert schedules.cyclical_lr(c // 2, c, hi, lo) == pytest.approx(lo)  # t = 1/2: the minimum
    assert schedules.cyclical_lr(c, c, hi, lo) == pytest.approx(hi)  # t = 1: back to the maximum
    assert schedules.cyclical_lr(c + 1, c, hi, lo) == schedules.cyclical_lr(1, c, hi, lo)  # periodic
    values = [schedules.cyclical_lr(i, c, hi, lo) for i in range(1, c + 1)]
    assert values[: c // 2] == sorted(values[: c // 2], reverse=True) and values[c // 2 - 1:] == sorted(values[c // 2 - 1:])
    assert [i for i in range(1, 3 * c + 1) if schedules.is_cycle_minimum(i, c)] == [4, 12, 20]


def test_cyclical_through_make_schedule_uses_zero_based_steps():
    lr = schedules.make_schedule("cyclical", 1.0, 40, 5, min_lr=0.0, cycle_epochs=2.0)  # cycle of 10 steps
    assert schedules.cycle_length(2.0, 5) == 10
    assert lr(4) == pytest.approx(0.0) and lr(9) == pytest.approx(1.0)
    assert schedules.cycle_length(1.3, 3) % 2 == 0


def test_cyclical_needs_an_even_cycle_and_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="even number"):
        schedules.cyclical_lr(1, 5, 1.0, 0.0)
    with pytest.raises(ValueError, match="'linear'.*cosine"):
        schedules.make_schedule("linear", 1.0, 10, 1)


# ---------------------------------------------------------------- metrics

def _logits_from_probs(p):
    return torch.log(torch.tensor(p, dtype=torch.float32))


def test_binary_metrics_by_hand():
    targets = torch.tensor([0, 0, 1, 1])
    scores = [0.1, 0.6, 0.35, 0.8]  # positive-class probabilities
    metrics = compute_metrics("binary", targets, _logits_from_probs([[1 - s, s] for s in scores]))
    # pairs (neg, pos): (0.1,0.35) ok, (0.1,0.8) ok, (0.6,0.35) wrong, (0.6,0.8) ok -> AUC 3/4
    assert metrics["auc"] == pytest.approx(0.75)
    # predictions 0, 1, 0, 1: two right
    assert metrics["acc"] == pytest.approx(0.5)
    assert metrics["recall"] == pytest.approx(0.5)  # recall 1/2 for each class
    assert metrics["f1"] == pytest.approx(0.5)  # precision 1/2, recall 1/2 for each class


def test_multiclass_metrics_by_hand():
    targets = torch.tensor([0, 1, 2, 2])
    probs = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7]]
    metrics = compute_metrics("multi-class", targets, _logits_from_probs(probs))
    assert metrics["acc"] == pytest.approx(0.75)
    assert metrics["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    # F1 per class: 1, 2 * (1/2 * 1) / (3/2) = 2/3, 2 * (1 * 1/2) / (3/2) = 2/3
    assert metrics["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # one-vs-rest AUCs: class 0 and 1 perfectly ranked; class 2 scores 0.1, 0.1 (neg) vs 0.3, 0.7 (pos): 1
    assert metrics["auc"] == pytest.approx(1.0)
    assert confusion(targets, _logits_from_probs(probs)).tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


def test_multiclass_auc_with_an_absent_class_averages_the_present_ones():
    targets = torch.tensor([0, 0, 1, 1])
    probs = [[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1]]
    metrics = compute_metrics("ordinal", targets, _logits_from_probs(probs))
    assert metrics["auc"] == pytest.approx(1.0)  # class 2 never occurs: left out, not an error
    assert metrics["acc"] == pytest.approx(0.75)


def test_multilabel_metrics_by_hand():
    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.float32)
    probs = torch.tensor([[0.9, 0.2], [0.4, 0.3], [0.6, 0.8], [0.7, 0.1]])
    metrics = compute_metrics("multi-label", targets, torch.logit(probs))
    # label 0: positives 0.9, 0.6 vs negatives 0.4, 0.7 -> 3/4; label 1: 0.3, 0.8 vs 0.2, 0.1 -> 1
    assert metrics["auc_per_label"] == pytest.approx([0.75, 1.0])
    assert metrics["auc"] == pytest.approx(0.875)
    # thresholded at 0.5: [[1,0],[0,0],[1,1],[1,0]] -> 6 of 8 entries right
    assert metrics["acc"] == pytest.approx(0.75)
    # label 0: recall 1, precision 2/3, F1 0.8; label 1: recall 1/2, precision 1, F1 2/3
    assert metrics["recall"] == pytest.approx(0.75)
    assert metrics["f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_auc_is_nan_for_a_single_class_split():
    metrics = compute_metrics("binary", torch.tensor([1, 1, 1]), torch.randn(3, 2))
    assert math.isnan(metrics["auc"]) and 0 <= metrics["acc"] <= 1


# ---------------------------------------------------------------- stats

def test_summarise():
    summary = stats.summarise([0.8, 0.9, 1.0])
    assert (summary.mean, summary.std, summary.n) == pytest.approx((0.9, 0.1, 3))
    assert str(summary) == "0.900 ± 0.100 (n=3)"
    assert math.isnan(stats.summarise([0.5]).std)
    with pytest.raises(ValueError, match="empty"):
        stats.summarise([])


@pytest.mark.parametrize("a,b", [([0.81, 0.84, 0.79, 0.86, 0.83], [0.84, 0.85, 0.83, 0.86, 0.88]),
                                 ([1.0, 2.0, 3.0], [1.5, 2.1, 3.9])])
def test_paired_difference_matches_scipy_ttest_rel(a, b):
    diff = stats.paired_difference(a, b, confidence=0.9)
    reference = scipy_stats.ttest_rel(b, a)
    interval = reference.confidence_interval(0.9)
    assert diff.mean == pytest.approx(np.mean(np.subtract(b, a)))
    assert diff.p_value == pytest.approx(reference.pvalue)
    assert (diff.low, diff.high) == pytest.approx((interval.low, interval.high))
    assert diff.n == len(a)
    assert diff.significant == (interval.low > 0 or interval.high < 0)


def test_paired_difference_edge_cases():
    single = stats.paired_difference([0.5], [0.7])
    assert single.mean == pytest.approx(0.2) and math.isnan(single.p_value) and not single.significant
    constant = stats.paired_difference([1.0, 2.0], [1.5, 2.5])  # differences exactly equal
    assert constant.low == constant.high == 0.5 and constant.p_value == 0.0 and constant.significant
    with pytest.raises(ValueError, match="same non-zero length"):
        stats.paired_difference([1, 2], [1])


# ---------------------------------------------------------------- profiles

TABLE = {"smoke": {"epochs": 1, "seeds": (0,)}, "cpu": {"epochs": 10, "seeds": (0, 1)}, "paper": {"epochs": 100, "seeds": (0, 1, 2)}}


def test_settings_apply_non_none_overrides():
    assert profiles.settings(TABLE, "cpu") == {"epochs": 10, "seeds": (0, 1), "profile": "cpu", "overrides": {}}
    assert profiles.settings(TABLE, "smoke", epochs=3, seeds=None) == {"epochs": 3, "seeds": (0,), "profile": "smoke",
                                                                       "overrides": {"epochs": 3}}
    # a value equal to the profile's (a list for a tuple, as papermill passes it) is no override
    assert profiles.settings(TABLE, "cpu", epochs=10, seeds=[0, 1])["overrides"] == {}
    assert TABLE["smoke"]["epochs"] == 1  # the table is not modified


def test_settings_errors_name_the_unknown_key_or_profile():
    with pytest.raises(ValueError, match="unknown setting.*epoch\\b.*known: epochs, seeds"):
        profiles.settings(TABLE, "cpu", epoch=3)
    with pytest.raises(ValueError, match="unknown profile 'gpus'; valid profiles: auto, smoke, cpu, gpu, paper"):
        profiles.settings(TABLE, "gpus")
    with pytest.raises(ValueError, match="profile 'gpu' has no settings in this table; it has: smoke, cpu, paper"):
        profiles.settings(TABLE, "gpu")


def test_auto_is_gpu_with_cuda_and_cpu_without(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profiles.resolve_profile("auto") == "gpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profiles.resolve_profile("auto") == "cpu"


def test_baseline_runs_follow_the_recipe():
    for profile in profiles.PROFILES:
        recipe = profiles.settings(baselines.BASELINE, profile)
        for dataset in recipe["datasets"]:
            config = baselines.baseline_run(recipe, dataset, seed=recipe["seeds"][-1])
            assert (config.dataset, config.model, config.size) == (dataset, recipe["model"], recipe["size"])
            assert (config.train.epochs, config.train.lr, config.train.seed) == (recipe["epochs"], recipe["lr"], recipe["seeds"][-1])
            assert config.train_subset == recipe["train_subset"]


# ---------------------------------------------------------------- figures

def test_figures_build_without_a_display():
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_acc": 0.5 + e / 10, "val_auc": 0.6}
               for e in (1, 2, 3)]
    fig = figures.learning_curves(history)
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2
    fig = figures.confusion_matrix(np.array([[3, 1], [0, 4]]), ["a very long class name indeed", "b"])
    assert fig.axes[0].get_xlabel() == "predicted"
    fig = figures.image_grid(torch.zeros(5, 3, 28, 28, dtype=torch.uint8), ["a"] * 5, ncols=4)
    assert len(fig.axes) == 8 and sum(bool(ax.images) for ax in fig.axes) == 5
    matplotlib.pyplot.close("all")


def test_figure_flat_gives_a_flat_array_of_panels_for_any_grid():
    for nrows, ncols in ((1, 1), (1, 3), (2, 2)):
        fig, axes = figures.figure(nrows, ncols, flat=True)
        assert axes.shape == (nrows * ncols,) and list(axes) == fig.axes
    _, ax = figures.figure()
    assert isinstance(ax, matplotlib.axes.Axes)
    assert figures.figure(2, 3)[1].shape == (2, 3)
    matplotlib.pyplot.close("all")


def test_paired_outcome_words_and_columns_round_trip():
    better = stats.paired_difference([0.5, 0.6, 0.7], [0.6, 0.71, 0.79])
    assert better.outcome == "better"
    assert better.describe("B", "A", "ACC").startswith("B is better than A in ACC: +0.100 (95% CI [+0.")
    worse = stats.paired_difference([0.6, 0.71, 0.79], [0.5, 0.6, 0.7])
    assert worse.outcome == "worse" and "B is worse than A" in worse.describe("B", "A", "ACC")
    unclear = stats.paired_difference([0.5, 0.6, 0.7], [0.6, 0.5, 0.71])
    assert unclear.outcome == "no significant difference"
    assert "not significantly different from" in unclear.describe("B", "A", "ACC")
    one = stats.paired_difference([0.5], [0.6])
    assert one.outcome == "one seed" and one.describe("B", "A", "ACC") == "B minus A is +0.100 ACC on one seed, too few to test"
    assert stats.PairedDifference.from_columns(better.columns()) == better


@pytest.mark.parametrize("n", [3, 5, 10, 30])
def test_minimum_detectable_effect_has_about_80_percent_power(n):
    sd = 0.02
    mde = stats.minimum_detectable_effect(sd, n)
    t = scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.8, n - 1)
    assert mde == pytest.approx(t * sd / math.sqrt(n))
    # exact power of the two-sided paired t-test at a true difference of mde (noncentral t)
    crit, shift = scipy_stats.t.ppf(0.975, n - 1), mde / (sd / math.sqrt(n))
    power = scipy_stats.nct.sf(crit, n - 1, shift) + scipy_stats.nct.cdf(-crit, n - 1, shift)
    assert power == pytest.approx(0.8, abs=0.04 if n == 3 else 0.01)  # the approximation is close from n = 5


def test_minimum_detectable_effect_edges_and_the_paired_column():
    assert math.isnan(stats.minimum_detectable_effect(0.1, 1)) and stats.minimum_detectable_effect(0.0, 4) == 0
    with pytest.raises(ValueError, match="alpha and power"):
        stats.minimum_detectable_effect(0.1, 4, power=1.0)
    a, b = [0.5, 0.6, 0.7, 0.8], [0.52, 0.61, 0.73, 0.81]
    diff = stats.paired_difference(a, b)
    assert diff.mde == pytest.approx(stats.minimum_detectable_effect(float(np.std(np.subtract(b, a), ddof=1)), 4))
    assert diff.columns()["mde"] == diff.mde and math.isnan(stats.paired_difference([0.5], [0.6]).mde)


def test_judge_calls_better_or_worse_only_below_the_adjusted_threshold():
    assert stats.judge(0.02, 0.049, 5) == "better" and stats.judge(-0.02, 0.049, 5) == "worse"
    assert stats.judge(0.02, 0.05, 5) == "no significant difference"  # not strictly below
    assert stats.judge(0.02, float("nan"), 5) == "no significant difference"
    assert stats.judge(0.02, 0.01, 1) == "one seed"
    assert stats.judge(-0.02, 0.01, 5, higher_is_better=False) == "better"
    assert stats.judge(-0.02, 0.01, 5, higher_is_better=None) == "lower"


def test_paired_outcome_for_costs_and_for_quantities_that_are_neither():
    lower = stats.paired_difference([0.6, 0.71, 0.79], [0.5, 0.6, 0.7])  # b below a on every seed
    assert lower.judged(False) == "better" and "B is better than A in loss" in lower.describe("B", "A", "loss", lower.judged(False))
    assert lower.judged(None) == "lower" and "B is lower than A in barrier: -0.100" in lower.describe("B", "A", "barrier", lower.judged(None))
    assert lower.columns(None)["nominal"] == "lower" and lower.columns()["nominal"] == "worse"
    higher = stats.paired_difference([0.5, 0.6, 0.7], [0.6, 0.71, 0.79])
    assert higher.judged(None) == "higher" and higher.judged(False) == "worse"
    unclear = stats.paired_difference([0.5, 0.6, 0.7], [0.6, 0.5, 0.71])
    assert {unclear.judged(d) for d in (True, False, None)} == {"no significant difference"}
