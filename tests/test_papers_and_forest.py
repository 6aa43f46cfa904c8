"""The papers' reported effects beside a null result, and the forest plot at the top of each chapter."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

from medsoup.chapters import papers, tables
from medsoup.figures.forest import forest


def _table(n_datasets=2, methods=("MedMerge",), references=("FT (source b)", "LP-FT (source c)")):
    rows = [tables.row("MedMerge", m, "method", d, s, {"f1": 0.5 + 0.01 * s + (0.05 + 0.003 * (s % 2) if m in methods else 0)})
            for d in ("retinamnist", "breastmnist")[:n_datasets] for m in (*methods, *references) for s in range(4)]
    rows = pd.DataFrame(rows)
    return tables.paired(rows, [(m, r) for m in methods for r in references], "f1", family="a test")


def test_paper_effects_are_the_printed_scores_difference_where_the_paper_has_an_analogue():
    table = papers.with_paper_effects(_table(), "MedMerge")
    retina = table[table["dataset"] == "retinamnist"].set_index("reference")
    aptos = papers.REPORTED["MedMerge"]["retinamnist"].scores
    assert retina.loc["FT (source b)", "paper_effect"] == pytest.approx(aptos["MedMerge"] - aptos["FT (source b)"])
    assert retina.loc["FT (source b)", "paper_source"] == "MedMerge Table 1, APTOS"
    breast = table[table["dataset"] == "breastmnist"]
    assert breast["paper_effect"].isna().all() and (breast["paper_source"] == "").all()  # no analogue: nothing invented
    assert papers.reported("MedMerge", "retinamnist", "acc") is None  # the metric must match
    inmerge = papers.reported("InMerge", "anything", "acc")
    assert inmerge.effect("InMerge", "the baseline") == pytest.approx(0.026)
    assert np.isnan(inmerge.effect("InMerge", "GoG"))
    with pytest.raises(KeyError, match="no paper recorded for chapter 'X'"):
        papers.reported("X", "d", "acc")
    with pytest.raises(KeyError, match="name the chapter"):
        papers.with_paper_effects(_table())


def test_forest_has_a_panel_per_dataset_and_few_rows_per_panel():
    table = papers.with_paper_effects(_table(references=("FT (source b)", "LP-FT (source c)", "FT (source c)")),
                                      "MedMerge")
    fig = forest(table)
    panels = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in panels] == ["retinamnist, F1: MedMerge minus each",
                                                          "breastmnist, F1: MedMerge minus each"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["vs FT (source b)", "vs LP-FT (source c)",
                                                                   "vs FT (source c)"]
    assert fig.get_size_inches()[0] < 7  # page width; tall rather than wide
    split = forest(table, panel=(), max_rows=2)
    assert len([ax for ax in split.axes if ax.get_title(loc="left")]) == 3  # 6 rows cut into panels of <= 2
    with pytest.raises(ValueError, match="empty"):
        forest(table.iloc[:0])
    with pytest.raises(KeyError, match="mde"):
        forest(table.drop(columns="mde"))
    matplotlib.pyplot.close("all")
