"""The three methods side by side, from the long rows their chapters write.

Each chapter notebook writes ``results/<stem>/<profile>.json`` (:mod:`medsoup.runs.results`);
:func:`chapter_results` reads the reference files (None where a chapter has not run),
:func:`long_rows` keeps each chapter's rows that the comparison uses (the paper's setting and
methods), :func:`common_grid` finds the datasets and seeds every present chapter ran, and
:data:`PAIRS` compares each method with its own baseline over the same seeds through
:func:`medsoup.chapters.tables.paired`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medsoup.chapters.inmerge import BASELINE as INMERGE_BASELINE
from medsoup.chapters.inmerge import paper_setting
from medsoup.core.metrics import METRICS
from medsoup.runs.results import ROW_KEYS, load_results

#: Chapter name -> the notebook stem whose results file it reads.
CHAPTERS = {"InMerge": "10_inmerge", "FissionFusion": "20_fissionfusion", "MedMerge": "30_medmerge"}
#: The metrics every chapter reports (recall is not recorded by all of them).
COMPARED_METRICS = tuple(m for m in METRICS if m != "recall")
#: The comparison page's settings: the metric its tables and verdicts use.
COMPARISON = {profile: {"metric": "auc"} for profile in ("smoke", "cpu", "paper")}
#: The valid values of the page's settings (``settings(COMPARISON, profile, choices=CHOICES, ...)``).
CHOICES = {"metric": COMPARED_METRICS}
_FISSIONFUSION_METHODS = ("GS(best)", "Greedy soup", "Uniform soup", "FGG(best)", "GoU", "GoG")


def _pair(chapter: str, method: str, reference: str) -> tuple[dict, dict]:
    return ({"chapter": chapter, "method": method, "label": method},
            {"chapter": chapter, "method": reference, "label": reference})


#: Each paper's own claim: (method, the baseline it is compared with), as selectors of the long rows.
PAIRS = (_pair("InMerge", "InMerge", INMERGE_BASELINE),
         _pair("FissionFusion", "GoG", "Greedy soup"), _pair("FissionFusion", "GoG", "GS(best)"),
         _pair("FissionFusion", "GoU", "GS(best)"),
         _pair("MedMerge", "MedMerge", "LP-FT (source b)"), _pair("MedMerge", "MedMerge", "FT (source b)"))


def chapter_results(profile: str, root: str | Path = "results") -> dict[str, dict | None]:
    """Each chapter's reference results record for ``profile``, or None where the file does not exist."""
    return load_results(profile, CHAPTERS, root)


def long_rows(results: dict[str, dict | None]) -> pd.DataFrame:
    """One row per (chapter, method, dataset, seed) with test ACC, AUC and F1.

    InMerge: the paper's setting, the merged run and its baseline (the same epochs without
    merging). FissionFusion: Table 1's methods, BatchNorm statistics averaged as in the paper's
    code. MedMerge: FT and LP-FT from each of the target's two sources and MedMerge.
    """
    frames = []
    inmerge = results.get("InMerge")
    if inmerge:
        rows = pd.DataFrame(inmerge["rows"])
        frames.append(rows[rows["setting"] == paper_setting(inmerge["settings"])])
    ff = results.get("FissionFusion")
    if ff:
        rows = pd.DataFrame(ff["rows"])
        frames.append(rows[~rows["recalibrate"].astype(bool) & rows["method"].isin(_FISSIONFUSION_METHODS)])
    mm = results.get("MedMerge")
    if mm:
        frames.append(pd.DataFrame(mm["rows"]))
    columns = [*ROW_KEYS, *COMPARED_METRICS]
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


def restrict(rows: pd.DataFrame, datasets: list[str], seeds: list[int]) -> pd.DataFrame:
    return rows[rows["dataset"].isin(datasets) & rows["seed"].isin(seeds)]


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
        for zoo, methods in (("GS", ("GS(best)", "Greedy soup")), ("FGG", ("GoU", "GoG"))):
            for m in methods:
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
