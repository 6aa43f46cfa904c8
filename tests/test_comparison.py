"""The cross-chapter comparison reads each chapter's long rows into one table and compares each
method with its own baseline through the shared tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medsoup.chapters import comparison as cmp
from medsoup.chapters import fissionfusion_soups as soups
from medsoup.chapters import inmerge, tables
from medsoup.chapters.medmerge import method_name
from medsoup.runs.profiles import settings


def _metrics(x):
    return {"acc": x, "auc": x + 0.1, "f1": x - 0.1}


def _results():
    s = {"backbone_epochs": 20, "merge_epochs": 5, "tau": 0.3}
    records = [{"dataset": d, "seed": seed, "setting": setting, "baseline": _metrics(0.5 + seed / 100),
                "inmerge": _metrics(0.6 + seed / 100 + (0.05 if setting != inmerge.paper_setting(s) else 0)),
                "merge_rate": 0.1}
               for d in ("breastmnist", "retinamnist") for seed in (0, 1, 2)
               for setting in (inmerge.paper_setting(s), "tau=0.0")]
    im = {"profile": "cpu", "settings": s, "rows": inmerge.long_rows(records).to_dict("records")}
    ff_rows = []
    for seed in (0, 1):
        for rc in (False, True):
            results = {m: soups.MethodResult({}, {}, _metrics(0.55 + (0.01 * seed if m == "GoG" else 0)), 0, 1)
                       for m in ("GS(best)", "Greedy soup", "GoG", "GS+HS(GoU)")}
            ff_rows += soups.long_rows("breastmnist", seed, rc, results)
    fission = {"profile": "cpu", "settings": {},
               "compute": {"breastmnist / seed 0": {"GS models": 8, "GS epochs": 16, "GS wall_time": 70.0,
                                                    "FGG models": 8, "FGG epochs": 14, "FGG wall_time": 50.0}},
               "rows": ff_rows}
    s_mm = {"sources": {"breastmnist": ("pneumoniamnist", "retinamnist")}, "lp_epochs": 10, "ft_epochs": 20}
    mm = {"profile": "smoke", "settings": s_mm,
          "rows": [tables.row("MedMerge", method_name(s_mm, "breastmnist", a, src), "baseline", "breastmnist", seed,
                              _metrics(0.7), approach=a, source=src)
                   for seed in (0, 1) for a, src in (("FT", "retinamnist"), ("FT", "pneumoniamnist"),
                                                     ("LP-FT", "retinamnist"), ("MedMerge", "pneumoniamnist+retinamnist"))]}
    return {"InMerge": im, "FissionFusion": fission, "MedMerge": mm}


def test_long_rows_keeps_each_chapters_compared_rows():
    rows = cmp.long_rows(_results())
    assert list(rows.columns) == ["chapter", "method", "role", "dataset", "seed", "acc", "auc", "f1", "ece", "nll",
                                  "brier"]
    assert set(rows["chapter"]) == {"InMerge", "FissionFusion", "MedMerge"}
    ff_rows = rows[rows["chapter"] == "FissionFusion"]
    assert set(ff_rows["method"]) == {"GS(best)", "Greedy soup", "GoG"} and len(ff_rows) == 6  # BN recomputed only
    assert set(rows[rows["chapter"] == "MedMerge"]["method"]) == {"FT (source c)", "FT (source b)",
                                                                  "LP-FT (source c)", "MedMerge"}
    # the paper's setting only: InMerge is 0.1 above its baseline there (0.15 at tau=0.0)
    assert rows.loc[(rows["method"] == "InMerge") & (rows["seed"] == 2), "auc"].tolist() == pytest.approx([0.72, 0.72])


def test_common_grid_is_what_every_chapter_ran_and_paired_rows_pair_by_seed():
    rows = cmp.long_rows(_results())
    datasets, seeds = cmp.common_grid(rows)
    assert (datasets, seeds) == (["breastmnist"], [0, 1])
    paired = cmp.compare(rows, "acc")
    inm = paired[paired["method"] == "InMerge"].iloc[0]
    assert inm["difference"] == pytest.approx(0.1) and inm["n"] == 3 and inm["outcome"] == "better"  # its own seeds
    assert inm["chapter"] == "InMerge" and inm["reference"] == "fine-tuning, no merging"
    gog = paired[(paired["method"] == "GoG") & (paired["reference"] == "Greedy soup")].iloc[0]
    assert gog["difference"] == pytest.approx(0.005)
    # InMerge on 2 datasets; GoG vs the two of its 4 baselines in these rows; MedMerge vs 3 of its 4 baselines
    assert len(paired) == 2 + 2 + 3 and (paired["family"] == 7).all()
    assert set(paired["chapter"]) == {"InMerge", "FissionFusion", "MedMerge"}
    assert (paired["p_adjusted"].dropna() >= paired["p_value"].dropna()).all()
    text = tables.verdict(paired)
    assert "On breastmnist, InMerge is better than fine-tuning, no merging in test ACC: +0.100" in text
    assert f"7 comparisons of {cmp.FAMILY}; the adjusted p-values control the false discovery rate over all 7 " \
           "(Benjamini-Hochberg)" in text
    assert set(cmp.summary(rows, "auc").columns) == {"breastmnist", "retinamnist"}


def test_the_paper_metric_compares_each_chapter_in_its_papers_metric():
    paired = cmp.compare(cmp.long_rows(_results()))  # metric "paper"
    assert dict(zip(paired["chapter"], paired["metric"])) == {"InMerge": "acc", "FissionFusion": "auc",  # Breast: AUC
                                                              "MedMerge": "f1"}
    table = cmp.summary(cmp.long_rows(_results()))
    assert {(c, m) for c, _, m in table.index} == {("InMerge", "acc"), ("FissionFusion", "auc (breastmnist)"),
                                                   ("MedMerge", "f1")}


def test_missing_chapters_degrade_to_what_exists(tmp_path):
    (tmp_path / "10_inmerge").mkdir()
    (tmp_path / "10_inmerge" / "cpu.json").write_text(json.dumps(_results()["InMerge"]))
    results = cmp.chapter_results("cpu", tmp_path)
    assert results["FissionFusion"] is None and results["MedMerge"] is None
    rows = cmp.long_rows(results)
    assert set(rows["chapter"]) == {"InMerge"} and cmp.common_grid(rows)[1] == [0, 1, 2]
    assert cmp.cost_table(results)["epochs"].tolist() == [25, 25]
    empty = cmp.long_rows(cmp.chapter_results("paper", tmp_path))
    assert empty.empty and cmp.common_grid(empty) == ([], [])
    assert "missing" in tables.verdict(cmp.compare(empty))


def test_an_old_format_results_file_is_refused_by_name(tmp_path):
    (tmp_path / "30_medmerge").mkdir()
    (tmp_path / "30_medmerge" / "cpu.json").write_text(json.dumps({"table": []}))
    with pytest.raises(ValueError, match="30_medmerge/cpu.json is not a results file of this version"):
        cmp.chapter_results("cpu", tmp_path)


def test_cost_table_reads_fissionfusion_compute_and_medmerge_settings():
    cost = cmp.cost_table(_results()).set_index("method")
    assert cost.loc["GoG", "epochs"] == 14 and cost.loc["Greedy soup", "wall time (s)"] == 70.0
    assert cost.loc["MedMerge", "epochs"] == cost.loc["LP-FT (source b)", "epochs"] == 30


def test_an_unknown_metric_is_named():
    rows = cmp.long_rows(_results())
    with pytest.raises(KeyError, match="no metric column acu"):
        cmp.compare(rows, "acu")


def test_an_unknown_metric_setting_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown metric 'accuracy'; valid: paper, acc, auc, f1$"):
        settings(cmp.COMPARISON, "cpu", choices=cmp.CHOICES, metric="accuracy")
    assert settings(cmp.COMPARISON, "smoke", choices=cmp.CHOICES, metric="f1")["metric"] == "f1"
    assert settings(cmp.COMPARISON, "paper", choices=cmp.CHOICES)["metric"] == "paper"


def test_the_comparison_notebook_checks_its_metric_where_it_resolves_its_settings():
    # The page's settings cell, run as the notebook runs it, with a misspelled `metric` parameter.
    cells = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "40_comparison.ipynb").read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "settings(COMPARISON" in "".join(c["source"]))
    with pytest.raises(ValueError, match="unknown metric 'AUC'; valid: paper, acc, auc, f1"):
        exec(source, {"profile": "cpu", "metric": "AUC"})


def test_calibration_compares_the_ensembles_and_swa_rows_as_costs():
    ff_rows = []
    for seed in range(5):  # GoG better calibrated than the FGG ensemble on every seed, SWA alike
        results = {m: soups.MethodResult({}, {}, {**_metrics(0.6), "ece": e + seed / 1000, "nll": 0.5, "brier": 0.3},
                                         0, 1) for m, e in (("GoG", 0.05), ("FGG ensemble", 0.1), ("SWA", 0.05))}
        ff_rows += soups.long_rows("retinamnist", seed, True, results)
    rows = cmp.long_rows({"FissionFusion": {"profile": "cpu", "settings": {}, "rows": ff_rows}})
    assert set(rows["method"]) == {"GoG", "FGG ensemble", "SWA"}
    table = cmp.compare_calibration(rows).set_index(["reference", "metric"])
    assert table.loc[("FGG ensemble", "ece"), "outcome"] == "better"  # lower ECE is better
    assert table.loc[("SWA", "ece"), "difference"] == pytest.approx(0)
    assert set(table["family_name"]) == {cmp.CALIBRATION_FAMILY} and len(table) == 2 * 3
    summary = cmp.calibration(pd.concat([rows, cmp.long_rows(_results())]))  # rows without calibration left out
    assert set(summary["method"]) == {"GoG", "FGG ensemble", "SWA"} and summary["ece"].str.endswith("(n=5)").all()
    assert len(cmp.compare(rows)) == 2  # GoG against the FGG ensemble and SWA in the paper's metric
