"""Anomaly-score figures of any detector: ROC / PR curves, score histograms, scores over time.

Curves and their areas come from torchmetrics on the scores' ranks: a monotone map into [0, 1]
that keeps every tie and every order, so the curves are those of the raw scores (torchmetrics
would squash scores outside [0, 1] with a sigmoid).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
)

from maelab.viz.common import (
    ANOMALY,
    NORMAL,
    ArrayLike,
    fixed_figure,
    save,
    shade_anomalies,
    to_numpy,
)


def rank_scores(scores: np.ndarray) -> torch.Tensor:
    """(N,) float64 ranks of the distinct scores scaled into [0, 1]; ties stay tied."""
    distinct, rank = np.unique(scores, return_inverse=True)
    return torch.from_numpy(rank.reshape(-1) / max(1, len(distinct) - 1))


def plot_roc_pr(
    scores_by_name: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """ROC (left) and PR (right) curves, one per score type {name: (scores (N,), labels (N,))}."""
    fig = fixed_figure(10, 4.5, top=0.7 if title else 0.35)
    ax_roc, ax_pr = fig.subplots(1, 2, gridspec_kw={"wspace": 0.2})
    for name, (scores, labels) in scores_by_name.items():
        s, y = to_numpy(scores).astype(np.float64).ravel(), to_numpy(labels).ravel() != 0
        if y.all() or not y.any():
            ax_roc.plot([], [], label=f"{name} (one class only)")
            continue
        u, t = rank_scores(s), torch.from_numpy(y).long()
        fpr, tpr, _ = binary_roc(u, t)
        precision, recall, _ = binary_precision_recall_curve(u, t)
        line = ax_roc.plot(fpr, tpr, label=f"{name} (AUROC {float(binary_auroc(u, t)):.3f})")[0]
        ax_pr.step(recall, precision, where="post", color=line.get_color(),
                   label=f"{name} (AUPRC {float(binary_average_precision(u, t)):.3f})")
    ax_roc.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC",
               xlim=(0, 1), ylim=(0, 1.02))
    ax_pr.set(xlabel="recall", ylabel="precision", title="precision-recall",
              xlim=(0, 1), ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.legend(loc="lower right" if ax is ax_roc else "lower left", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def plot_score_histograms(
    scores: ArrayLike,
    labels: ArrayLike,
    threshold: float,
    name: str,
    path: str | Path | None = None,
) -> Figure:
    """Histograms of normal vs anomalous scores with the threshold line.

    Bins are log-spaced (log x-axis) when scores are positive and span over 3 decades.
    """
    s, y = to_numpy(scores).astype(np.float64).ravel(), to_numpy(labels).ravel() != 0
    fig = fixed_figure(6.5, 4)
    ax = fig.subplots()
    log_x = bool(s.min() > 0 and s.max() / s.min() > 1e3)
    if log_x:
        bins = np.geomspace(s.min(), s.max(), 61)
        ax.set_xscale("log")
    else:
        bins = np.histogram_bin_edges(s, bins=60)
    for mask, color, label in ((~y, NORMAL, "normal"), (y, ANOMALY, "anomalous")):
        n = int(mask.sum())
        if n:  # each class sums to 1 whatever the bin widths
            ax.hist(s[mask], bins=bins, weights=np.full(n, 1.0 / n), color=color, alpha=0.5,
                    label=f"{label} (n={n})")
    ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.4g}")
    ax.set(xlabel=f"{name} score", ylabel="share of class",
           title=f"{name}: anomalous iff score > threshold")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_series_scores(
    score: ArrayLike,
    labels: ArrayLike,
    threshold: float,
    path: str | Path | None = None,
    name: str = "discrepancy",
) -> Figure:
    """Point score over time (L,) with true anomalies shaded and the threshold line.

    Unscored (NaN) points leave gaps.
    """
    s, y = to_numpy(score).astype(np.float64).ravel(), to_numpy(labels).ravel()
    fig = fixed_figure(12, 3.5, left=0.7)
    ax = fig.subplots()
    shade_anomalies(ax, y)
    ax.plot(np.arange(s.size), s, color="black", lw=0.7, label=name)
    ax.axhline(threshold, color=ANOMALY, ls="--", lw=1.0, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="time step", ylabel=f"{name} score", xlim=(0, max(s.size - 1, 1)),
           title=f"{name} over time (anomalous iff score > threshold)")
    ax.legend(fontsize=8, loc="upper right")
    return save(fig, path)
