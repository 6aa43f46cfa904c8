"""Figures read at page width and on a phone: no strip wider than about 3:1, axes that show the whole range."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import torch

from medsoup.chapters import tables
from medsoup.figures import inmerge as inmerge_figures
from medsoup.figures.medmerge import weight_heatmap


def _ratio(fig) -> float:
    width, height = fig.get_size_inches()
    return width / height


def test_a_deep_network_heatmap_wraps_into_panels_of_page_proportions():
    rows = {f"target {t}": {f"conv{i}": torch.full((4,), 0.5) for i in range(49)} for t in range(2)}
    fig = weight_heatmap(rows)
    panels = [ax for ax in fig.axes if ax.get_yticklabels() and ax.get_yticklabels()[0].get_text() == "target 0"]
    assert len(panels) == 3 and _ratio(fig) < 3
    assert panels[-1].get_xticklabels()[-1].get_text() == "49"
    matplotlib.pyplot.close("all")


def test_kernel_similarity_histograms_show_the_whole_range():
    sims = {"all": {"depthwise": np.array([0.99, 0.98, 0.1]), "other": np.array([0.0, 0.1, -0.1])}}
    fig = inmerge_figures.kind_similarities(sims, 0.3)
    assert fig.axes[0].get_xlim() == (-1.0, 1.0)
    layers = {"m": {"conv": np.array([0.99, -0.95, 0.1])}}
    assert inmerge_figures.similarity_distributions(layers, 0.3, 0).axes[0].get_xlim() == (-1.0, 1.0)
    matplotlib.pyplot.close("all")


def test_table2_bars_are_horizontal_with_one_label_per_group():
    rows = pd.DataFrame([tables.row("X", m, "method", d, s, {"acc": 0.7 + 0.01 * s + (0.02 if m == "InMerge" else 0)},
                                    setting=f"tau={t}")
                         for d in ("pneumoniamnist", "breastmnist") for t in (0.3, 0.5)
                         for m in ("InMerge", "fine-tuning, no merging") for s in range(3)])
    table = tables.paired(rows, [("InMerge", "fine-tuning, no merging")], "acc", by=("dataset", "setting"))
    fig = inmerge_figures.comparison_bars(table, "acc", by=("dataset", "setting"))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["pneumoniamnist, tau=0.3", "pneumoniamnist, tau=0.5", "breastmnist, tau=0.3", "breastmnist, tau=0.5"]
    assert _ratio(fig) < 3 and fig.axes[0].get_legend() is None  # the legend is the figure's, under the bars
    matplotlib.pyplot.close("all")
