"""Figures of the In-Model Merging chapter: kernel pairs with their similarity (Fig. 1), per-layer
similarity distributions per layer and per layer kind, baseline vs InMerge (Table 2) and the ablation curves (Figs. 2-3)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch

from medsoup.figures import figure
from medsoup.merging.kernels import kernel_mosaic


def kernel_pairs(weight: torch.Tensor, pairs: Sequence[tuple[int, int, float]], max_channels: int = 16):
    """Fig. 1 analogue: one column per pair ``(i, j, sim)``, kernel i above kernel j, each drawn as a
    mosaic of its first ``max_channels`` input-channel slices on a shared colour scale."""
    mosaics = [(kernel_mosaic(weight[i], max_channels), kernel_mosaic(weight[j], max_channels)) for i, j, _ in pairs]
    bound = max(np.nanmax(np.abs(m)) for pair in mosaics for m in pair)
    fig, axes = figure(2, len(pairs), width=1.9, height=1.9)
    axes = np.asarray(axes).reshape(2, len(pairs))
    for col, ((i, j, sim), (top, bottom)) in enumerate(zip(pairs, mosaics)):
        for row, (image, index) in enumerate(((top, i), (bottom, j))):
            ax = axes[row, col]
            ax.imshow(image, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
            ax.set(xticks=[], yticks=[], xlabel=f"kernel {index}")
            ax.grid(False)
        axes[0, col].set_title(f"sim = {sim:+.3f}")
    return fig


def similarity_distributions(sims: Mapping[str, Mapping[str, np.ndarray]], tau: float, first_layer: int):
    """Per conv layer, the distribution of pairwise kernel similarities, one line per model.

    ``sims``: model label -> layer name -> similarities (:func:`medsoup.merging.kernels.layer_similarities`);
    layers at index ``>= first_layer`` (merged ones) are marked in the panel title.
    """
    labels = list(sims)
    layers = list(sims[labels[0]])
    ncols = min(3, len(layers))
    nrows = int(np.ceil(len(layers) / ncols))
    fig, axes = figure(nrows, ncols, width=3.3, height=2.5, flat=True)
    colours = sns.color_palette("deep", len(labels))
    for index, (ax, layer) in enumerate(zip(axes, layers)):
        bins = np.linspace(-1, 1, 81)
        for colour, label in zip(colours, labels):
            ax.hist(sims[label][layer], bins=bins, density=True, histtype="step", color=colour, label=label)
        ax.axvline(tau, color="black", linestyle="--", linewidth=0.8)
        merged = " (merged)" if index >= first_layer else ""
        ax.set(title=f"#{index} {layer}{merged}", xlabel="cosine similarity", ylabel="density", xlim=(-1.0, 1.0))
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(labels), fontsize=9,
               frameon=False)
    return fig


def kind_similarities(sims: Mapping[str, Mapping[str, np.ndarray]], tau: float):
    """Density of the pairwise kernel similarities pooled per layer kind (depthwise vs pointwise and
    other), one panel per group of layers (``sims``: group label -> kind -> similarities, from
    :func:`medsoup.merging.kernels.similarities_by_kind`); the dashed line is ``tau``."""
    fig, axes = figure(1, len(sims), width=3.8, height=2.8, flat=True)
    colours = dict(zip(("depthwise", "other"), sns.color_palette("deep", 2)))
    names = {"depthwise": "depthwise", "other": "pointwise/other"}
    bins = np.linspace(-1, 1, 101)
    for ax, (group, kinds) in zip(axes, sims.items()):
        for kind, values in kinds.items():
            ax.hist(values, bins=bins, density=True, histtype="step", color=colours[kind],
                    label=f"{names[kind]} ({100 * float((values > tau).mean()):.1f}% > tau)")
        ax.axvline(tau, color="black", linestyle="--", linewidth=0.8)
        ax.set(title=group, xlabel="cosine similarity of a kernel pair", ylabel="density (log)", xlim=(-1.0, 1.0),
               yscale="log")  # the whole range [-1, 1]: depthwise pairs pile up near +1
        ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.12), frameon=False)
    return fig


def comparison_bars(table: pd.DataFrame, metric: str = "auc", by: str | Sequence[str] = "dataset"):
    """Baseline and InMerge means with standard deviations per group of
    :func:`medsoup.chapters.inmerge.versus_baseline` (labelled by the ``by`` columns, one row each), as
    horizontal bars so that long labels stay readable; the paired difference at the right of each group,
    the legend under the plot."""
    rows = table[table["metric"] == metric].reset_index(drop=True)
    keys = (by,) if isinstance(by, str) else tuple(by)
    fig, ax = figure(width=6.4, height=0.75 * len(rows) + 1.6)
    y = np.arange(len(rows))[::-1]
    colours = sns.color_palette("deep", 2)
    for offset, arm, colour in ((0.2, "reference", colours[0]), (-0.2, "method", colours[1])):
        ax.barh(y + offset, rows[f"{arm}_mean"], 0.4, xerr=rows[f"{arm}_std"].fillna(0), capsize=3, color=colour,
                label="InMerge" if arm == "method" else "baseline")
    for k, r in rows.iterrows():
        ax.annotate(f"{r['difference']:+.3f}", (1.01, y[k]), xycoords=("axes fraction", "data"), va="center",
                    fontsize=10)
    low = np.nanmin(rows[["reference_mean", "method_mean"]].to_numpy()
                    - rows[["reference_std", "method_std"]].fillna(0).to_numpy())
    ax.set_xlim(max(0.0, low - 0.05), None)
    ax.set_yticks(y, [", ".join(str(r[k]) for k in keys) for _, r in rows.iterrows()], fontsize=10)
    ax.set(xlabel=f"test {metric.upper()}", title=f"n = {rows['n'].max()} seeds; right: InMerge − baseline")
    ax.grid(axis="y", visible=False)
    fig.legend(loc="outside lower center", ncols=2, fontsize=10, frameon=False)
    return fig


def ablation_lines(table: pd.DataFrame, x: str, metric: str = "auc", hue: str | None = None,
                   xlabel: str | None = None, ax=None):
    """InMerge test ``metric`` (mean +- std over seeds) against setting ``x``, one line per ``hue``
    value, the baseline as a horizontal band; one panel per dataset unless ``ax`` is given.

    ``table``: rows of :func:`medsoup.chapters.inmerge.versus_baseline` grouped by ``("dataset", x[, hue])``.
    """
    rows = table[table["metric"] == metric]
    datasets = list(dict.fromkeys(rows["dataset"]))
    if ax is None:
        fig, axes = figure(1, len(datasets), width=3.6, height=2.9, flat=True)
    else:
        axes = [ax]
    groups = list(dict.fromkeys(rows[hue])) if hue else [None]
    colours = sns.color_palette("deep", len(groups) + 1)
    for a, dataset in zip(axes, datasets):
        mine = rows[rows["dataset"] == dataset]
        base, base_std = mine["reference_mean"].iloc[0], np.nan_to_num(mine["reference_std"].iloc[0])
        a.axhline(base, color="grey", linestyle="--", linewidth=1, label="baseline")
        a.axhspan(base - base_std, base + base_std, color="grey", alpha=0.15)
        for colour, group in zip(colours[1:], groups):
            line = mine if group is None else mine[mine[hue] == group]
            positions = [str(v) for v in line[x]]
            a.errorbar(positions, line["method_mean"], yerr=line["method_std"].fillna(0), marker="o", capsize=3,
                       color=colour, label="InMerge" if group is None else f"{hue} = {group}")
        a.set(title=dataset, xlabel=xlabel or x, ylabel=f"test {metric.upper()}")
        if max(len(str(v)) for v in mine[x]) > 4:
            a.tick_params(axis="x", labelrotation=30)
        a.legend(fontsize=7)
    return axes[0].figure
