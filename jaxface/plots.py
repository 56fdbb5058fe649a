"""Plots every command writes: bar charts, labelled image grids, confusion matrices, curves."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxface import files  # noqa: E402


def bar_chart(path, names, values, *, title: str, xlabel: str, sort: bool = True, xlim=(0.0, 1.0)):
    """Horizontal bars, one per name (sorted by value), values annotated."""
    values = np.asarray(values, np.float64)
    order = np.argsort(np.nan_to_num(values, nan=-1.0)) if sort else np.arange(len(values))[::-1]
    names = [names[i] for i in order]
    values = values[order]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    ax.barh(range(len(names)), np.nan_to_num(values), color="#4c72b0")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    for i, v in enumerate(values):
        ax.text(np.nan_to_num(v) + 0.005, i, "n/a" if np.isnan(v) else f"{v:.2f}", va="center", fontsize=7)
    ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    out = files.save_figure(path, fig)
    plt.close(fig)
    return out


def labelled_grid(path, images, captions, *, cols: int = 4, title: str = ""):
    """Images with a caption (e.g. their labels) listed beside each one."""
    images = np.asarray(images)
    n = len(images)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols * 2, figsize=(cols * 4.2, rows * 1.9),
                             gridspec_kw={"width_ratios": [1, 1.2] * cols})
    axes = np.atleast_2d(axes)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        axes[r, 2 * c].imshow(images[i], interpolation="nearest")
        axes[r, 2 * c + 1].text(0.0, 0.5, captions[i], fontsize=6.5, va="center", family="monospace")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = files.save_figure(path, fig)
    plt.close(fig)
    return out


def confusion_matrix(path, matrix, class_names, *, title: str):
    matrix = np.asarray(matrix, np.float64)
    norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.8 + 0.6 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k))
    ax.set_yticklabels(class_names, fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = files.save_figure(path, fig)
    plt.close(fig)
    return out


def line_plot(path, series: dict, *, title: str, xlabel: str, ylabel: str, diagonal: bool = False):
    """series: name -> (x, y)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="." if len(x) < 30 else None, label=name)
    if diagonal:
        ax.plot([0, 1], [0, 1], "k--", lw=0.7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = files.save_figure(path, fig)
    plt.close(fig)
    return out
