"""The InMerge chapter's protocol (backbone, baseline and InMerge arms) and its result tables."""

import pytest

import math

from medsoup.chapters.baselines import LITE0_CPU_RECIPES
from medsoup.chapters.inmerge import (INMERGE, architecture_settings, long_rows, main_variants, merge_rate_sentence,
                                      merge_rates_by_kind, protocol, sweep, tally, versus_baseline)
from medsoup.chapters.tables import verdict
from medsoup.runs.profiles import settings
from tests.conftest import real_file


def test_protocol_pairs_baseline_and_inmerge_on_one_backbone():
    s = settings(INMERGE, "smoke")
    runs = protocol(s, "breastmnist", 3, p=0.5)
    assert runs["baseline"].init == runs["backbone"] == runs["inmerge"].init
    assert runs["baseline"].callbacks == ()
    assert runs["inmerge"].callbacks == (("inmerge", dict(alpha=0.8, first_layer=33, p=0.5, tau=0.3, seed=3)),)
    assert runs["baseline"].train == runs["inmerge"].train
    assert runs["baseline"].train.epochs == s["merge_epochs"] and runs["backbone"].train.epochs == s["backbone_epochs"]


def test_versus_baseline_and_verdict_follow_the_paired_difference():
    rows = [{"dataset": "d", "seed": s, "baseline": {"auc": 0.80 + 0.01 * s}, "inmerge": {"auc": 0.82 + 0.01 * s + 0.001 * (s % 2)}}
            for s in range(5)]
    table = versus_baseline(rows, metrics=("auc",))
    row = table.iloc[0]
    assert row["n"] == 5 and row["difference"] == pytest.approx(0.0204) and row["ci_low"] > 0
    assert row["outcome"] == "better"
    assert row["reference_mean"] == pytest.approx(0.82) and row["method_mean"] == pytest.approx(0.8404)
    assert row["p_adjusted"] == pytest.approx(row["p_value"]) and row["family"] == 1  # one comparison
    text = verdict(table)
    assert text.startswith("On d, InMerge is better than the baseline in test AUC: +0.020 (95% CI [")
    assert "1 comparison of this table; the adjusted p-values control the false discovery rate over it " \
           "(Benjamini-Hochberg)" in text
    rows = long_rows(rows)
    assert list(rows.columns[:5]) == ["chapter", "method", "role", "dataset", "seed"] and len(rows) == 10
    assert set(rows["method"]) == {"InMerge", "fine-tuning, no merging"}


def test_sweep_shares_the_baseline_and_logs_merge_rates():
    if real_file("breastmnist") is None:
        pytest.skip("breastmnist.npz is not available")
    s = architecture_settings(settings(INMERGE, "smoke", seeds=(0,)), ("smallcnn", 4, None))  # fast: a smallcnn
    s["train_subset"], s["tau"] = 64, -1.0
    records = sweep(s, {"p=0.3": {}, "p=1": {"p": 1.0}}, ["breastmnist"], [0], progress=False)
    assert [r["setting"] for r in records] == ["p=0.3", "p=1"]
    assert records[0]["runs"]["baseline"].key == records[1]["runs"]["baseline"].key
    assert records[0]["baseline"] == records[1]["baseline"]
    assert records[1]["merge_rate"] == pytest.approx(1.0)
    assert 0.1 < records[0]["merge_rate"] < 0.6
    merged = records[1]["runs"]["inmerge"].history[0]["inmerge_merged"]
    assert list(merged) == ["features.14", "features.17"]
    assert records[1]["merge_rate_other"] == pytest.approx(1.0) and math.isnan(records[1]["merge_rate_depthwise"])
    table = versus_baseline(records, by=("dataset", "setting"))
    assert list(table["setting"]) == ["p=0.3", "p=0.3", "p=1", "p=1"] and (table["n"] == 1).all()


def test_tally_counts_outcomes_and_settings_that_merged_nothing():
    rows = [{"dataset": "d", "setting": name, "seed": s, "baseline": {"auc": 0.80 + 0.01 * s},
             "inmerge": {"auc": 0.80 + 0.01 * s + delta + 0.001 * (s % 2)}, "merge_rate": rate}
            for name, delta, rate in (("up", 0.02, 0.1), ("same", 0.0, 0.0)) for s in range(5)]
    table = versus_baseline(rows, metrics=("auc",), by=("dataset", "setting"))
    text = tally(table)
    assert text.startswith("Of 2 settings, 1 raise test AUC significantly over the baseline and 0 lower it")
    assert "In 1 of them no kernel was merged at all" in text and "from 0.00% to 10.00%" in text


def test_cpu_profile_is_pretrained_lite0_with_a_quantile_threshold_beside_the_papers():
    s = settings(INMERGE, "cpu")
    assert (s["model"], s["init"], s["train_subset"], s["batch_size"], s["lr"]) == (
        "tf_efficientnet_lite0", "imagenet", None, 64, 1e-3)
    assert len(s["seeds"]) >= 5 and s["finetune_lr"] == pytest.approx(s["lr"] / 10)
    for dataset, recipe in LITE0_CPU_RECIPES.items():  # each backbone is its dataset's measured recipe
        backbone = protocol(s, dataset, 0)["backbone"]
        assert (backbone.size, backbone.file_size, backbone.train.epochs, backbone.train.schedule, backbone.train.lr) == (
            recipe["size"], recipe["file_size"], recipe["epochs"], recipe["schedule"], recipe["lr"])
        assert protocol(s, dataset, 0)["inmerge"].train.epochs >= 2  # arms of several epochs
    overridden = settings(INMERGE, "cpu", backbone_epochs=2)  # an explicit parameter wins over every recipe
    assert {protocol(overridden, d, 0)["backbone"].train.epochs for d in LITE0_CPU_RECIPES} == {2}
    assert list(main_variants(s)) == ["tau=0.3 (paper)", "tau=quantile 0.5"]
    assert main_variants(s)["tau=quantile 0.5"] == {"tau_quantile": 0.5}
    runs = protocol(s, "breastmnist", 0, tau_quantile=0.5)
    assert runs["inmerge"].callbacks[0][1]["tau_quantile"] == 0.5
    assert architecture_settings(s, ("smallcnn", 4, None))["init"] is None
    assert INMERGE["paper"]["model"] == "vgg19" and INMERGE["paper"]["first_layer"] == 10


def test_merge_rates_per_layer_kind_pool_the_epochs():
    history = [{"inmerge_by_kind": {"depthwise": {"draws": 100, "selected": 30, "merged": 10},
                                    "other": {"draws": 300, "selected": 90, "merged": 0}}},
               {"inmerge_by_kind": {"depthwise": {"draws": 100, "selected": 30, "merged": 20},
                                    "other": {"draws": 300, "selected": 90, "merged": 3}}}]
    assert merge_rates_by_kind(history) == {"merge_rate_depthwise": pytest.approx(0.15),
                                            "merge_rate_other": pytest.approx(0.005)}
    only_other = merge_rates_by_kind([{"inmerge_by_kind": {"other": {"draws": 10, "selected": 3, "merged": 1}}}])
    assert math.isnan(only_other["merge_rate_depthwise"]) and only_other["merge_rate_other"] == pytest.approx(0.1)
    assert merge_rate_sentence(0.05, 0.15, 0.005) == ("On average 5.00% of the kernel draws in the merged layers ended "
                                                      "in a merge (at most p of them can): 15.00% in the depthwise "
                                                      "layers and 0.50% in the pointwise and other layers.")
    assert merge_rate_sentence(0.05).endswith("(at most p of them can).")
