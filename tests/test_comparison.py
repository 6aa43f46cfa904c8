"""The cross-chapter comparison reads each chapter's results format into one table."""

from __future__ import annotations

import json

import pytest

from medsoup.chapters import comparison as cmp


def _metrics(x):
    return {"acc": x, "auc": x + 0.1, "f1": x - 0.1}


def _results():
    inmerge = {"settings": {"backbone_epochs": 20, "merge_epochs": 5},
               "per_seed": [{"dataset": d, "seed": s, "baseline": _metrics(0.5 + s / 100), "inmerge": _metrics(0.6 + s / 100),
                             "merge_rate": 0.1} for d in ("breastmnist", "retinamnist") for s in (0, 1, 2)]}
    ff = {"compute": {"breastmnist / seed 0": {"GS models": 8, "GS epochs": 16, "GS wall_time": 70.0,
                                               "FGG models": 8, "FGG epochs": 14, "FGG wall_time": 50.0}},
          "rows": [{"dataset": "breastmnist", "seed": s, "recalibrate": rc, "method": m,
                    "test": _metrics(0.55 + (0.01 * s if m == "GoG" else 0))}
                   for s in (0, 1) for rc in (False, True) for m in ("GS(best)", "Greedy soup", "GoG", "GS+HS(GoU)")]}
    mm = {"profile": "smoke", "sources": {"breastmnist": ["pneumoniamnist", "retinamnist"]},
          "table": [{"target": "breastmnist", "approach": a, "source": src, "seed": s, **_metrics(0.7)}
                    for s in (0, 1) for a, src in (("FT", "scratch"), ("FT", "pneumoniamnist"),
                                                   ("LP-FT", "retinamnist"), ("MedMerge", "pneumoniamnist+retinamnist"))]}
    return {"InMerge": inmerge, "FissionFusion": ff, "MedMerge": mm}


def test_long_rows_maps_every_chapter_format():
    rows = cmp.long_rows(_results())
    assert set(rows["chapter"]) == {"InMerge", "FissionFusion", "MedMerge"}
    ff = rows[rows["chapter"] == "FissionFusion"]
    assert set(ff["method"]) == {"GS(best)", "Greedy soup", "GoG"} and len(ff) == 6  # BN-averaged only
    assert set(rows[rows["chapter"] == "MedMerge"]["method"]) == {"FT (scratch)", "FT (source b)",
                                                                  "LP-FT (source c)", "MedMerge"}
    assert rows.loc[(rows["method"] == "InMerge") & (rows["seed"] == 2), "auc"].iloc[0] == pytest.approx(0.72)


def test_common_grid_is_what_every_chapter_ran_and_paired_rows_pair_by_seed():
    rows = cmp.long_rows(_results())
    datasets, seeds = cmp.common_grid(rows)
    assert (datasets, seeds) == (["breastmnist"], [0, 1])
    shared = cmp.restrict(rows, datasets, seeds)
    paired = cmp.paired_rows(shared, "acc")
    inm = paired[paired["method"] == "InMerge"].iloc[0]
    assert inm["difference"] == pytest.approx(0.1) and inm["n"] == 2 and inm["outcome"] == "better"
    gog = paired[(paired["method"] == "GoG") & (paired["baseline"] == "Greedy soup")].iloc[0]
    assert gog["difference"] == pytest.approx(0.005)
    assert "On breastmnist, InMerge is better than fine-tuning, no merging in test ACC: +0.100" in cmp.verdict_sentence(paired)
    assert set(cmp.summary_table(shared, "auc").columns) == {"breastmnist"}


def test_missing_chapters_degrade_to_what_exists(tmp_path):
    (tmp_path / "10_inmerge").mkdir()
    (tmp_path / "10_inmerge" / "cpu.json").write_text(json.dumps(_results()["InMerge"]))
    results = cmp.load_results("cpu", tmp_path)
    assert results["FissionFusion"] is None and results["MedMerge"] is None
    rows = cmp.long_rows(results)
    assert set(rows["chapter"]) == {"InMerge"} and cmp.common_grid(rows)[1] == [0, 1, 2]
    assert cmp.cost_table(results)["epochs"].tolist() == [25, 25]
    empty = cmp.long_rows(cmp.load_results("paper", tmp_path))
    assert empty.empty and cmp.common_grid(empty) == ([], [])
    assert "missing" in cmp.verdict_sentence(cmp.paired_rows(empty, "auc"))


def test_cost_table_reads_fissionfusion_compute_and_medmerge_settings():
    cost = cmp.cost_table(_results()).set_index("method")
    assert cost.loc["GoG", "epochs"] == 14 and cost.loc["Greedy soup", "wall time (s)"] == 70.0
    assert cost.loc["MedMerge", "epochs"] == cost.loc["LP-FT (source b)", "epochs"]
