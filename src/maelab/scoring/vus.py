"""VUS-PR: volume under the range-PR surface (Paparrizos et al., VLDB 2022).

Computes what the authors' reference code computes (TheDatumOrg/VUS, package `vus`,
``metricor().RangeAUC_volume_opt``; `tests/test_scoring_vus.py` checks equality to 1e-12 where
that package is importable). For a buffer width ℓ, every true segment [s, e] gets soft labels on
ℓ // 2 points each side, ``sqrt(1 - d / ℓ)`` at distance d (overlaps summed, capped at 1). At
each threshold (``score >= t``, t on ``n_thresholds`` evenly spaced ranks of the sorted scores):

- TP = Σ soft · pred, precision = TP / #pred,
- recall = min(TP / P', 1) with P' = (#true points + #true points + Σ soft · pred over the
  buffers) / 2: the buffer mass counts in the denominator only where it is flagged,
- TPR = recall · existence, existence = share of buffered (merged) segments with a flag.

Range-AUC-PR(ℓ) = Σ over thresholds of ΔTPR × precision (a step sum from TPR 0, as the
reference code integrates; at ℓ = 0 with one segment it is the average precision); VUS-PR is its
mean over ℓ = 0..max_window. The reference code is called with max_window = 2 × the typical
anomaly/period length. Flagging exactly the anomalous points scores 1; scores that also rise
around an anomaly raise TP by the flagged buffer mass, and the denominator by half of it.
Vectorised over thresholds with sorted-score cumulative sums.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from maelab.scoring._arrays import ArrayLike, as_labels, as_scores, check_scores


def _segments(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive (starts, ends) of contiguous runs of True, each (S,)."""
    d = np.diff(np.concatenate(([0], labels.astype(np.int8), [0])))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1


def soft_labels(labels: ArrayLike, window: int) -> np.ndarray:
    """(N,) float64 labels with sqrt-shaped buffers of ℓ // 2 points around each segment."""
    y = as_labels(labels).numpy()
    return _soft_labels(y, *_segments(y), int(window))


def _soft_labels(y: np.ndarray, starts: np.ndarray, ends: np.ndarray, window: int) -> np.ndarray:
    """`soft_labels` for precomputed segments."""
    soft = y.astype(np.float64)  # (N,)
    half, n = window // 2, y.size
    if half == 0 or starts.size == 0:
        return soft
    offsets = np.arange(1, half + 1)  # (H,)
    ramp = np.sqrt(1.0 - offsets / window)  # (H,)
    right = (ends[:, None] + offsets).ravel()  # (S*H,)
    left = (starts[:, None] - offsets).ravel()  # (S*H,)
    weights = np.tile(ramp, starts.size)  # (S*H,)
    keep_r, keep_l = right < n, left >= 0
    soft += np.bincount(right[keep_r], weights=weights[keep_r], minlength=n)
    soft += np.bincount(left[keep_l], weights=weights[keep_l], minlength=n)
    return np.minimum(soft, 1.0)


def _buffered_segment_max(
    scores: np.ndarray, starts: np.ndarray, ends: np.ndarray, half: int
) -> np.ndarray:
    """Max score (G,) over each segment widened by `half` each side, overlapping ones merged."""
    n = scores.size
    lo, hi = np.maximum(starts - half, 0), np.minimum(ends + half, n - 1)  # (S,)
    new_group = np.ones(starts.size, dtype=bool)
    new_group[1:] = lo[1:] > hi[:-1]
    group_lo = lo[new_group]  # (G,)
    group_hi = np.maximum.reduceat(hi, np.flatnonzero(new_group))  # (G,)
    padded = np.concatenate((scores, [-np.inf]))  # (N+1,) so hi + 1 = N is a valid index
    bounds = np.stack((group_lo, group_hi + 1), axis=1).ravel()  # (2G,)
    return np.maximum.reduceat(padded, bounds)[::2]


def _range_ap_per_window(
    scores: np.ndarray, y: np.ndarray, windows: np.ndarray, n_thresholds: int | None
) -> np.ndarray:
    """Range-AUC-PR (len(windows),) for each buffer width."""
    n = scores.size
    order = np.argsort(-scores, kind="stable")  # (N,) descending
    desc = scores[order]
    ranks = np.arange(n) if n_thresholds is None else np.linspace(0, n - 1, n_thresholds)
    thresholds = desc[ranks.astype(np.int64)]  # (K,) non-increasing
    n_pred = n - np.searchsorted(desc[::-1], thresholds, side="left")  # (K,) #(score >= t)
    starts, ends = _segments(y)
    n_true = float(y.sum())
    true_hits = np.cumsum(y[order])[n_pred - 1]  # (K,) flagged true points
    aps = np.empty(windows.size)
    for i, window in enumerate(windows):
        soft = _soft_labels(y, starts, ends, int(window))  # (N,)
        tp = np.cumsum(soft[order])[n_pred - 1]  # (K,)
        p_new = n_true + (tp - true_hits) / 2.0  # (P + P + flagged buffer mass) / 2
        recall = np.minimum(tp / p_new, 1.0)
        seg_max = _buffered_segment_max(scores, starts, ends, int(window) // 2)  # (G,)
        existence = (seg_max[:, None] >= thresholds[None, :]).mean(axis=0)  # (K,)
        tpr = np.concatenate(([0.0], recall * existence))  # (K+1,)
        aps[i] = np.dot(np.diff(tpr), tp / n_pred)  # step sum: ΔTPR × precision
    return aps


def _prepare(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray] | None:
    """Validated float64 scores and bool labels, or None (with a warning) without anomalies."""
    s, y = as_scores(scores), as_labels(labels)
    check_scores(s, y)
    if not bool(y.any()):
        warnings.warn("no anomalies in labels: range PR metrics are NaN", UserWarning, stacklevel=3)
        return None
    return s.numpy(), y.numpy()


def range_pr_auc(
    scores: ArrayLike, labels: ArrayLike, window: int = 0, n_thresholds: int | None = 250
) -> float:
    """Range-AUC-PR for one buffer width ℓ = `window` (NaN without anomalies).

    `n_thresholds=None` uses every score as a threshold (exact curve).
    """
    prepared = _prepare(scores, labels)
    if prepared is None:
        return math.nan
    return float(_range_ap_per_window(*prepared, np.array([int(window)]), n_thresholds)[0])


def vus_pr(
    scores: ArrayLike, labels: ArrayLike, max_window: int = 100, n_thresholds: int | None = 250
) -> float:
    """VUS-PR: mean Range-AUC-PR over buffer widths ℓ = 0..max_window (NaN without anomalies)."""
    if int(max_window) < 0:
        raise ValueError(f"max_window must be >= 0, got {max_window}")
    prepared = _prepare(scores, labels)
    if prepared is None:
        return math.nan
    windows = np.arange(int(max_window) + 1)
    return float(_range_ap_per_window(*prepared, windows, n_thresholds).mean())
