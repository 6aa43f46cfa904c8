"""The answer at the top of a chapter: a forest plot of its paired comparisons.

One row per comparison of :func:`medsoup.chapters.tables.paired` (method minus reference, its 95%
interval), a grey band of ± its minimum detectable effect (the differences its seeds could not have
told from zero with 80% power), a filled marker where the Benjamini-Hochberg adjusted p is below
0.05 and an open one where it is not, the adjusted p written at the right, and the paper's effect
(x) where the table holds one (:func:`medsoup.chapters.papers.with_paper_effects`). Panels are
stacked in one column, a few rows each, with large type: read at page width and on a phone.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from medsoup.figures import figure

#: Type size of the forest plot (the page shrinks a 6.4-inch figure to a phone's width).
FONT = 13
_ROW = 0.62  # inches per comparison
_PANEL = 1.25  # inches per panel for its title and x axis
_LABEL = 24  # characters per line of a row's label (longer ones wrap), so the data keep most of the width


def _metric_name(metric: str) -> str:
    """``f1`` -> ``F1``, ``barrier_loss`` -> ``barrier loss``."""
    return metric.upper() if len(metric) <= 4 else metric.replace("_", " ")


def _panels(table: pd.DataFrame, panel: Sequence[str], max_rows: int) -> list[tuple[str, pd.DataFrame]]:
    """``(title, rows)`` per value of the ``panel`` columns (with the metric), each cut into parts of
    at most ``max_rows`` comparisons."""
    keys = [*panel, "metric"]
    out = []
    for group, part in table.groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        title = ", ".join(str(g) if k != "metric" else _metric_name(str(g)) for k, g in zip(keys, group))
        chunks = [part.iloc[i:i + max_rows] for i in range(0, len(part), max_rows)]
        out += [(title if len(chunks) == 1 else f"{title} ({k + 1}/{len(chunks)})", c) for k, c in enumerate(chunks)]
    return out


def forest(table: pd.DataFrame, panel: str | Sequence[str] = "dataset", label: str | None = None,
           max_rows: int = 6, alpha: float = 0.05, xlabel: str = "method − reference", width: float = 6.4):
    """Forest plot of ``table`` (rows of :func:`medsoup.chapters.tables.paired`): one panel per value of
    the ``panel`` columns and metric, at most ``max_rows`` comparisons each; each row is labelled
    ``label``'s column, else ``"<method> vs <reference>"``, with its mean difference and 95% interval
    (none with one seed), the ± ``mde`` band, the marker filled where ``p_adjusted`` < ``alpha`` and
    the adjusted p at the right; the legend sits under the panels."""
    if table.empty:
        raise ValueError("no comparison to plot: the table of paired differences is empty")
    keys = [panel] if isinstance(panel, str) else list(panel)
    missing = sorted(set(keys + ["difference", "ci_low", "ci_high", "mde", "p_adjusted"]) - set(table.columns))
    if missing:
        raise KeyError(f"the table lacks column(s) {', '.join(missing)}; give a table of tables.paired")
    parts = _panels(table, keys, max_rows)
    heights = [_ROW * len(rows) + _PANEL for _, rows in parts]
    fig, axes = figure(len(parts), 1, width=width, height=float(np.mean(heights)), flat=True,
                       gridspec_kw={"height_ratios": heights})
    has_paper = "paper_effect" in table and table["paper_effect"].notna().any()
    for ax, (title, rows) in zip(axes, parts):
        y = np.arange(len(rows))[::-1]
        mde = rows["mde"].fillna(0).to_numpy()
        ax.barh(y, 2 * mde, left=-mde, height=0.7, color="0.85", zorder=0)
        ax.axvline(0, color="black", linewidth=1, zorder=1)
        significant = (rows["p_adjusted"] < alpha).to_numpy()
        diff = rows["difference"].to_numpy()
        errors = np.vstack([diff - rows["ci_low"].to_numpy(), rows["ci_high"].to_numpy() - diff])
        ax.errorbar(diff, y, xerr=np.nan_to_num(errors), fmt="none", ecolor="C0", elinewidth=2.2, capsize=4, zorder=2)
        ax.scatter(diff[significant], y[significant], s=90, color="C0", zorder=3)
        ax.scatter(diff[~significant], y[~significant], s=90, facecolor="white", edgecolor="C0", linewidth=2,
                   zorder=3)
        if has_paper:
            ax.scatter(rows["paper_effect"], y, marker="X", s=90, color="C3", zorder=4)
        one_method = label is None and rows["method"].nunique() == 1
        names = (rows[label] if label else ("vs " if one_method else rows["method"].astype(str) + " vs ")
                 + rows["reference"].astype(str))
        title = f"{title}: {rows['method'].iloc[0]} minus each" if one_method else title
        ax.set_yticks(y, [textwrap.fill(str(n), _LABEL) for n in names], fontsize=FONT - 1)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        for yi, p in zip(y, rows["p_adjusted"]):
            ax.annotate("n/a" if np.isnan(p) else f"p={p:.2f}" if p >= 0.01 else "p<0.01", (1.01, yi),
                        xycoords=("axes fraction", "data"), va="center", fontsize=FONT - 1,
                        fontweight="bold" if p < alpha else "normal")
        ax.set_title(title, fontsize=FONT + 1, loc="left")
        ax.set_xlabel(xlabel, fontsize=FONT)
        ax.tick_params(axis="x", labelsize=FONT - 1)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.grid(axis="y", visible=False)
    handles = [Line2D([], [], color="C0", marker="o", markersize=9, linewidth=2.2, label="adjusted p < 0.05"),
               Line2D([], [], color="C0", marker="o", markersize=9, markerfacecolor="white", linewidth=2.2,
                      label="not significant after adjustment"),
               Patch(color="0.85", label="± minimum detectable effect")]
    if has_paper:
        handles.append(Line2D([], [], color="C3", marker="X", markersize=9, linestyle="none", label="paper's effect"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=FONT - 1, frameon=False,
               title="right of each row: the adjusted p", title_fontsize=FONT - 1)
    return fig
