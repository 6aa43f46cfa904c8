"""The scores the three papers print, so that a null result can be set against the paper's effect.

Only scores a paper's own table gives are here, each with where it comes from; the effect of a
comparison is the paper's method score minus its reference score on the paper's dataset that stands
in for ours (APTOS for RetinaMNIST, RSNA Pneumonia for PneumoniaMNIST, as the chapters say). InMerge
reports no dataset we run, so its entry applies to every dataset and is its largest Table 2 gain: a
null whose minimum detectable effect exceeds it could not have detected any gain the paper reports.
:func:`with_paper_effects` adds ``paper_effect`` and ``paper_source`` to a table of
:func:`medsoup.chapters.tables.paired`, which :func:`~medsoup.chapters.tables.verdict` then reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medsoup.chapters.inmerge import BASELINE as INMERGE_BASELINE
from medsoup.chapters.inmerge import METHOD as INMERGE_METHOD
from medsoup.chapters.inmerge import PAIR as INMERGE_PAIR


@dataclass(frozen=True)
class Reported:
    """Scores a paper prints for one dataset in one metric, keyed by this book's method labels."""

    source: str
    metric: str
    scores: Mapping[str, float]

    def effect(self, method: str, reference: str) -> float:
        """The paper's ``method - reference`` score, NaN where it prints either side for no method here."""
        if method in self.scores and reference in self.scores:
            return self.scores[method] - self.scores[reference]
        return np.nan


_INMERGE_PATH = {INMERGE_METHOD: 0.924, INMERGE_BASELINE: 0.898, INMERGE_PAIR[1]["label"]: 0.898}
_FF_APTOS = {"GS(best)": 0.7086, "Uniform soup": 0.5509, "Greedy soup": 0.7247, "FGG(best)": 0.7172, "GoU": 0.6909,
             "GoG": 0.7172}
_FF_RSNA = {"GS(best)": 0.9444, "Uniform soup": 0.9171, "Greedy soup": 0.9444, "FGG(best)": 0.9518, "GoU": 0.9545,
            "GoG": 0.9518}
_MM_APTOS = {"MedMerge": 0.713, "FT (source b)": 0.639, "FT (source c)": 0.673, "LP-FT (source b)": 0.650,
             "LP-FT (source c)": 0.687}
_MM_RSNA = {"MedMerge": 0.947, "FT (source b)": 0.946, "FT (source c)": 0.932, "LP-FT (source b)": 0.944,
            "LP-FT (source c)": 0.944}

#: Chapter -> our dataset (``"*"``: any) -> what its paper reports for the dataset standing in for it.
REPORTED: dict[str, dict[str, Reported]] = {
    "InMerge": {"*": Reported("InMerge Table 2, PathMNIST, its largest gain", "acc", _INMERGE_PATH)},
    "FissionFusion": {"retinamnist": Reported("FissionFusion Table 1, ResNet50 on APTOS", "f1", _FF_APTOS),
                      "pneumoniamnist": Reported("FissionFusion Table 1, ResNet50 on RSNA", "f1", _FF_RSNA)},
    "MedMerge": {"retinamnist": Reported("MedMerge Table 1, APTOS", "f1", _MM_APTOS),
                 "pneumoniamnist": Reported("MedMerge Table 1, RSNA Pneumonia", "f1", _MM_RSNA)},
}


def reported(chapter: str, dataset: str, metric: str) -> Reported | None:
    """What ``chapter``'s paper reports for ``dataset`` in ``metric``, or None."""
    if chapter not in REPORTED:
        raise KeyError(f"no paper recorded for chapter {chapter!r}; chapters: {', '.join(REPORTED)}")
    entry = REPORTED[chapter].get(dataset) or REPORTED[chapter].get("*")
    return entry if entry is not None and entry.metric == metric else None


def with_paper_effects(table: pd.DataFrame, chapter: str | None = None) -> pd.DataFrame:
    """``table`` (rows of :func:`~medsoup.chapters.tables.paired`) with ``paper_effect`` (the paper's
    ``method - reference`` on the dataset standing in for the row's, in the row's metric; NaN where the
    paper gives none) and ``paper_source``; ``chapter`` names the paper, else each row's ``chapter``."""
    if chapter is None and "chapter" not in table:
        raise KeyError("name the chapter, or give the table a 'chapter' column")
    effects, sources = [], []
    for row in table.to_dict(orient="records"):
        entry = reported(chapter or row["chapter"], row["dataset"], row["metric"])
        effect = entry.effect(row["method"], row["reference"]) if entry else np.nan
        effects.append(effect)
        sources.append(entry.source if entry and np.isfinite(effect) else "")
    return table.assign(paper_effect=effects, paper_source=sources)
