"""Point-level scores of a long series from sliding windows that score their last N steps.

A window of length T starting at `start` scores the region [start + T - N, start + T). With
stride N (``sliding_window_starts``) consecutive scored regions tile the series, so every point
from T - N on is scored exactly once, by the first window that contains it as a last-N step.
The first T - N points (and a tail shorter than N) stay NaN; drop them with ``scored_mask``.
"""

from __future__ import annotations

import torch

from maelab.scoring._arrays import ArrayLike, as_ints, as_scores


def sliding_window_starts(series_length: int, window_length: int, mask_last_n: int) -> torch.Tensor:
    """Window starts (W,) with stride `mask_last_n`, windows fully inside the series."""
    if not 0 < mask_last_n <= window_length <= series_length:
        raise ValueError(
            f"need 0 < mask_last_n ({mask_last_n}) <= window_length ({window_length}) "
            f"<= series_length ({series_length})"
        )
    return torch.arange(0, series_length - window_length + 1, mask_last_n)


def assemble_point_scores(
    step_scores: ArrayLike, starts: ArrayLike, window_length: int, series_length: int
) -> torch.Tensor:
    """(L,) float64 point scores from per-window per-step scores (W, N); NaN where unscored.

    Window w scores points starts[w] + T - N + j, j = 0..N-1. Raises ValueError unless the
    starts increase with stride exactly N, so no point is scored twice and none is skipped.
    """
    scores = torch.as_tensor(step_scores).detach().to("cpu", torch.float64)  # (W, N)
    if scores.ndim != 2:
        raise ValueError(f"step_scores must be (W, N), got shape {tuple(scores.shape)}")
    n_windows, n_scored = scores.shape
    s = as_ints(starts)  # (W,)
    if s.numel() != n_windows:
        raise ValueError(f"{s.numel()} starts for {n_windows} windows of step scores")
    if not 0 < n_scored <= window_length:
        raise ValueError(f"scored steps N={n_scored} must be in 1..window_length={window_length}")
    stride = torch.diff(s)
    if bool((stride != n_scored).any()):
        raise ValueError(
            f"window starts must increase with stride N={n_scored} (= mask_last_n): a smaller "
            "stride scores points twice, a larger one skips points; got strides "
            f"{sorted(set(stride.tolist()))}"
        )
    first = s + (window_length - n_scored)  # (W,) first scored point of each window
    points = (first[:, None] + torch.arange(n_scored)).reshape(-1)  # (W*N,)
    if n_windows and (int(points.min()) < 0 or int(points.max()) >= series_length):
        raise ValueError(f"scored points fall outside the series [0, {series_length})")
    out = torch.full((series_length,), float("nan"), dtype=torch.float64)
    out[points] = scores.reshape(-1)
    return out


def scored_mask(point_scores: ArrayLike) -> torch.Tensor:
    """(L,) bool, True where a point has a score (not NaN); metrics must use only these."""
    return ~torch.isnan(as_scores(point_scores))
