"""The evaluation figures of an SD-MAE run, written as PNGs: ROC / PR and histogram
(maelab.viz.scores), example windows with both decoders' reconstructions, or point scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from maelab.data.contracts import SeriesInfo
from maelab.viz import scores
from maelab.viz.common import ANOMALY, ArrayLike, fixed_figure, save, shade_anomalies, to_numpy


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
    xs, ts = to_numpy(x).astype(np.float64), to_numpy(teacher).astype(np.float64)  # (K, T, F)
    ss = None if student is None else to_numpy(student).astype(np.float64)  # (K, T, F)
    ys = to_numpy(point_labels)  # (K, T)
    n_ex, n_steps, n_feat = xs.shape
    if ts.shape != xs.shape or (ss is not None and ss.shape != xs.shape):
        raise ValueError("x, teacher and student must share the shape (K, T, F)")
    if ys.shape != (n_ex, n_steps) or len(titles) != n_ex:
        raise ValueError(f"need point_labels of shape {(n_ex, n_steps)} and {n_ex} titles")
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(n_feat)]
    n_cols = min(max_features, n_feat)
    fig = fixed_figure(4.2 * n_cols, 2.4 * n_ex + 0.6, left=0.45, right=0.1, bottom=0.3, top=0.6)
    axes = np.asarray(fig.subplots(n_ex, n_cols, squeeze=False,
                                   gridspec_kw={"hspace": 0.35, "wspace": 0.15}))  # (K, n_cols)
    steps = np.arange(n_steps)
    hidden = slice(n_steps - mask_last_n, n_steps)
    for k in range(n_ex):
        err = ((xs[k, hidden] - ts[k, hidden]) ** 2).mean(axis=0)  # (F,)
        for col, f in enumerate(np.argsort(-err, kind="stable")[:n_cols]):
            ax = axes[k, col]
            ax.axvspan(n_steps - mask_last_n - 0.5, n_steps - 0.5, color="grey", alpha=0.2, lw=0)
            shade_anomalies(ax, ys[k])
            ax.plot(steps, xs[k, :, f], color="black", lw=1.0)
            ax.plot(steps, ts[k, :, f], color="tab:blue", lw=1.0, ls="--")
            if ss is not None:
                ax.plot(steps, ss[k, :, f], color="tab:orange", lw=1.0, ls=":")
            ax.set_title(f"{titles[k]} | {names[f]}", fontsize=9)
            ax.tick_params(labelsize=7)
    handles = [Patch(color="grey", alpha=0.2, label="hidden"),
               Patch(color=ANOMALY, alpha=0.15, label="true anomaly"),
               Line2D([], [], color="black", lw=1.0, label="input"),
               Line2D([], [], color="tab:blue", lw=1.0, ls="--", label="teacher")]
    if ss is not None:
        handles.append(Line2D([], [], color="tab:orange", lw=1.0, ls=":", label="student"))
    fig.legend(handles=handles, loc="upper center", ncols=len(handles), fontsize=8)
    return save(fig, path)


def write_figures(
    info: SeriesInfo, examples: dict[int, dict[str, torch.Tensor]], results: dict[str, Any],
    out_dir: Path,
) -> dict[str, Figure]:
    """ROC/PR per score, histogram of the primary score, example windows or series scores."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, score = results["labels"], results["score"]
    figs = {"roc_pr": scores.plot_roc_pr(
        {name: (s, labels) for name, s in results["scores"].items()}, path=out_dir / "roc_pr.png")}
    figs["histogram"] = scores.plot_score_histograms(
        results["scores"][score], labels, results["thresholds"][score], score,
        path=out_dir / f"histogram_{score}.png")
    if info.eval_level == "point":
        figs["series"] = scores.plot_series_scores(
            results["scores"][score], labels, results["thresholds"][score],
            path=out_dir / "series_scores.png")
    elif examples:
        kinds = sorted(examples)
        ex = [examples[k] for k in kinds]

        def stack(key: str) -> np.ndarray | None:
            return np.stack([e[key].numpy() for e in ex]) if key in ex[0] else None

        recon = "teacher" if "teacher" in ex[0] else "student"  # one-decoder ablations
        figs["examples"] = plot_example_windows(
            stack("x"), stack(recon), stack("student") if recon == "teacher" else None,
            stack("point_labels"),
            [info.anomaly_types[k] for k in kinds], results["mask_last_n"], info.feature_names,
            path=out_dir / "examples.png")
    return figs
