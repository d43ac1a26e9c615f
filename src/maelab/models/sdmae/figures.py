"""The evaluation figures of an SD-MAE run, written as PNGs (drawing lives in maelab.viz.plots)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from maelab.data.contracts import SeriesInfo
from maelab.viz import plots


def write_figures(
    info: SeriesInfo, examples: dict[int, dict[str, torch.Tensor]], results: dict[str, Any],
    out_dir: Path,
) -> dict[str, Figure]:
    """ROC/PR per score, histogram of the primary score, example windows or series scores."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, score = results["labels"], results["score"]
    figs = {"roc_pr": plots.plot_roc_pr(
        {name: (s, labels) for name, s in results["scores"].items()}, path=out_dir / "roc_pr.png")}
    figs["histogram"] = plots.plot_score_histograms(
        results["scores"][score], labels, results["thresholds"][score], score,
        path=out_dir / f"histogram_{score}.png")
    if info.eval_level == "point":
        figs["series"] = plots.plot_series_scores(
            results["scores"][score], labels, results["thresholds"][score],
            path=out_dir / "series_scores.png")
    elif examples:
        kinds = sorted(examples)
        ex = [examples[k] for k in kinds]

        def stack(key: str) -> np.ndarray | None:
            return np.stack([e[key].numpy() for e in ex]) if key in ex[0] else None

        recon = "teacher" if "teacher" in ex[0] else "student"  # one-decoder ablations
        figs["examples"] = plots.plot_example_windows(
            stack("x"), stack(recon), stack("student") if recon == "teacher" else None,
            stack("point_labels"),
            [info.anomaly_types[k] for k in kinds], results["mask_last_n"], info.feature_names,
            path=out_dir / "examples.png")
    return figs
