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
    assert (table["family_name"] == tables.THIS_TABLE).all()
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
    assert "4 of the 8 comparisons of this table; the adjusted p-values control the false discovery rate over " \
           "all 8 (Benjamini-Hochberg), and a difference is called better or worse only where its adjusted p is " \
           "below 0.05." in text
    assert tables.count(table, "better", "acc") == 4


def test_verdict_words_follow_the_direction_the_table_was_judged_with():
    rows = _rows().rename(columns={"acc": "barrier_loss"})
    neither = tables.paired(rows, [("A", "B")], "barrier_loss", higher_is_better=None)
    assert neither["outcome"].tolist() == ["lower", "lower"]
    assert tables.verdict(neither).startswith("On d, A is lower than B in validation loss barrier: -0.053 (95% CI [")
    cost = tables.paired(rows, [("A", "B"), ("B", "A")], "barrier_loss", higher_is_better=False)
    assert cost["outcome"].tolist() == ["better", "better", "worse", "worse"]
    text = tables.verdict(cost)
    assert "On d, A is better than B in validation loss barrier: -0.053" in text
    assert "On d, B is worse than A in validation loss barrier: +0.053" in text
    assert tables.metric_label("barrier") == "validation metric barrier"


def test_one_seed_nan_p_values_and_ambiguous_selectors():
    rows = _rows()
    one = tables.paired(rows[rows["seed"] == 0], [("B", "A")], "acc")
    assert one["outcome"].tolist() == ["one seed", "one seed"] and one["p_adjusted"].isna().all()
    assert tables.verdict(one).endswith("B minus A is +0.050 test ACC on one seed, too few to test. "
                                        "2 comparisons made, none with a p-value to adjust (one seed).")
    assert tables.headline(one) == "None of the 2 comparisons could be tested: one seed each."
    doubled = pd.concat([rows, rows.assign(chapter="Y")])
    with pytest.raises(ValueError, match="the reference has several rows per seed"):
        tables.paired(doubled, [("B", "A")], "acc")
    assert len(tables.paired(doubled, [({"method": "B", "chapter": "Y"}, {"method": "A", "chapter": "Y"})], "acc")) == 2
    assert tables.label({"method": "B", "recalibrate": True}) == "B (recalibrate=True)"
    with pytest.raises(KeyError, match="no column recalibrate"):
        tables.select(rows, "B", recalibrate=True)
    assert np.isnan(tables.adjusted_p_values([np.nan])).all()


def _three_pairs():
    """On dataset d, "new" beats "base" by 0.01 with raw p 0.043 (its 95% interval excludes 0); on p and q the
    differences average exactly 0 (raw p 1). Benjamini-Hochberg over the three adjusts d's p to 3 x 0.043."""
    a = np.array([0.70, 0.72, 0.71, 0.69])
    noise = np.array([0.004, -0.004, 0.006, -0.006])
    rows = [tables.row("X", "base", "method", d, s, {"acc": v}) for d in "dpq" for s, v in enumerate(a)]
    rows += [tables.row("X", "new", "method", d, s, {"acc": v + shift + noise[s]})
             for d, shift in (("d", 0.01), ("p", 0.0), ("q", 0.0)) for s, v in enumerate(a)]
    return pd.DataFrame(rows)


def test_the_verdict_needs_the_adjusted_p_not_only_the_raw_interval():
    table = tables.paired(_three_pairs(), [("new", "base")], "acc", family="the test family")
    first = table.iloc[0]
    assert first["ci_low"] > 0 and first["p_value"] < 0.05 and first["nominal"] == "better"
    assert first["p_adjusted"] == pytest.approx(3 * first["p_value"]) and first["p_adjusted"] >= 0.05
    assert first["outcome"] == "no significant difference" and tables.count(table, "better") == 0
    assert (first["family"], first["family_name"]) == (3, "the test family")
    text = tables.verdict(table.iloc[:1])
    assert "new is not significantly different from base" in text and "nominally better" in text
    assert "1 of the 3 comparisons of the test family" in text
    assert tables.headline(table) == ("Of the 3 comparisons of the test family: none significant either way at "
                                      "adjusted p < 0.05; 1 more is significant only before adjustment.")
    alone = tables.paired(_three_pairs(), [("new", "base")], "acc", family="one").iloc[:1]
    alone = tables.judged_over(alone, "one comparison")  # a family of one: adjusted p = raw p < 0.05
    assert alone.iloc[0]["outcome"] == "better" and tables.count(alone, "better") == 1
    with pytest.raises(ValueError, match="needs a name"):
        tables.judged_over(table, "")


def test_every_paired_row_records_its_minimum_detectable_effect():
    rows = _rows()
    table = tables.paired(rows, [("B", "A")], "acc")
    diff = np.subtract((0.75, 0.78, 0.74, 0.76), (0.70, 0.72, 0.71, 0.69))
    t = scipy_stats.t.ppf(0.975, 3) + scipy_stats.t.ppf(0.8, 3)
    assert table.iloc[0]["mde"] == pytest.approx(t * diff.std(ddof=1) / 2)
    assert f"MDE {table.iloc[0]['mde']:.3f}" in tables.verdict(table)


def test_a_null_says_whether_it_could_have_detected_the_papers_effect():
    rows = _rows()
    table = tables.paired(rows, [("C", "A")], "acc").assign(paper_source="a paper")
    table = table[table["outcome"] == "no significant difference"]
    assert len(table)
    mde = float(table.iloc[0]["mde"])
    blind = tables.verdict(table.assign(paper_effect=mde / 2))
    assert f"these seeds could not have detected the paper's effect ({mde / 2:+.3f}, a paper)" in blind
    seen = tables.verdict(table.assign(paper_effect=-2 * mde))
    assert "would likely have detected the paper's effect" in seen
    assert "could not have detected it" in tables.headline(table.assign(paper_effect=mde / 2))
