"""Figures of the MedMerge chapter: heat maps of the learnt w per layer (the paper's Fig. 2 and 4)
and feature maps of one image through the two sources and the merged model (Fig. 3)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from medsoup.figures import figure


def weight_heatmap(rows: Mapping[str, Mapping[str, torch.Tensor]], title: str = "", b_label: str = "source b",
                   c_label: str = "source c", per_panel: int = 17):
    """Mean learnt ``w`` of every convolution layer (columns, input to output, numbered from 1) for each
    row label (e.g. a target). ``w = 1`` takes the kernel from source b, ``w = 0`` from source c; kernels
    with no defined ``w`` (NaN) are left out of the mean. A network with more than ``per_panel`` layers is
    wrapped into stacked panels of ``per_panel`` layers each, so the figure keeps a page's proportions."""
    labels = list(rows)
    layers = list(next(iter(rows.values())))
    means = np.array([[float(np.nanmean(rows[r][layer].float().numpy())) for layer in layers] for r in labels])
    starts = list(range(0, len(layers), per_panel))
    fig, axes = figure(len(starts), 1, width=6.8, height=0.42 * len(labels) + 0.9, flat=True)
    for ax, start in zip(axes, starts):
        part = means[:, start:start + per_panel]
        image = ax.imshow(part, vmin=0, vmax=1, cmap="coolwarm", aspect="auto")
        for (i, j), value in np.ndenumerate(part):
            if np.isfinite(value):
                ax.annotate(f"{value:.2f}", (j, i), ha="center", va="center", fontsize=6)
        ax.set_xticks(range(part.shape[1]), [str(start + j + 1) for j in range(part.shape[1])], fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=9)
        ax.grid(False)
    axes[0].set_title(title)
    axes[-1].set_xlabel("convolution layer (input → output)")
    fig.colorbar(image, ax=list(axes), label=f"mean w  (1: {b_label}, 0: {c_label})", shrink=0.9)
    return fig


def weight_shift_profile(rows: Mapping[str, Mapping[str, float]], bounds: Mapping[str, float] | None = None,
                         title: str = ""):
    """Per convolution layer (input to output), how far ``w`` moved from its 0.5 start (mean ``|w - 0.5|``),
    one line per row label; ``bounds`` (label -> value) are drawn as dashed horizontal lines."""
    fig, ax = figure(width=6.5, height=3.2)
    for label, shifts in rows.items():
        ax.plot(range(1, len(shifts) + 1), list(shifts.values()), marker=".", label=label)
    for label, value in (bounds or {}).items():
        ax.axhline(value, ls="--", lw=1, color="grey")
        ax.annotate(label, (1, value), textcoords="offset points", xytext=(2, 3), fontsize=8, color="grey")
    ax.set(xlabel="convolution layer (input → output)", ylabel="mean |w − 0.5|", title=title, ylim=(0, None))
    ax.legend(fontsize=8)
    return fig


def feature_maps(image: torch.Tensor, rows: Mapping[str, Mapping[str, torch.Tensor]], title: str = ""):
    """One image (C, H, W, normalised) and, per model (rows), the channel-mean magnitude of each
    named layer's output (columns, e.g. "low level" and "high level"), each map scaled to [0, 1]."""
    layers = list(next(iter(rows.values())))
    fig, axes = figure(len(rows), len(layers) + 1, width=1.9, height=1.9)
    shown = image.float()
    shown = (shown - shown.min()) / (shown.max() - shown.min()).clamp(min=1e-8)
    for i, (label, maps) in enumerate(rows.items()):
        axes[i, 0].imshow(shown.permute(1, 2, 0).numpy() if shown.shape[0] == 3 else shown[0].numpy(),
                          cmap=None if shown.shape[0] == 3 else "gray")
        axes[i, 0].set_ylabel(label)
        for j, layer in enumerate(layers):
            m = maps[layer].float().abs().mean(dim=0)
            m = (m - m.min()) / (m.max() - m.min()).clamp(min=1e-8)
            axes[i, j + 1].imshow(m.numpy(), cmap="magma")
            if i == 0:
                axes[i, j + 1].set_title(layer)
    axes[0, 0].set_title("input")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.grid(False)
    if title:
        fig.suptitle(title)
    return fig
