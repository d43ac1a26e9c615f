"""Figures for anomaly detection (matplotlib, Agg backend).

Every function builds a standalone ``matplotlib.figure.Figure`` (never registered with pyplot,
so no global state leaks), optionally saves it as a PNG, and returns it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

ArrayLike = torch.Tensor | np.ndarray
DPI = 120
_NORMAL, _ANOMALY = "tab:blue", "tab:red"


def _np(x: ArrayLike) -> np.ndarray:
    """numpy copy of a tensor or array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    """Save `fig` as PNG at `path` (parents created) when given; return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    return fig


def _segments(labels: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, end) runs of non-zero labels."""
    d = np.diff(np.concatenate(([0], (labels != 0).astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def _shade_anomalies(ax: Axes, labels: np.ndarray, label: str | None = "anomaly") -> None:
    """Shade each anomalous run of `labels` (indexed by position) in red."""
    for i, (start, end) in enumerate(_segments(labels)):
        ax.axvspan(start - 0.5, end - 0.5, color=_ANOMALY, alpha=0.15, lw=0,
                   label=label if i == 0 else None)


def plot_roc_pr(
    scores_by_name: Mapping[str, tuple[ArrayLike, ArrayLike]],
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """ROC (left) and PR (right) curves, one per score type {name: (scores (N,), labels (N,))}."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_roc, ax_pr = fig.subplots(1, 2)
    for name, (scores, labels) in scores_by_name.items():
        s, y = _np(scores).astype(np.float64).ravel(), _np(labels).ravel() != 0
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
    return _finish(fig, path)


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
    s, y = _np(scores).astype(np.float64).ravel(), _np(labels).ravel() != 0
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    log_x = bool(s.min() > 0 and s.max() / s.min() > 1e3)
    if log_x:
        bins = np.geomspace(s.min(), s.max(), 61)
        ax.set_xscale("log")
    else:
        bins = np.histogram_bin_edges(s, bins=60)
    for mask, color, label in ((~y, _NORMAL, "normal"), (y, _ANOMALY, "anomalous")):
        n = int(mask.sum())
        if n:  # each class sums to 1 whatever the bin widths
            ax.hist(s[mask], bins=bins, weights=np.full(n, 1.0 / n), color=color, alpha=0.5,
                    label=f"{label} (n={n})")
    ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.4g}")
    ax.set(xlabel=f"{name} score", ylabel="share of class",
           title=f"{name}: anomalous iff score > threshold")
    ax.legend(fontsize=8)
    return _finish(fig, path)


def plot_example_windows(
    x: ArrayLike,
    teacher: ArrayLike,
    student: ArrayLike | None,
    point_labels: ArrayLike,
    titles: Sequence[str],
    mask_last_n: int,
    feature_names: Sequence[str] | None = None,
    path: str | Path | None = None,
    max_features: int = 3,
) -> Figure:
    """Grid of example windows, one row per example (x, teacher, student: (K, T, F)).

    Each row shows up to `max_features` features, those with the largest teacher error on the
    hidden region: input, teacher and student reconstructions, the hidden last `mask_last_n`
    steps shaded grey, true anomalous steps (`point_labels` (K, T)) shaded red.
    """
    xs, ts = _np(x).astype(np.float64), _np(teacher).astype(np.float64)  # (K, T, F)
    ss = None if student is None else _np(student).astype(np.float64)  # (K, T, F)
    ys = _np(point_labels)  # (K, T)
    n_ex, n_steps, n_feat = xs.shape
    if ts.shape != xs.shape or (ss is not None and ss.shape != xs.shape):
        raise ValueError("x, teacher and student must share the shape (K, T, F)")
    if ys.shape != (n_ex, n_steps) or len(titles) != n_ex:
        raise ValueError(f"need point_labels of shape {(n_ex, n_steps)} and {n_ex} titles")
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(n_feat)]
    n_cols = min(max_features, n_feat)
    fig = Figure(figsize=(4.2 * n_cols, 2.4 * n_ex + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(n_ex, n_cols, squeeze=False))  # (K, n_cols)
    steps = np.arange(n_steps)
    hidden = slice(n_steps - mask_last_n, n_steps)
    for k in range(n_ex):
        err = ((xs[k, hidden] - ts[k, hidden]) ** 2).mean(axis=0)  # (F,)
        for col, f in enumerate(np.argsort(-err, kind="stable")[:n_cols]):
            ax = axes[k, col]
            ax.axvspan(n_steps - mask_last_n - 0.5, n_steps - 0.5, color="grey", alpha=0.2, lw=0)
            _shade_anomalies(ax, ys[k])
            ax.plot(steps, xs[k, :, f], color="black", lw=1.0)
            ax.plot(steps, ts[k, :, f], color="tab:blue", lw=1.0, ls="--")
            if ss is not None:
                ax.plot(steps, ss[k, :, f], color="tab:orange", lw=1.0, ls=":")
            ax.set_title(f"{titles[k]} | {names[f]}", fontsize=9)
            ax.tick_params(labelsize=7)
    handles = [Patch(color="grey", alpha=0.2, label="hidden"),
               Patch(color=_ANOMALY, alpha=0.15, label="true anomaly"),
               Line2D([], [], color="black", lw=1.0, label="input"),
               Line2D([], [], color="tab:blue", lw=1.0, ls="--", label="teacher")]
    if ss is not None:
        handles.append(Line2D([], [], color="tab:orange", lw=1.0, ls=":", label="student"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize=8)
    return _finish(fig, path)


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
    s, y = _np(score).astype(np.float64).ravel(), _np(labels).ravel()
    fig = Figure(figsize=(12, 3.5), layout="constrained")
    ax = fig.subplots()
    _shade_anomalies(ax, y)
    ax.plot(np.arange(s.size), s, color="black", lw=0.7, label=name)
    ax.axhline(threshold, color=_ANOMALY, ls="--", lw=1.0, label=f"threshold {threshold:.4g}")
    ax.set(xlabel="time step", ylabel=f"{name} score", xlim=(0, max(s.size - 1, 1)),
           title=f"{name} over time (anomalous iff score > threshold)")
    ax.legend(fontsize=8, loc="upper right")
    return _finish(fig, path)
