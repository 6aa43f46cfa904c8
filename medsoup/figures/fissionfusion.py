"""Figures of the FissionFusion chapter: error-landscape slices (Fig. 1), LMC curves (Appendix
B1), soups with and without BatchNorm recalibration, and in- vs out-of-distribution scores."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from medsoup.figures import figure
from medsoup.merging.landscape import Landscape, LMCCurve


def landscape_panel(ax, scape: Landscape, metric: str = "acc", labels: Sequence[str] = ("1", "2", "3"),
                    title: str = ""):
    """Filled contours of the validation error (1 - ``metric``) with the anchor models marked."""
    error = 1 - scape.values(metric)
    levels = np.linspace(np.nanmin(error), np.nanmax(error) + 1e-9, 12)
    filled = ax.contourf(scape.xs, scape.ys, error, levels=levels, cmap="viridis_r")
    ax.contour(scape.xs, scape.ys, error, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    for (x, y), label in zip(scape.models, labels):
        ax.plot(x, y, "o", color="white", markeredgecolor="black", markersize=7)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), color="white", fontsize=9)
    ax.set(title=title, xticks=[], yticks=[])
    ax.grid(False)
    ax.figure.colorbar(filled, ax=ax, shrink=0.85, label=f"val error (1 - {metric})")
    return ax


def landscapes(scapes: Mapping[str, Landscape], metric: str = "acc", labels: Sequence[str] = ("best", "2nd", "3rd")):
    """One panel per entry of ``scapes`` (title: its key)."""
    fig, axes = figure(1, len(scapes), width=3.8, height=3.2, flat=True)
    for ax, (title, scape) in zip(axes, scapes.items()):
        landscape_panel(ax, scape, metric, labels, title)
    return fig


def lmc_curves(curves: Mapping[str, Mapping[str, Mapping[str, LMCCurve]]], metric_of: Mapping[str, str]):
    """One row per dataset (key of ``curves``), one panel per pair kind, one line per curve label
    (e.g. "BN averaged", "BN recomputed"); the y-axis is the dataset's metric ``metric_of[dataset]``."""
    ncols = max(len(panels) for panels in curves.values())
    fig, axes = figure(len(curves), ncols, width=3.4, height=2.7)
    axes = np.asarray(axes).reshape(len(curves), ncols)
    for row, (dataset, panels) in zip(axes, curves.items()):
        for ax, (title, lines) in zip(row, panels.items()):
            for label, curve in lines.items():
                ax.plot(curve.lambdas, curve.values(metric_of[dataset]), marker="o", markersize=3, label=label)
            ax.set(title=f"{dataset}: {title}", xlabel=r"$\lambda$ ($\theta_B$ at 0, $\theta_A$ at 1)",
                   ylabel=f"val {metric_of[dataset]}")
    axes[0, 0].legend(fontsize=8)
    return fig


def paired_bars(names: Sequence[str], left: Sequence[float], right: Sequence[float], labels: tuple[str, str],
                ylabel: str, title: str = "", ax=None):
    """Two bars per method (e.g. BN stored vs recomputed, or clean vs corrupted test set)."""
    if ax is None:
        _, ax = figure(width=max(4.2, 0.7 * len(names)))
    x = np.arange(len(names))
    ax.bar(x - 0.2, left, width=0.4, label=labels[0])
    ax.bar(x + 0.2, right, width=0.4, label=labels[1])
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return ax.figure
