"""The one summary / paired-difference / verdict set every chapter and the comparison page use."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from medsoup.chapters import tables


def _rows():
    values = {"A": (0.70, 0.72, 0.71, 0.69), "B": (0.75, 0.78, 0.74, 0.76), "C": (0.71, 0.71, 0.72, 0.70)}
    return pd.DataFrame([tables.row("X", m, "method", d, seed, {"f1": v + (0.1 if d == "e" else 0), "acc": v})
                         for d in ("d", "e") for m, vs in values.items() for seed, v in enumerate(vs)])


def test_summary_and_summary_table_in_the_rows_order():
    rows = _rows()
    table = tables.summary(rows, ("f1", "acc"), by=["dataset", "method"])
    assert list(table.columns) == ["dataset", "method", "f1", "acc"] and len(table) == 6
    assert table.iloc[1]["acc"] == str(tables.summarise([0.75, 0.78, 0.74, 0.76]))
    wide = tables.summary_table(rows, {"d": "acc", "e": "f1"})
    assert list(wide.index) == ["A", "B", "C"] and list(wide.columns) == ["d", "e"]
    assert wide.loc["B", "e"] == "0.857 ± 0.017 (n=4)" and wide.loc["B", "d"] == "0.758 ± 0.017 (n=4)"
    assert tables.means(tables.select(rows, dataset="d"), "acc")["A"] == pytest.approx(0.705)


def test_paired_matches_scipy_and_adjusts_for_every_comparison():
    rows = _rows()
    table = tables.paired(rows, tables.against_all(rows, "B"), ["acc", "f1"])
    assert len(table) == 8 and list(table["reference"].unique()) == ["A", "C"] and (table["family"] == 8).all()
    first = table.iloc[0]
    assert (first["dataset"], first["method"], first["reference"], first["metric"]) == ("d", "B", "A", "acc")
    expected = scipy_stats.ttest_rel([0.75, 0.78, 0.74, 0.76], [0.70, 0.72, 0.71, 0.69]).pvalue
    assert first["p_value"] == pytest.approx(expected)
    assert table["p_adjusted"].to_numpy() == pytest.approx(scipy_stats.false_discovery_control(table["p_value"]))
    assert (table["p_adjusted"] >= table["p_value"] - 1e-12).all()
    assert first["method_mean"] - first["reference_mean"] == pytest.approx(first["difference"])
    text = tables.verdict(table[table["metric"] == "acc"])
    assert text.startswith("On d, B is better than A in test ACC: +0.053 (95% CI [")
    assert f"adjusted p = {first['p_adjusted']:.3f}" in text
    assert text.endswith("4 of the table's 8 comparisons shown here; the adjusted p-values control the false "
                         "discovery rate over all 8 (Benjamini-Hochberg).")
    assert tables.count(table, "better", "acc") == 4


def test_verdict_words_follow_the_direction_the_table_was_judged_with():
    rows = _rows().rename(columns={"acc": "barrier_loss"})
    neither = tables.paired(rows, [("A", "B")], "barrier_loss", higher_is_better=None)
    assert neither["outcome"].tolist() == ["lower", "lower"]
    assert tables.verdict(neither).startswith("On d, A is lower than B in test loss barrier: -0.053 (95% CI [")
    cost = tables.paired(rows, [("A", "B"), ("B", "A")], "barrier_loss", higher_is_better=False)
    assert cost["outcome"].tolist() == ["better", "better", "worse", "worse"]
    text = tables.verdict(cost)
    assert "On d, A is better than B in test loss barrier: -0.053" in text
    assert "On d, B is worse than A in test loss barrier: +0.053" in text
    assert tables.metric_label("barrier") == "test metric barrier"


def test_one_seed_nan_p_values_and_ambiguous_selectors():
    rows = _rows()
    one = tables.paired(rows[rows["seed"] == 0], [("B", "A")], "acc")
    assert one["outcome"].tolist() == ["one seed", "one seed"] and one["p_adjusted"].isna().all()
    assert tables.verdict(one).endswith("B minus A is +0.050 test ACC on one seed, too few to test. "
                                        "2 comparisons made, none with a p-value to adjust (one seed).")
    doubled = pd.concat([rows, rows.assign(chapter="Y")])
    with pytest.raises(ValueError, match="the reference has several rows per seed"):
        tables.paired(doubled, [("B", "A")], "acc")
    assert len(tables.paired(doubled, [({"method": "B", "chapter": "Y"}, {"method": "A", "chapter": "Y"})], "acc")) == 2
    assert tables.label({"method": "B", "recalibrate": True}) == "B (recalibrate=True)"
    with pytest.raises(KeyError, match="no column recalibrate"):
        tables.select(rows, "B", recalibrate=True)
    assert np.isnan(tables.adjusted_p_values([np.nan])).all()
