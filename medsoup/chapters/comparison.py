"""The three methods side by side, from the long rows their chapters write.

Each chapter notebook writes ``results/<stem>/<profile>.json`` (:mod:`medsoup.runs.results`);
:func:`chapter_results` reads the reference files (None where a chapter has not run),
:func:`long_rows` keeps each chapter's rows that the comparison uses (the paper's setting and
methods), and :func:`compare` pairs each method with every baseline of its chapter (:data:`PAIRS`)
over the same seeds, on each chapter's own datasets, in each paper's own metric
(:data:`PAPER_METRICS`) or one metric for all, with one Benjamini-Hochberg family over every
comparison on the page (:data:`FAMILY`, named in its sentences). :func:`common_grid` says which datasets and seeds every chapter ran.
:func:`calibration` and :func:`compare_calibration` do the same for the rows' ECE, NLL and Brier score
(:mod:`medsoup.core.calibration`; lower is better), a family of their own (:data:`CALIBRATION_FAMILY`).
FissionFusion's rows include its zoos' output ensembles and SWA, as baselines of its methods.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medsoup.chapters.fissionfusion import METRIC as FISSIONFUSION_METRIC
from medsoup.chapters.inmerge import BASELINE as INMERGE_BASELINE
from medsoup.chapters.inmerge import paper_setting
from medsoup.chapters import tables
from medsoup.chapters.tables import MetricSpec, judged_over, paired, summary_table
from medsoup.core.metrics import METRICS
from medsoup.runs.results import RESULTS_DIR, ROW_KEYS, load_results

#: Chapter name -> the notebook stem whose results file it reads.
CHAPTERS = {"InMerge": "10_inmerge", "FissionFusion": "20_fissionfusion", "MedMerge": "30_medmerge"}
#: The metrics every chapter reports (recall is not recorded by all of them).
COMPARED_METRICS = tuple(m for m in METRICS if m != "recall")
#: The calibration of every row (lower is better), where its chapter's results file records it.
CALIBRATION = ("ece", "nll", "brier")
#: The metric each paper reports its comparison in: InMerge's Table 2 accuracy, FissionFusion's F1 on APTOS
#: and RSNA Pneumonia (AUC on BreastMNIST, as its chapter), MedMerge's macro F1 (Table 1).
PAPER_METRICS: dict[str, MetricSpec] = {"InMerge": "acc", "FissionFusion": FISSIONFUSION_METRIC, "MedMerge": "f1"}
#: The comparison page's settings: ``metric`` is "paper" (each chapter in its paper's metric) or one metric for all.
COMPARISON = {profile: {"metric": "paper"} for profile in ("smoke", "cpu", "gpu", "paper")}
#: The valid values of the page's settings (``settings(COMPARISON, profile, choices=CHOICES, ...)``).
CHOICES = {"metric": ("paper", *COMPARED_METRICS)}
_FISSIONFUSION_BASELINES = ("GS(best)", "Uniform soup", "Greedy soup", "FGG(best)", "GS ensemble", "FGG ensemble",
                            "SWA")
_FISSIONFUSION_METHODS = (*_FISSIONFUSION_BASELINES, "GoU", "GoG")
_MEDMERGE_BASELINES = ("FT (source b)", "LP-FT (source b)", "FT (source c)", "LP-FT (source c)")


def _pair(chapter: str, method: str, reference: str) -> tuple[dict, dict]:
    return ({"chapter": chapter, "method": method, "label": method},
            {"chapter": chapter, "method": reference, "label": reference})


#: Each paper's method against every baseline of its chapter, as selectors of the long rows.
PAIRS = {"InMerge": (_pair("InMerge", "InMerge", INMERGE_BASELINE),),
         "FissionFusion": tuple(_pair("FissionFusion", m, b) for m in ("GoG", "GoU") for b in _FISSIONFUSION_BASELINES),
         "MedMerge": tuple(_pair("MedMerge", "MedMerge", b) for b in _MEDMERGE_BASELINES)}


def chapter_metric(chapter: str, metric: str) -> MetricSpec:
    """The metric a chapter is compared in: its paper's (``metric == "paper"``) or ``metric``."""
    return PAPER_METRICS[chapter] if metric == "paper" else metric


#: The family the comparison page adjusts over (a chapter's own page adjusts over its own table).
FAMILY = "the comparison page (each method against its paper's baselines, every chapter at once)"
#: The family of the page's calibration comparisons.
CALIBRATION_FAMILY = "the comparison page's calibration (ECE, NLL, Brier; each method against its paper's baselines)"


def compare(rows: pd.DataFrame, metric: str = "paper") -> pd.DataFrame:
    """:func:`~medsoup.chapters.tables.paired` of every pair of :data:`PAIRS` per chapter and dataset, in
    :func:`chapter_metric`, judged as one family, :data:`FAMILY`, over every comparison of the page
    (:func:`~medsoup.chapters.tables.judged_over`): its adjusted p-values differ from the chapters' own."""
    return _compare(rows, {chapter: chapter_metric(chapter, metric) for chapter in PAIRS}, FAMILY, True)


def compare_calibration(rows: pd.DataFrame) -> pd.DataFrame:
    """:func:`compare` in each of :data:`CALIBRATION`, judged as costs (lower is better), over the rows
    that record it, as one family of its own (:data:`CALIBRATION_FAMILY`)."""
    return _compare(rows.dropna(subset=list(CALIBRATION)), dict.fromkeys(PAIRS, CALIBRATION), CALIBRATION_FAMILY,
                    False)


def _compare(rows: pd.DataFrame, metrics: dict, family: str, higher_is_better: bool) -> pd.DataFrame:
    found = [t for chapter, pairs in PAIRS.items() if (rows["chapter"] == chapter).any()
             for t in [paired(rows[rows["chapter"] == chapter], pairs, metrics[chapter], by=("chapter", "dataset"),
                              higher_is_better=higher_is_better)] if len(t)]
    if not found:  # the empty table, with its columns
        return paired(rows.iloc[:0], (), "acc", by=("chapter", "dataset"), family=family)
    return judged_over(pd.concat(found, ignore_index=True), family, higher_is_better)


def summary(rows: pd.DataFrame, metric: str = "paper") -> pd.DataFrame:
    """``mean ± std (n)`` per chapter and method (rows) and dataset (columns), each chapter in
    :func:`chapter_metric` (named in the index)."""
    parts = []
    for chapter in dict.fromkeys(rows["chapter"]):
        spec = chapter_metric(chapter, metric)
        mine = rows[rows["chapter"] == chapter]
        table = summary_table(mine, spec, index=("chapter", "method"))
        name = spec if isinstance(spec, str) else ", ".join(f"{m} ({d})" for d, m in spec.items()
                                                             if d in set(mine["dataset"]))
        table.index = pd.MultiIndex.from_tuples([(c, m, name) for c, m in table.index],
                                                names=["chapter", "method", "metric"])
        parts.append(table)
    return pd.concat(parts) if parts else pd.DataFrame()


def calibration(rows: pd.DataFrame) -> pd.DataFrame:
    """``mean ± std (n)`` of :data:`CALIBRATION` per chapter, dataset and method, over the rows that
    record it."""
    return tables.summary(rows.dropna(subset=list(CALIBRATION)), CALIBRATION, by=("chapter", "dataset", "method"))


def chapter_results(profile: str, root: str | Path = RESULTS_DIR) -> dict[str, dict | None]:
    """Each chapter's reference results record for ``profile``, or None where the file does not exist."""
    return load_results(profile, CHAPTERS, root)


def long_rows(results: dict[str, dict | None]) -> pd.DataFrame:
    """One row per (chapter, method, dataset, seed) with test ACC, AUC and F1 and :data:`CALIBRATION`
    (NaN where a chapter's results file predates it).

    InMerge: the paper's setting, the merged run and its baseline (the same epochs without
    merging). FissionFusion: Table 1's methods, its zoos' output ensembles and SWA, with BatchNorm
    statistics recomputed (its chapter's primary analysis; an ensemble's members as trained). MedMerge: FT and LP-FT from each of the target's two sources and MedMerge.
    """
    frames = []
    inmerge = results.get("InMerge")
    if inmerge:
        rows = pd.DataFrame(inmerge["rows"])
        frames.append(rows[rows["setting"] == paper_setting(inmerge["settings"])])
    ff = results.get("FissionFusion")
    if ff:
        rows = pd.DataFrame(ff["rows"])
        frames.append(rows[rows["recalibrate"].astype(bool) & rows["method"].isin(_FISSIONFUSION_METHODS)])
    mm = results.get("MedMerge")
    if mm:
        frames.append(pd.DataFrame(mm["rows"]))
    columns = [*ROW_KEYS, *COMPARED_METRICS, *CALIBRATION]
    frames = [f.reindex(columns=columns) for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def common_grid(rows: pd.DataFrame) -> tuple[list[str], list[int]]:
    """Datasets and seeds present for every chapter in ``rows`` (sorted)."""
    if rows.empty:
        return [], []
    per_chapter = [set(map(tuple, g[["dataset", "seed"]].drop_duplicates().to_numpy()))
                   for _, g in rows.groupby("chapter")]
    shared = set.intersection(*per_chapter)
    return sorted({d for d, _ in shared}), sorted({int(s) for _, s in shared})


def cost_table(results: dict[str, dict | None]) -> pd.DataFrame:
    """Training epochs per dataset and seed each method spends beyond what it shares with its
    baseline's start (pre-training, sources), from the chapters' recorded settings and compute."""
    rows = []
    inmerge = results.get("InMerge")
    if inmerge:
        s = inmerge["settings"]
        total = s["backbone_epochs"] + s["merge_epochs"]
        rows += [{"chapter": "InMerge", "method": m, "epochs": total, "models trained": 1,
                  "note": "merging adds one similarity test per kernel pair per step; same epochs"}
                 for m in (INMERGE_BASELINE, "InMerge")]
    ff = results.get("FissionFusion")
    if ff and ff.get("compute"):
        compute = pd.DataFrame(ff["compute"]).T
        for zoo, methods in (("GS", ("GS(best)", "Greedy soup", "GS ensemble")),
                             ("FGG", ("GoU", "GoG", "FGG ensemble")), ("SWA", ("SWA",))):
            for m in methods if f"{zoo} epochs" in compute else ():
                rows.append({"chapter": "FissionFusion", "method": m, "epochs": float(compute[f"{zoo} epochs"].mean()),
                             "models trained": float(compute[f"{zoo} models"].mean()),
                             "wall time (s)": float(compute[f"{zoo} wall_time"].mean()),
                             "note": f"the {zoo} zoo (mean over dataset x seed)"})
    mm = results.get("MedMerge")
    if mm:
        s = mm["settings"]
        rows += [{"chapter": "MedMerge", "method": "FT (source b)", "epochs": s["ft_epochs"], "models trained": 1,
                  "note": "one source"},
                 {"chapter": "MedMerge", "method": "LP-FT (source b)", "epochs": s["lp_epochs"] + s["ft_epochs"],
                  "models trained": 1, "note": "one source"},
                 {"chapter": "MedMerge", "method": "MedMerge", "epochs": s["lp_epochs"] + s["ft_epochs"],
                  "models trained": 1, "note": "two sources held during LP (twice the conv weights)"}]
    return pd.DataFrame(rows)
