"""Figures of the FissionFusion chapter: error-landscape slices (Fig. 1), LMC curves as mean ± std over
seeds (Appendix B1), soups with and without BatchNorm recalibration, in- vs out-of-distribution scores,
and reliability diagrams (calibration)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from medsoup.core.calibration import ECE_BINS, binary_columns, reliability
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


def curve_band(curves: Sequence[LMCCurve], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``lambdas``, mean and std (0 for one curve) of ``metric`` over curves sampled at the same lambdas."""
    lambdas = np.asarray(curves[0].lambdas, dtype=float)
    if any(len(c.lambdas) != len(lambdas) or not np.allclose(c.lambdas, lambdas) for c in curves):
        raise ValueError("the curves are sampled at different lambdas")
    values = np.array([c.values(metric) for c in curves], dtype=float)
    return lambdas, values.mean(axis=0), values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(len(lambdas))


def lmc_bands(curves: Mapping[str, Mapping[str, Mapping[str, Sequence[LMCCurve]]]], metric_of: Mapping[str, str]):
    """One row per dataset (key of ``curves``), two panels: its metric ``metric_of[dataset]`` and the
    loss along lambda; one line per pair kind and curve label (e.g. "only seed", "BN recomputed"), the
    mean over the curves (one per seed) with a band of ± one standard deviation."""
    fig, axes = figure(len(curves), 2, width=4.2, height=2.9)
    axes = np.asarray(axes).reshape(len(curves), 2)
    for row, (dataset, panels) in zip(axes, curves.items()):
        for ax, metric in zip(row, (metric_of[dataset], "loss")):
            for kind, lines in panels.items():
                for label, group in lines.items():
                    lam, mean, std = curve_band(group, metric)
                    name = kind if len(lines) == 1 else f"{kind}, {label}"
                    (line,) = ax.plot(lam, mean, marker="o", markersize=3, label=f"{name} (n={len(group)})")
                    ax.fill_between(lam, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            ax.set(title=f"{dataset}: val {metric}", xlabel=r"$\lambda$ ($\theta_B$ at 0, $\theta_A$ at 1)",
                   ylabel=f"val {metric}")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8,
               frameon=False)
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
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=24)
    ax.legend(fontsize=8, ncols=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)  # above the bars
    return ax.figure


def _pooled(pairs: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities, targets)`` pairs concatenated; multi-label ones (2-D targets) as binary columns."""
    probs = np.concatenate([np.asarray(p, dtype=float) for p, _ in pairs])
    targets = np.concatenate([np.asarray(t) for _, t in pairs])
    return binary_columns(probs, targets) if targets.ndim == 2 else (probs, targets)


def reliability_diagram(predictions: Mapping[str, Mapping[str, Sequence[tuple]]],
                        methods: Sequence[str] | None = None, bins: int = ECE_BINS):
    """One panel per dataset (key of ``predictions``): for each method (those of ``methods`` present, in
    that order; default: all), the accuracy of its arg-max predictions against their mean confidence in
    each of ``bins`` equal-width confidence bins (:func:`medsoup.core.calibration.reliability`), over its
    ``(probabilities, targets)`` test sets pooled (one per seed), a point's area growing with its bin's
    images; the diagonal is perfect calibration (below it: over-confident). One legend below the panels."""
    fig, axes = figure(1, len(predictions), width=4.0, height=3.6, flat=True)
    for ax, (dataset, per_method) in zip(axes, predictions.items()):
        low = 1.0
        for method in methods or per_method:
            if method not in per_method:
                continue
            probs, targets = _pooled(per_method[method])
            r = reliability(probs, targets, bins)
            filled = r["count"] > 0
            size = 8 + 120 * r["count"][filled] / r["count"].sum()
            (line,) = ax.plot(r["confidence"][filled], r["accuracy"][filled], lw=1, label=method)
            ax.scatter(r["confidence"][filled], r["accuracy"][filled], s=size, color=line.get_color(), alpha=0.7)
            low = min(low, 1 / probs.shape[1])
        ax.plot([low, 1], [low, 1], color="0.4", ls="--", lw=1, label="perfect calibration")
        ax.set(xlim=(low - 0.02, 1.01), ylim=(-0.02, 1.02), xlabel="confidence (max probability)",
               ylabel="accuracy", title=dataset)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)
    return fig
