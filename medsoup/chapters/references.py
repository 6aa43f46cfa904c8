"""The reference lines every chapter's results are read against, per dataset.

Three lines, each on the test split:

* the constant classifier: the training split's majority class for every test image
  (:func:`medsoup.chapters.collapse.majority_scores`; its AUC is that of a constant score, 0.5);
* the book's smallcnn recipe, mean ± std over its seeds (``results/baselines.json``, written by
  ``python -m medsoup.chapters.baselines``);
* MedMNIST v2's ResNet-18 (28) as published (:data:`~medsoup.chapters.baselines.PUBLISHED_RESNET18_28`).

:func:`reference_lines` gathers them; :func:`against_references` sets each arm of a chapter's long rows
against them (the margin above each line, through :func:`~medsoup.chapters.collapse.against_majority`)
and :func:`reference_sentence` says the best arm's margins in words.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medsoup.chapters.baselines import PUBLISHED_RESNET18_28
from medsoup.chapters.collapse import against_majority, majority_scores
from medsoup.core.data import load_dataset
from medsoup.runs.results import RESULTS_DIR

#: The names of the three lines, in the order :func:`reference_lines` gives them.
CONSTANT = "constant classifier (training majority class)"
SMALLCNN = "smallcnn recipe (results/baselines.json)"
PUBLISHED = "MedMNIST v2 ResNet-18 (28), published"
LINES = (CONSTANT, SMALLCNN, PUBLISHED)
#: Each line's name in the columns of :func:`against_references` (``− <short name>``).
SHORT = {CONSTANT: "constant", SMALLCNN: "smallcnn recipe", PUBLISHED: "MedMNIST v2"}
#: Each line's name in :func:`reference_sentence`.
PROSE = {CONSTANT: "the constant classifier", SMALLCNN: "the smallcnn recipe", PUBLISHED: "MedMNIST v2's ResNet-18 (28)"}
#: The metrics of a line (a published line has no F1: MedMNIST v2 reports ACC and AUC).
METRICS = ("acc", "auc", "f1")
#: The smallcnn recipe's record (:func:`medsoup.chapters.baselines.main`).
BASELINES_FILE = RESULTS_DIR / "baselines.json"


def smallcnn_summaries(path: str | Path = BASELINES_FILE) -> dict[str, dict]:
    """``{dataset: {metric: {"mean", "std", "n"}}}`` of the smallcnn recipe's record at ``path``; empty
    where the file does not exist (the recipe has not been run at this checkout)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); run python -m medsoup.chapters.baselines again") from err
    if not isinstance(record, dict) or not isinstance(record.get("datasets"), dict):
        raise ValueError(f"{path} has no 'datasets' summaries; run python -m medsoup.chapters.baselines again")
    return record["datasets"]


def reference_lines(datasets: Sequence[str], size: int = 28, baselines: str | Path = BASELINES_FILE) -> pd.DataFrame:
    """One row per dataset and line of :data:`LINES` (``dataset``, ``reference``, the :data:`METRICS` as
    means, their ``<metric>_std`` over seeds and ``n`` seeds, NaN where a line has no such number).

    The constant classifier needs the dataset's labels (read from its ``size`` px file, the same labels
    at every size) and is left out for multi-label tasks, which have no majority class; the smallcnn
    recipe is left out for a dataset its record (``baselines``) lacks, the published line for one MedMNIST
    v2's table does not list."""
    datasets = list(dict.fromkeys(datasets))
    if not datasets:
        raise ValueError("reference_lines needs at least one dataset")
    smallcnn = smallcnn_summaries(baselines)
    out = []
    for dataset in datasets:
        data = load_dataset(dataset, size)
        if data.task != "multi-label":
            out.append({"dataset": dataset, "reference": CONSTANT, **majority_scores(data), "n": math.nan})
        if dataset in smallcnn:
            entry = smallcnn[dataset]
            out.append({"dataset": dataset, "reference": SMALLCNN, **{m: entry[m]["mean"] for m in METRICS},
                        **{f"{m}_std": entry[m]["std"] for m in METRICS}, "n": entry["acc"]["n"]})
        if dataset in PUBLISHED_RESNET18_28:
            out.append({"dataset": dataset, "reference": PUBLISHED, **PUBLISHED_RESNET18_28[dataset], "n": math.nan})
    columns = ["dataset", "reference", *METRICS, *(f"{m}_std" for m in METRICS), "n"]
    return pd.DataFrame(out).reindex(columns=columns)


def against_references(rows: pd.DataFrame, lines: pd.DataFrame, metrics: Sequence[str] = ("auc", "acc"),
                       by: Sequence[str] = ("dataset", "method")) -> pd.DataFrame:
    """Each arm of ``rows`` (long per-seed rows, groups of ``by``) against each reference line of ``lines``
    (:func:`reference_lines`), per metric of ``metrics``: ``mean`` over its ``seeds``, ``at constant`` (the
    seeds whose score equals the constant classifier's) and ``− <line>`` (:data:`SHORT` names), the mean margin
    above each line (NaN where a line has no number for the dataset or metric)."""
    missing = sorted(set(metrics) - set(METRICS))
    if missing:
        raise ValueError(f"no reference line for metric(s) {', '.join(missing)}; lines have {', '.join(METRICS)}")
    keys, datasets = list(by), set(rows["dataset"])
    parts = []
    for metric in metrics:
        part = rows.groupby(keys, sort=False)[metric].agg(["mean", "size"]).reset_index()
        part = part.rename(columns={"size": "seeds"}).assign(metric=metric)
        for line in LINES:
            values = lines[lines["reference"] == line].set_index("dataset")[metric].to_dict()
            table = against_majority(rows, {d: values.get(d, math.nan) for d in datasets}, metric, by)
            if line == CONSTANT:
                part["at constant"] = part[keys].merge(table, on=keys, how="left")["at_majority"].to_numpy()
            part[f"− {SHORT[line]}"] = part[keys].merge(table, on=keys, how="left")["margin"].to_numpy()
        parts.append(part[[*keys, "metric", "mean", "seeds", "at constant", *(f"− {SHORT[line]}" for line in LINES)]])
    return pd.concat(parts, ignore_index=True)


def reference_sentence(table: pd.DataFrame, metric: str = "auc") -> str:
    """The best arm of each dataset in ``metric`` against the reference lines (rows of
    :func:`against_references`), the arms below MedMNIST v2's line and the arms at the constant
    classifier, a sentence or two per dataset."""
    part = table[table["metric"] == metric]
    if part.empty:
        raise ValueError(f"the table has no rows for metric {metric!r}")
    sentences = []
    for dataset, arms in part.groupby("dataset", sort=False):
        best = arms.loc[arms["mean"].idxmax()]
        margins = [(line, best[f"− {SHORT[line]}"]) for line in LINES]
        against = ", ".join(f"{margin:+.3f} against {PROSE[line]} ({best['mean'] - margin:.3f})"
                            for line, margin in margins if not math.isnan(margin))
        constant = int((arms["at constant"] > 0).sum())
        sentences.append(f"On {dataset}, the best arm in test {metric.upper()}, {best['method']} ({best['mean']:.3f}), "
                         f"scores {against}; {constant} of {len(arms)} arms score exactly the constant classifier's "
                         f"{metric.upper()} in at least one seed.")
        below = arms[arms[f"− {SHORT[PUBLISHED]}"] < 0].sort_values("mean")
        if len(below):
            sentences.append(f"Below {PROSE[PUBLISHED]}: " + ", ".join(f"{arm['method']} ({arm['mean']:.3f})"
                                                                     for _, arm in below.iterrows()) + ".")
    return " ".join(sentences)
