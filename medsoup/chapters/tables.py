"""One summary / paired-difference / verdict set over the long per-seed rows every chapter writes.

Rows have the shape of :data:`medsoup.runs.results.ROW_KEYS` (``chapter, method, role, dataset,
seed``), then metric columns (``acc``, ``auc``, ``f1``, ...) and extra columns (``setting``,
``merge_rate``, ``recalibrate``, ...). The InMerge, FissionFusion and MedMerge chapters and the
comparison page all build their tables and sentences with these functions:

* :func:`summary` / :func:`summary_table`: ``mean ± std (n)`` per group;
* :func:`paired`: each (method, reference) pair, per group, as the paired difference over the
  seeds both ran (:func:`medsoup.core.stats.paired_difference`) with its minimum detectable effect
  (``mde``), and the Benjamini-Hochberg adjusted p-value over the table's comparisons, a *family*
  the table names (``family_name``; ``family``: its size);
* :func:`judged_over`: the verdict rule, applied once per family: ``outcome`` is better/worse only
  where the adjusted p-value is below 0.05 (:func:`medsoup.core.stats.judge`); ``nominal`` keeps
  what the unadjusted 95% interval alone says;
* :func:`verdict`: one sentence per comparison, then the family; :func:`headline`: the counts in one
  sentence, for the top of a page beside the forest plot (:func:`medsoup.figures.forest.forest`).

A *selector* names the rows of one side of a comparison: a method name, or a mapping of column ->
value (``{"method": "GS(best)", "recalibrate": True}``) with an optional ``"label"`` for the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from medsoup.core.stats import ALPHA, POWER, PairedDifference, judge, paired_difference, summarise

Selector = Union[str, Mapping[str, Any]]
#: A metric column, or one per dataset (``{"retinamnist": "f1", ...}``: each dataset's own metric).
MetricSpec = Union[str, Mapping[str, str]]
PAIRED_COLUMNS = ("method", "reference", "metric", "method_mean", "method_std", "reference_mean", "reference_std",
                  "difference", "ci_low", "ci_high", "mde", "p_value", "p_adjusted", "n", "nominal", "outcome",
                  "family", "family_name")
#: The family a table's p-values are adjusted over when the caller names none.
THIS_TABLE = "this table"


def row(chapter: str, method: str, role: str, dataset: str, seed: int, metrics: Mapping[str, Any] | None = None,
        prefix: str = "", **extra) -> dict[str, Any]:
    """One long row: the keys of :data:`~medsoup.runs.results.ROW_KEYS`, the scalar ``metrics``
    (per-label lists left out; column names prefixed with ``prefix``, e.g. ``"val_"``), then ``extra``."""
    return {"chapter": chapter, "method": method, "role": role, "dataset": dataset, "seed": int(seed),
            **scalars(metrics or {}, prefix), **extra}


def scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalar entries of a metrics dict as row columns named ``<prefix><metric>``."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _as_list(keys: str | Sequence[str]) -> list[str]:
    return [keys] if isinstance(keys, str) else list(keys)


def _filters(selector: Selector) -> dict[str, Any]:
    return {"method": selector} if isinstance(selector, str) else {k: v for k, v in selector.items() if k != "label"}


def label(selector: Selector) -> str:
    """The text naming a selector: its ``label``, else its method name (and other filters)."""
    if isinstance(selector, str):
        return selector
    if "label" in selector:
        return str(selector["label"])
    rest = [f"{k}={v}" for k, v in selector.items() if k != "method"]
    return " ".join([str(selector.get("method", ""))] + ([f"({', '.join(rest)})"] if rest else [])).strip()


def select(rows: pd.DataFrame, selector: Selector | None = None, **where) -> pd.DataFrame:
    """The rows matching ``selector`` and ``where`` (column -> value, or a list/tuple of accepted
    values); an unknown column is named."""
    filters = {**(_filters(selector) if selector is not None else {}), **where}
    unknown = sorted(set(filters) - set(rows.columns))
    if unknown and not rows.empty:
        raise KeyError(f"no column {', '.join(unknown)} in the rows; columns: {', '.join(rows.columns)}")
    mask = pd.Series(True, index=rows.index)
    for column, value in filters.items():
        if column not in rows:
            mask &= False
        elif isinstance(value, (list, tuple, set, frozenset)):
            mask &= rows[column].isin(list(value))
        else:
            mask &= rows[column] == value
    return rows[mask]


def metric_values(rows: pd.DataFrame, metric: MetricSpec) -> pd.Series:
    """Each row's value of ``metric`` (per-dataset metrics looked up by the row's dataset)."""
    names = rows["dataset"].map(metric) if isinstance(metric, Mapping) else pd.Series(metric, index=rows.index)
    missing = sorted(set(names.dropna()) - set(rows.columns))
    if missing:
        raise KeyError(f"no metric column {', '.join(map(str, missing))}; columns: {', '.join(rows.columns)}")
    return pd.Series([rows.at[i, name] for i, name in names.items()], index=rows.index, dtype=float)


def _text(values: pd.Series) -> str:
    return str(summarise(values.to_numpy()))


def summary(rows: pd.DataFrame, metrics: Sequence[str], by: str | Sequence[str] = "method") -> pd.DataFrame:
    """``mean ± std (n)`` of each metric per group of ``by``, groups in the rows' order."""
    keys = _as_list(by)
    out = []
    for group, part in rows.sort_values("seed", kind="stable").groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        out.append({**dict(zip(keys, group)), **{m: _text(metric_values(part, m)) for m in metrics}})
    return pd.DataFrame(out, columns=[*keys, *metrics])


def summary_table(rows: pd.DataFrame, metric: MetricSpec, index: str | Sequence[str] = "method",
                  columns: str = "dataset") -> pd.DataFrame:
    """``mean ± std (n)`` of ``metric``: one row per group of ``index``, one column per ``columns`` value."""
    keys = _as_list(index)
    cells = rows.assign(_value=metric_values(rows, metric))
    table = summary(cells, ["_value"], [*keys, columns])
    if table.empty:
        return pd.DataFrame()
    wide = table.pivot(index=keys, columns=columns, values="_value")
    order = list(dict.fromkeys(map(tuple, table[keys].to_numpy())))
    wide = wide.reindex(pd.MultiIndex.from_tuples(order, names=keys) if len(keys) > 1 else [o[0] for o in order])
    wide.columns.name = None
    return wide.reindex(columns=list(dict.fromkeys(table[columns])))


def means(rows: pd.DataFrame, metric: MetricSpec, by: str | Sequence[str] = "method") -> pd.Series:
    """Mean of ``metric`` over seeds per group of ``by``, in the rows' order."""
    return rows.assign(_value=metric_values(rows, metric)).groupby(_as_list(by), sort=False)["_value"].mean()


def _by_seed(part: pd.DataFrame, metric: str, side: str, group: dict) -> pd.Series:
    values = pd.Series(metric_values(part, metric).to_numpy(), index=part["seed"].to_numpy())
    if values.index.duplicated().any():
        raise ValueError(f"{side} has several rows per seed in {group or 'the rows'}; "
                         f"narrow the selector (e.g. add 'recalibrate' or 'setting')")
    return values


def paired(rows: pd.DataFrame, pairs: Sequence[tuple[Selector, Selector]], metrics: MetricSpec | Sequence[str],
           by: str | Sequence[str] = "dataset", extra: Sequence[str] = (),
           higher_is_better: bool | None = True, family: str = THIS_TABLE) -> pd.DataFrame:
    """For each pair, group of ``by`` and metric (in that order): ``method - reference`` over the
    seeds both ran (positive: the method is higher), as
    :meth:`~medsoup.core.stats.PairedDifference.columns` (``mde`` included), with both sides' mean
    and std over those seeds, judged over every row of the returned table as one family named
    ``family`` (:func:`judged_over`: ``p_adjusted``, ``outcome``, ``family``, ``family_name``).
    ``extra`` columns are averaged over the method's rows (e.g. ``merge_rate``). Pairs with no
    common seed in a group are left out; a per-dataset metric needs ``dataset`` among ``by``.
    ``outcome`` judges the metrics as scores; ``higher_is_better=False`` as costs, ``None`` as
    quantities that are neither (``"higher"`` or ``"lower"``, e.g. loss barriers).
    """
    keys = _as_list(by)
    metric_list = [metrics] if isinstance(metrics, (str, Mapping)) else list(metrics)
    groups = list(dict.fromkeys(map(tuple, rows[keys].to_numpy()))) if not rows.empty else []
    out = []
    for method, reference in pairs:
        for group in groups:
            where = dict(zip(keys, group))
            mine, theirs = select(rows, method, **where), select(rows, reference, **where)
            for metric in metric_list:
                a = _by_seed(theirs, metric, "the reference", where)
                b = _by_seed(mine, metric, "the method", where)
                seeds = sorted(set(a.index) & set(b.index))
                if not seeds:
                    continue
                d = paired_difference(a.loc[seeds].to_numpy(), b.loc[seeds].to_numpy())
                name = metric[where["dataset"]] if isinstance(metric, Mapping) else metric
                sa, sb = summarise(a.loc[seeds].to_numpy()), summarise(b.loc[seeds].to_numpy())
                kept = mine[mine["seed"].isin(seeds)]
                out.append({**where, "method": label(method), "reference": label(reference), "metric": name,
                            "method_mean": sb.mean, "method_std": sb.std, "reference_mean": sa.mean,
                            "reference_std": sa.std, **d.columns(higher_is_better),
                            **{c: float(kept[c].mean()) for c in extra if c in kept}})
    table = pd.DataFrame(out, columns=[*keys, *PAIRED_COLUMNS, *extra])
    return judged_over(table, family, higher_is_better)


def judged_over(table: pd.DataFrame, family: str, higher_is_better: bool | None = True) -> pd.DataFrame:
    """``table`` (rows of :func:`paired`, possibly from several calls) as one family of comparisons
    named ``family``: ``p_adjusted`` is Benjamini-Hochberg over all its rows, ``family`` their number,
    ``family_name`` the name, and ``outcome`` the verdict of :func:`medsoup.core.stats.judge`: better
    or worse only where ``p_adjusted`` < 0.05. A comparison whose unadjusted interval excludes zero but
    whose adjusted p does not pass keeps that reading in ``nominal`` only."""
    if not family or not isinstance(family, str):
        raise ValueError(f"a family of comparisons needs a name (the text says what was adjusted over), got {family!r}")
    table = table.copy()
    table["p_adjusted"] = adjusted_p_values(table["p_value"])
    table["family"] = len(table)
    table["family_name"] = family
    table["outcome"] = [judge(d, p, n, higher_is_better)
                        for d, p, n in zip(table["difference"], table["p_adjusted"], table["n"])]
    return table


def against_all(rows: pd.DataFrame, subject: Selector) -> list[tuple[Selector, Selector]]:
    """Pairs of ``subject`` against every other method of ``rows`` (in the rows' order), for :func:`paired`."""
    name = _filters(subject).get("method")
    return [(subject, other) for other in dict.fromkeys(rows["method"]) if other != name]


def adjusted_p_values(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``) over the
    finite ones; NaN (one seed) stays NaN."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        out[finite] = false_discovery_control(p[finite], method="bh")
    return out


def metric_label(metric: str) -> str:
    """How a metric column reads in a sentence (``f1`` -> ``test F1``, ``lp_f1`` -> ``LP-stage test F1``,
    ``barrier_loss`` -> ``validation loss barrier``: barriers are measured along curves on validation images)."""
    if metric.startswith("barrier"):
        return f"validation {metric.removeprefix('barrier').strip('_') or 'metric'} barrier"
    if metric.startswith("lp_"):
        return f"LP-stage test {metric[3:].upper()}"
    if metric.startswith("ood_"):
        return f"corrupted-test {metric[4:].upper()} (mean over corruptions)"
    return f"test {metric.upper()}"


#: Group columns whose values read alone in a sentence (others as ``<column> <value>``).
_BARE = ("dataset", "setting", "model")


def group_name(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    """How a comparison's group reads in a sentence (``breastmnist, tau=0.3``, ``alpha 0.5, p 1.0``)."""
    return ", ".join(str(row[k]) if k in _BARE else f"{k} {row[k]}" for k in keys)


def with_group_labels(table: pd.DataFrame, column: str = "group") -> pd.DataFrame:
    """``table`` (rows of :func:`paired`) with ``column`` naming each row's group by the ``by`` columns
    whose values vary in it (all of them where none does), e.g. to label a forest plot's rows."""
    keys = [k for k in group_keys(table) if table[k].nunique() > 1] or group_keys(table)
    return table.assign(**{column: [group_name(r, keys) for r in table.to_dict(orient="records")]})


def _null_power(row: Mapping[str, Any]) -> str:
    """What a null result could have detected, against the paper's effect where the row holds one."""
    effect, mde = row.get("paper_effect", np.nan), row.get("mde", np.nan)
    if not (np.isfinite(effect) and np.isfinite(mde)):
        return ""
    paper = f"the paper's effect ({effect:+.3f}, {row['paper_source']})"
    if mde > abs(effect):
        return f"; these seeds could not have detected {paper}"
    return f"; these seeds would likely have detected {paper}"


def verdict(table: pd.DataFrame, by: str | Sequence[str] = "dataset") -> str:
    """One sentence per row of :func:`paired` (true for any outcome: better, worse, not
    significantly different, one seed), with the nominal reading where only the unadjusted interval
    excludes zero and, for a null with the paper's effect at hand (:mod:`medsoup.chapters.papers`),
    whether these seeds could have detected it; then the family the adjusted p-values cover."""
    if table.empty:
        return "No method could be compared with its reference: the rows are missing or share no seed."
    keys = _as_list(by)
    sentences = []
    for row in table.to_dict(orient="records"):
        d = PairedDifference.from_columns(row)
        text = d.describe(row["method"], row["reference"], metric_label(row["metric"]), row["outcome"])
        if d.n > 1:
            text += f"; p = {d.p_value:.3f}, adjusted p = {row['p_adjusted']:.3f}"
        if row["outcome"] == "no significant difference":
            if row.get("nominal", row["outcome"]) != row["outcome"]:
                text += f" (nominally {row['nominal']}: the unadjusted interval excludes zero, the adjusted p does not pass)"
            text += _null_power(row)
        sentences.append(f"On {group_name(row, keys)}, {text}.")
    sentences.append(family_sentence(table))
    return " ".join(sentences)


def family_sentence(table: pd.DataFrame) -> str:
    """Which comparisons the adjusted p-values of ``table`` cover, and the rule its verdicts follow."""
    n, family, name = len(table), int(table["family"].max()), str(table["family_name"].iloc[0])
    if table["p_value"].isna().all():
        return f"{n} comparison{'s' if n != 1 else ''} made, none with a p-value to adjust (one seed)."
    shown = f"{n} comparison{'s' if n != 1 else ''}" if n == family else f"{n} of the {family} comparisons"
    return (f"{shown} of {name}; the adjusted p-values control the false discovery rate over "
            f"{'it' if family == 1 else f'all {family}'} "
            f"(Benjamini-Hochberg), and a difference is called better or worse only where its adjusted p is below "
            f"{ALPHA:g}. MDE: the smallest true difference these seeds detect with {POWER:.0%} power (paired t-test, "
            f"two-sided {ALPHA:.0%}).")


def headline(table: pd.DataFrame) -> str:
    """The verdicts of ``table`` counted in one sentence (for the top of a page, beside its forest plot):
    better, worse, the rest; how many were only nominally significant; how many nulls could not have
    detected the paper's effect."""
    if table.empty:
        return "No comparison could be made."
    n, family, name = len(table), int(table["family"].max()), str(table["family_name"].iloc[0])
    if table["p_value"].isna().all():
        return f"None of the {n} comparisons could be tested: one seed each."
    words = {o: int((table["outcome"] == o).sum()) for o in ("better", "worse", "higher", "lower")}
    found = ", ".join(f"{k} {o}" for o, k in words.items() if k) or "none significant either way"
    scope = (f"Of the {n} comparisons of {name}" if n == family
             else f"Of {n} comparisons ({family} adjusted together as {name})")
    text = f"{scope}: {found} at adjusted p < {ALPHA:g}"
    nominal = int(((table["outcome"] == "no significant difference")
                   & (table["nominal"] != "no significant difference")).sum())
    if nominal:
        text += f"; {nominal} more {'is' if nominal == 1 else 'are'} significant only before adjustment"
    nulls = table[table["outcome"] == "no significant difference"]
    if "paper_effect" in nulls and nulls["paper_effect"].notna().any():
        known = nulls[nulls["paper_effect"].notna()]
        blind = int((known["mde"] > known["paper_effect"].abs()).sum())
        text += (f"; of the {len(known)} null result{'s' if len(known) != 1 else ''} with the paper's effect at hand, "
                 f"{blind} could not have detected it (MDE above it)")
    return text + "."


def group_keys(table: pd.DataFrame) -> list[str]:
    """The ``by`` columns a table of :func:`paired` was grouped by (those before ``method``)."""
    return list(table.columns[:table.columns.get_loc("method")])


def count(table: pd.DataFrame, outcome: str, metric: str | None = None) -> int:
    """How many rows of :func:`paired` (of ``metric``, when given) have this ``outcome``."""
    rows = table if metric is None else table[table["metric"] == metric]
    return int((rows["outcome"] == outcome).sum())
