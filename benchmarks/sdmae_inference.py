"""SD-MAE inference throughput: point scores of one long series (points/s).

The default config builds the model (weights do not change the cost). A long multivariate
series (seasonal signals + noise, seeded) is cut into windows with stride `mask_last_n` (strided
views, no copies), scored batch by batch with `SDMAEModule.step_scores` (last `mask_last_n`
steps hidden) under `torch.inference_mode`, and assembled into per-point scores with
`assemble_point_scores`: every point after the first window's context is scored once. Reported:
scored points/s and windows/s (median of `repeats` passes after one warm-up pass), and the time
VUS-PR (`maelab.scoring.vus_pr`, buffers up to `vus_max_window`) takes on those point scores
against seeded anomaly segments (median of `repeats` calls; target ≤ 1 s for 25,000 points).

    python -m benchmarks.sdmae_inference
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from benchmarks.common import compose, device_of, median, timed
from maelab.pipeline import build_datamodule, build_module
from maelab.scoring import assemble_point_scores, vus_pr
from maelab.scoring.point_scores import sliding_window_starts


def long_series(length: int, num_features: int, seed: int = 0) -> torch.Tensor:
    """(L, F) float32: a daily and a slower cycle per feature, random phases, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[:, None]
    phase = rng.uniform(0, 2 * np.pi, (2, num_features))
    x = np.sin(2 * np.pi * t / 50 + phase[0]) + 0.5 * np.sin(2 * np.pi * t / 377 + phase[1])
    return torch.from_numpy((x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32))


def score_series(module, series: torch.Tensor, batch_size: int, score: str,
                 device: torch.device) -> torch.Tensor:
    """(L,) float64 point scores of `series` (L, F); NaN where unscored."""
    t, n = module.hparams.data_info["seq_length"], module.mask_last_n
    starts = sliding_window_starts(len(series), t, n)  # (W,)
    windows = series.unfold(0, t, n).transpose(1, 2)  # (W, T, F) strided view
    out = []
    with torch.inference_mode():
        for i in range(0, len(starts), batch_size):
            x = windows[i:i + batch_size].to(device, non_blocking=True)  # one batch on the device
            out.append(module.step_scores(x)[0][score].mean(-1))  # (B, n) per-step scores
    return assemble_point_scores(torch.cat(out), starts, t, len(series))


def anomaly_labels(length: int, segments: int = 40, span: int = 50, seed: int = 1) -> np.ndarray:
    """(L,) 0/1 labels with `segments` anomalous runs of `span` points at seeded places."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(length)
    starts = rng.choice(np.arange(0, length - span, 2 * span), min(segments, length // (2 * span)),
                        replace=False)
    for s in starts:
        labels[s:s + span] = 1
    return labels


def run(length: int = 20_000, batch_size: int = 256, repeats: int = 5, vus_max_window: int = 50,
        overrides: Sequence[str] = (), device: str | None = None) -> dict[str, Any]:
    """Score a `length`-step series `repeats` times; points/s of the default SD-MAE."""
    dev = device_of(device)
    cfg = compose([*overrides])
    dm = build_datamodule(cfg)
    torch.manual_seed(int(cfg.seed))
    module = build_module(cfg, dm).to(dev).eval()
    series = long_series(length, int(dm.num_features))
    t, n = int(dm.seq_length), module.mask_last_n
    score = "reconstruction"  # the score every decoder set has (scoring cost is the forward)
    points = score_series(module, series, batch_size, score, dev)
    scored = int(torch.isfinite(points).sum())
    times = [timed(lambda: score_series(module, series, batch_size, score, dev), dev)
             for _ in range(repeats)]
    step = median(times)
    n_windows = len(sliding_window_starts(length, t, n))
    kept = torch.isfinite(points)
    scores, labels = points[kept].numpy(), anomaly_labels(length)[kept.numpy()]
    vus_s = median([timed(lambda: vus_pr(scores, labels, max_window=vus_max_window), dev)
                    for _ in range(repeats)])
    return {"points_per_s": scored / step, "windows_per_s": n_windows / step, "pass_s": step,
            "scored_points": scored,
            "vus_pr": {"seconds": vus_s, "points": len(scores), "max_window": vus_max_window,
                       "seconds_per_25k_points": vus_s * 25_000 / len(scores)},
            "settings": {"length": length, "windows": n_windows, "seq_length": t, "mask_last_n": n,
                         "strategy": module.strategy, "score": module.score,
                         "batch_size": batch_size, "repeats": repeats, "device": str(dev),
                         "threads": torch.get_num_threads()}}


def format_table(results: dict[str, Any]) -> str:
    s = results["settings"]
    v = results["vus_pr"]
    return (f"SD-MAE ({s['strategy']}, {s['score']}) scoring a {s['length']}-step series: "
            f"{results['points_per_s']:.0f} points/s, {results['windows_per_s']:.0f} windows/s; "
            f"VUS-PR of {v['points']} points in {v['seconds']:.3f} s")


if __name__ == "__main__":
    print(format_table(run()))
