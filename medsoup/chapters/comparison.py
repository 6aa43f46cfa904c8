"""The three methods side by side, from the results files their chapters write.

Each chapter notebook writes ``results/<stem>/<profile>.json``; :func:`load_results` reads them
(None where a chapter has not run), :func:`long_rows` turns each chapter's own format into one
long table (chapter, method, role, dataset, seed, test metrics), :func:`common_grid` finds the
datasets and seeds every present chapter ran, and :func:`paired_rows` compares each method with
its own baseline over the same seeds (:func:`medsoup.core.stats.paired_difference`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from medsoup.core.metrics import METRICS
from medsoup.core.stats import PairedDifference, paired_difference, summarise

#: Chapter name -> the notebook stem whose results file it reads.
CHAPTERS = {"InMerge": "10_inmerge", "FissionFusion": "20_fissionfusion", "MedMerge": "30_medmerge"}
#: The metrics every chapter reports (recall is not recorded by all of them).
COMPARED_METRICS = tuple(m for m in METRICS if m != "recall")
#: (chapter, method, baseline it is compared with): each paper's own claim.
PAIRS = (("InMerge", "InMerge", "fine-tuning, no merging"),
         ("FissionFusion", "GoG", "Greedy soup"), ("FissionFusion", "GoG", "GS(best)"),
         ("FissionFusion", "GoU", "GS(best)"),
         ("MedMerge", "MedMerge", "LP-FT (source b)"), ("MedMerge", "MedMerge", "FT (source b)"))
_FISSIONFUSION_METHODS = ("GS(best)", "Greedy soup", "Uniform soup", "FGG(best)", "GoU", "GoG")


def load_results(profile: str, root: str | Path = "results") -> dict[str, dict | None]:
    """Each chapter's results record for ``profile``, or None where the file does not exist."""
    out = {}
    for chapter, stem in CHAPTERS.items():
        path = Path(root) / stem / f"{profile}.json"
        out[chapter] = json.loads(path.read_text()) if path.is_file() else None
    return out


def _row(chapter: str, method: str, role: str, dataset: str, seed: int, metrics: dict) -> dict[str, Any]:
    return {"chapter": chapter, "method": method, "role": role, "dataset": dataset, "seed": int(seed),
            **{m: float(metrics[m]) for m in COMPARED_METRICS if m in metrics}}


def long_rows(results: dict[str, dict | None]) -> pd.DataFrame:
    """One row per (chapter, method, dataset, seed) with test ACC, AUC and F1.

    InMerge: the merged run and its baseline (the same epochs without merging). FissionFusion:
    Table 1's methods, BatchNorm statistics averaged as in the paper's code. MedMerge: FT and
    LP-FT from each of the target's two sources ("source b" and "source c" as in
    ``medmerge_runs.LEAVE_ONE_OUT``) and MedMerge.
    """
    rows = []
    inmerge = results.get("InMerge")
    for r in (inmerge or {}).get("per_seed", []):
        rows.append(_row("InMerge", "fine-tuning, no merging", "baseline", r["dataset"], r["seed"], r["baseline"]))
        rows.append(_row("InMerge", "InMerge", "method", r["dataset"], r["seed"], r["inmerge"]))
    ff = results.get("FissionFusion")
    for r in (ff or {}).get("rows", []):
        if not r["recalibrate"] and r["method"] in _FISSIONFUSION_METHODS:
            role = "method" if r["method"] in ("GoG", "GoU") else "baseline"
            rows.append(_row("FissionFusion", r["method"], role, r["dataset"], r["seed"], r["test"]))
    mm = results.get("MedMerge")
    for r in (mm or {}).get("table", []):
        sources = mm["sources"][r["target"]]
        if r["approach"] == "MedMerge":
            method, role = "MedMerge", "method"
        elif r["source"] in sources:
            method, role = f"{r['approach']} (source {'bc'[sources.index(r['source'])]})", "baseline"
        else:
            method, role = f"{r['approach']} ({r['source']})", "baseline"
        rows.append(_row("MedMerge", method, role, r["target"], r["seed"], r))
    return pd.DataFrame(rows, columns=["chapter", "method", "role", "dataset", "seed", *COMPARED_METRICS])


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


def summary_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``mean ± std (n)`` of ``metric`` per (chapter, method) and dataset, in the rows' order."""
    table = {}
    for (chapter, method), group in rows.groupby(["chapter", "method"], sort=False):
        table[(chapter, method)] = {dataset: str(summarise(g.sort_values("seed")[metric].to_numpy()))
                                    for dataset, g in group.groupby("dataset")}
    out = pd.DataFrame(table).T
    out.index.names = ["chapter", "method"]
    return out


def paired_rows(rows: pd.DataFrame, metric: str, pairs=PAIRS) -> pd.DataFrame:
    """Per dataset, each method minus its baseline over the seeds both ran (positive: the method
    is better), as :meth:`~medsoup.core.stats.PairedDifference.columns` (``outcome``: better, worse, ...)."""
    out = []
    for chapter, method, baseline in pairs:
        for dataset in sorted(rows["dataset"].unique()):
            mine = rows[(rows["chapter"] == chapter) & (rows["dataset"] == dataset)]
            a = mine[mine["method"] == method].set_index("seed")[metric]
            b = mine[mine["method"] == baseline].set_index("seed")[metric]
            seeds = sorted(set(a.index) & set(b.index))
            if not seeds:
                continue
            d = paired_difference(b.loc[seeds].to_numpy(), a.loc[seeds].to_numpy())
            out.append({"chapter": chapter, "method": method, "baseline": baseline, "dataset": dataset,
                        "metric": metric, **d.columns()})
    return pd.DataFrame(out)


def verdict_sentence(paired: pd.DataFrame) -> str:
    """One sentence per comparison, built from :func:`paired_rows` (true for any outcome)."""
    if paired.empty:
        return "No method could be compared with its baseline: the chapters' results are missing."
    return " ".join(f"On {r.dataset}, {PairedDifference.from_columns(r).describe(r.method, r.baseline, f'test {r.metric.upper()}')}."
                    for r in paired.itertuples())


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
                 for m in ("fine-tuning, no merging", "InMerge")]
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
        from medsoup.chapters.medmerge import MEDMERGE

        s = MEDMERGE[mm["profile"]]
        rows += [{"chapter": "MedMerge", "method": "FT (source b)", "epochs": s["ft_epochs"], "models trained": 1,
                  "note": "one source"},
                 {"chapter": "MedMerge", "method": "LP-FT (source b)", "epochs": s["lp_epochs"] + s["ft_epochs"],
                  "models trained": 1, "note": "one source"},
                 {"chapter": "MedMerge", "method": "MedMerge", "epochs": s["lp_epochs"] + s["ft_epochs"],
                  "models trained": 1, "note": "two sources held during LP (twice the conv weights)"}]
    return pd.DataFrame(rows)
