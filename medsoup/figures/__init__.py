"""Every figure in the book goes through :func:`figure`, so all share one style and size.

Chapter-specific figures live in ``medsoup/figures/<chapter>.py`` and build on these helpers.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

STYLE = {"figure.dpi": 110, "savefig.dpi": 150, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3, "font.size": 10}


def figure(nrows: int = 1, ncols: int = 1, width: float = 4.2, height: float = 3.2, flat: bool = False,
           **kwargs):
    """``(fig, axes)`` with the book's style; ``width``/``height`` are per panel, in inches.

    ``axes`` is one ``Axes`` for a single panel, else a ``(nrows, ncols)`` array; with ``flat=True``
    it is always a 1-D array of the panels, row by row (one panel per item of a loop).
    """
    matplotlib.rcParams.update(STYLE)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained", **kwargs)
    if flat:
        return fig, axes.ravel()
    return fig, (axes[0, 0] if nrows == ncols == 1 else axes)


def learning_curves(history: Sequence[dict], metrics: Sequence[str] = ("acc", "auc"), title: str = ""):
    """Training loss and validation metrics per epoch for one run."""
    fig, axes = figure(1, 2)
    epochs = [h["epoch"] for h in history]
    axes[0, 0].plot(epochs, [h["train_loss"] for h in history], label="train loss")
    axes[0, 0].plot(epochs, [h["val_loss"] for h in history], label="val loss")
    axes[0, 0].set(xlabel="epoch", ylabel="loss", title=title or "loss")
    for metric in metrics:
        axes[0, 1].plot(epochs, [h[f"val_{metric}"] for h in history], label=f"val {metric.upper()}")
    axes[0, 1].set(xlabel="epoch", ylabel="metric", title="validation")
    for ax in axes[0]:
        ax.legend()
    return fig


def confusion_matrix(matrix: np.ndarray, labels: Sequence[str], title: str = "", normalise: bool = True):
    """Heat map of a confusion matrix (rows: true class, columns: predicted class)."""
    counts = np.asarray(matrix, dtype=float)
    shown = counts / counts.sum(axis=1, keepdims=True).clip(min=1) if normalise else counts
    side = max(3.2, 0.6 * len(labels) + 1.8)
    fig, ax = figure(width=side, height=side * 0.85)
    short = [label if len(label) <= 18 else label[:16] + "…" for label in labels]
    sns.heatmap(shown, annot=True, fmt=".2f" if normalise else ".0f", cmap="Blues", ax=ax,
                xticklabels=short, yticklabels=short, cbar=False, vmin=0)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    ax.grid(False)
    return fig


def image_grid(images, labels: Sequence[str], ncols: int = 8, title: str = ""):
    """uint8 images (N, C, H, W) in a grid, each titled with its label."""
    images = np.asarray(images.cpu() if hasattr(images, "cpu") else images)
    nrows = -(-len(images) // ncols)
    fig, axes = figure(nrows, ncols, width=1.1, height=1.25)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels):
        ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=255)
        ax.set_title(label if len(label) <= 14 else label[:12] + "…", fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
