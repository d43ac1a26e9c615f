"""Anomaly-score figures of any detector: ROC / PR curves, score histograms, scores over time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from maelab.viz.common import ANOMALY, NORMAL, ArrayLike, save, shade_anomalies, to_numpy


def plot_roc_pr(
    scores_by_name: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """ROC (left) and PR (right) curves, one per score type {name: (scores (N,), labels (N,))}."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_roc, ax_pr = fig.subplots(1, 2)
    for name, (scores, labels) in scores_by_name.items():
        s, y = to_numpy(scores).astype(np.float64).ravel(), to_numpy(labels).ravel() != 0
        if y.all() or not y.any():
            ax_roc.plot([], [], label=f"{name} (one class only)")
            continue
        fpr, tpr, _ = roc_curve(y, s)
        precision, recall, _ = precision_recall_curve(y, s)
        line = ax_roc.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, s):.3f})")[0]
        ax_pr.step(recall, precision, where="post", color=line.get_color(),
                   label=f"{name} (AUPRC {average_precision_score(y, s):.3f})")
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
    fig = Figure(figsize=(6.5, 4), layout="constrained")
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
    fig = Figure(figsize=(12, 3.5), layout="constrained")
    ax = fig.subplots()
    shade_anomalies(ax, y)
    ax.plot(np.arange(s.size), s, color="black", lw=0.7, label=name)
    ax.axhline(threshold, color=ANOMALY, ls="--", lw=1.0, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="time step", ylabel=f"{name} score", xlim=(0, max(s.size - 1, 1)),
           title=f"{name} over time (anomalous iff score > threshold)")
    ax.legend(fontsize=8, loc="upper right")
    return save(fig, path)
