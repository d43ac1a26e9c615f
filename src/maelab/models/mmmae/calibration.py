"""Series calibration fitted on validation (`model.calibration`): a stretch about the climatology,
then a shrinkage toward interpolation.

Stretch (`series_stretch`, listed series only): on a hidden day the model's value becomes

    climatology + k · (model − climatology)              (normalised units: log space for flows)

with the daily climatology of the training period and one k per series from `STRETCH_GRID`,
chosen to maximise the median KGE over catchments of the calibrated series (stretched, then
shrunk with weights refitted for that k) on the validation windows' hidden valid days. A model
fitted to squared errors damps its spread toward its correlation (KGE's α < 1); k > 1 widens it.
k = 1 keeps the model. `above_only`: only days where the model is above the climatology are
stretched (`series_stretch_side: above`). `with_visible_only`: only windows with a visible valid
day are stretched (`series_stretch_windows: with_visible`), as only they are shrunk.

Shrinkage (`series_shrink`): on a hidden series day the prediction becomes

    interpolation + s_b · (model − interpolation)        (normalised units: log space for flows)

where interpolation is linear across the hidden days from the window's visible valid days (the
series prior and the `interpolation_log` baseline) and b is the bin of the day's distance to the
nearest visible valid day (`DISTANCE_BINS`). s_b ∈ [0, 1] is chosen on a grid to minimise
Σ_c SSE_c / SST_c over the validation windows' hidden valid days in physical units (1 − the mean
NSE over catchments c; SST_c over all of c's hidden days, so the bins are fitted one by one).
s_b = 1 keeps the model, 0 gives interpolation. Windows with no visible valid day are unchanged.

Blend (`cross_modal_blend: regression`, the cross_modal series only): on the hidden days of a
window with no visible valid day of the series (the cross-modal tests), the value becomes

    (1 − w) · model + w · trees                           (physical units)

with the `regression` baseline's trees (maelab.models.mmmae.regression) and w from `BLEND_GRID`,
chosen to maximise the median NSE over catchments on such validation windows, one w for windows
whose forcing keeps its masks and one for windows whose forcing is visible on every day. In
physical units because NSE is scored there and the trees are fitted there. w = 0 keeps the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from maelab.models.mmmae.priors import nearest_days, normalise
from maelab.scoring.hydro_metrics import denormalise, interpolate_days, kge, nse

DISTANCE_BINS = (1, 2, 3, 5)  # lower edges in days: 1, 2, 3–4, ≥ 5
DISTANCE_LABELS = ("1", "2", "3-4", ">=5")  # the bins as metrics.json names them
SHRINK_GRID = torch.linspace(0, 1, 21, dtype=torch.float64)
STRETCH_GRID = torch.arange(10, 51, dtype=torch.float64) / 20  # 0.50, 0.55, …, 2.50 (1 exact)
BLEND_GRID = SHRINK_GRID  # w: 0, 0.05, …, 1


def days_to_visible(known: torch.Tensor) -> torch.Tensor:
    """known (B, T) bool → (B, T) days to the nearest known day (0 on one; T where none)."""
    t = known.shape[1]
    prev, nxt = (d[..., 0] for d in nearest_days(known[..., None]))
    now = torch.arange(t, device=known.device)
    since = torch.where(prev >= 0, now - prev, t)
    until = torch.where(nxt < t, nxt - now, t)
    return torch.minimum(since, until)


def distance_bin(distance: torch.Tensor) -> torch.Tensor:
    """Days to the nearest visible day → index of its `DISTANCE_BINS` bin (0 for distance ≤ 1)."""
    edges = torch.tensor(DISTANCE_BINS[1:], device=distance.device)
    return torch.bucketize(distance, edges, right=True)


def in_windows_with_visible(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """hidden, valid (B, T) bool → (B, T) the hidden days of windows with a visible valid day."""
    return hidden & (valid & ~hidden).any(1, keepdim=True)


def shrink_series(pred: torch.Tensor, x: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """pred, x (B, T) normalised, valid / hidden (B, T) bool, weights (len(DISTANCE_BINS),), or
    (B, len(DISTANCE_BINS)) one set per window → (B, T): hidden days pulled toward interpolation
    by their bin's weight; visible days and windows with no visible valid day unchanged."""
    known = valid & ~hidden
    prior = interpolate_days(x, known).to(pred.dtype)  # (B, T), NaN where none known
    bins = distance_bin(days_to_visible(known))  # (B, T)
    weights = weights.to(pred.device, pred.dtype)
    s = weights[bins] if weights.dim() == 1 else weights.gather(1, bins)  # (B, T)
    pulled = torch.lerp(prior, pred, s)  # exact at s = 0 and s = 1
    return torch.where(in_windows_with_visible(hidden, valid), pulled, pred)


def fit_shrinkage(pred: torch.Tensor, x: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor,
                  catchment: torch.Tensor, stats: Mapping[str, Any]) -> torch.Tensor:
    """(len(DISTANCE_BINS),) float64 weights s_b minimising Σ_c SSE_c / SST_c (module docstring).

    pred, x (N, T) normalised validation windows, valid / hidden (N, T) bool, catchment (N,).
    A bin with no scored day keeps 1 (the model)."""
    known = valid & ~hidden
    prior = interpolate_days(x, known)  # (N, T) float64
    scored = in_windows_with_visible(hidden, valid) & valid
    weights = torch.ones(len(DISTANCE_BINS), dtype=torch.float64)
    if not bool(scored.any()):
        return weights
    c = catchment[:, None].expand_as(x)[scored]
    true = denormalise(x[scored], stats)
    n_c = int(c.max()) + 1
    count = torch.bincount(c, minlength=n_c).double()
    mean = torch.bincount(c, true, minlength=n_c) / count.clamp_min(1)
    sst = torch.bincount(c, (true - mean[c]) ** 2, minlength=n_c)
    inv_sst = torch.where(sst > 0, 1 / sst.clamp_min(1e-300), 0.0)  # constant catchments: no say
    p, m = prior[scored], pred[scored].double()
    bins = distance_bin(days_to_visible(known)[scored])
    for b in range(len(DISTANCE_BINS)):
        k = bins == b
        if not bool(k.any()):
            continue
        trial = denormalise(torch.lerp(p[k], m[k], SHRINK_GRID[:, None]), stats)  # (G, n)
        sse = ((trial - true[k]) ** 2) @ inv_sst[c[k]]  # (G,) Σ_c SSE_c / SST_c
        weights[b] = SHRINK_GRID[int(torch.argmin(sse))]
    return weights


def stretch_series(pred: torch.Tensor, clim: torch.Tensor, hidden: torch.Tensor,
                   k: float | torch.Tensor, above_only: bool = False,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """pred, clim (B, T) normalised, hidden (B, T) bool, k a float or (B, 1) → (B, T): hidden days
    (with `above_only`, those above the climatology; with `valid` (B, T) bool, those of windows
    with a visible valid day) stretched about the climatology by k (clim + k · (pred − clim));
    the other days unchanged."""
    clim = clim.to(pred.dtype)
    stretched = hidden if valid is None else in_windows_with_visible(hidden, valid)
    if above_only:
        stretched = stretched & (pred > clim)
    return torch.where(stretched, torch.lerp(clim, pred, k), pred)


def _median_score(score: Callable[[np.ndarray, np.ndarray], float], sim: torch.Tensor,
                  obs: torch.Tensor, catchment: torch.Tensor) -> float:
    sim, obs, catchment = sim.numpy(), obs.numpy(), catchment.numpy()
    scores = [score(sim[catchment == c], obs[catchment == c]) for c in np.unique(catchment)]
    return float(np.nanmedian(scores)) if np.isfinite(scores).any() else float("nan")


def median_kge(sim: torch.Tensor, obs: torch.Tensor, catchment: torch.Tensor) -> float:
    """sim, obs (n,) physical units of the scored days, catchment (n,) → the median KGE over
    catchments (those with an undefined KGE left out; NaN if none)."""
    return _median_score(kge, sim, obs, catchment)


def median_nse(sim: torch.Tensor, obs: torch.Tensor, catchment: torch.Tensor) -> float:
    """The same with the NSE."""
    return _median_score(nse, sim, obs, catchment)


def fit_stretch(pred: torch.Tensor, clim: torch.Tensor, x: torch.Tensor, valid: torch.Tensor,
                hidden: torch.Tensor, catchment: torch.Tensor, stats: Mapping[str, Any],
                shrink: bool = True, above_only: bool = False, with_visible_only: bool = False
                ) -> tuple[float, torch.Tensor]:
    """(k, weights): the `STRETCH_GRID` k with the highest median KGE (module docstring; ties:
    the smallest k) and the shrinkage weights fitted for it (all 1 when not `shrink`).

    pred, clim, x (N, T) normalised validation windows, valid / hidden (N, T) bool, catchment (N,).
    No KGE defined for any k (no scored day, constant flows): k = 1."""
    scored = hidden & valid
    only_in = valid if with_visible_only else None  # stretch windows with a visible day only
    pred, clim = pred.double(), clim.double()
    true = denormalise(x[scored], stats)
    days = catchment[:, None].expand_as(x)[scored]  # (n,) the scored days' catchments
    ones = torch.ones(len(DISTANCE_BINS), dtype=torch.float64)
    fitted = {}  # k → (median KGE, weights)
    for k in STRETCH_GRID.tolist():
        stretched = stretch_series(pred, clim, hidden, k, above_only, only_in)
        weights = fit_shrinkage(stretched, x, valid, hidden, catchment, stats) if shrink else ones
        out = shrink_series(stretched, x, valid, hidden, weights) if shrink else stretched
        fitted[k] = (median_kge(denormalise(out[scored], stats), true, days), weights)
    scores = {k: v[0] for k, v in fitted.items() if np.isfinite(v[0])}
    k = max(scores, key=lambda k: (scores[k], -k)) if scores else 1.0
    return k, fitted[k][1]


def in_windows_without_visible(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """hidden, valid (B, T) bool → (B, T) the hidden days of windows with no visible valid day."""
    return hidden & ~(valid & ~hidden).any(1, keepdim=True)


def blend_series(pred: torch.Tensor, other: torch.Tensor, hidden: torch.Tensor,
                 valid: torch.Tensor, w: float | torch.Tensor, stats: Mapping[str, Any]
                 ) -> torch.Tensor:
    """pred (B, T) normalised, other (B, T) physical units (the trees), hidden / valid (B, T)
    bool, w a float or (B, 1) → (B, T) normalised: the hidden days of windows with no visible
    valid day blended, (1 − w) · pred + w · other in physical units; every other day, and every
    day where w = 0, unchanged."""
    w = torch.as_tensor(w, dtype=torch.float64, device=pred.device)
    mixed = normalise(torch.lerp(denormalise(pred, stats).double(), other.to(pred.device).double(),
                                 w), stats)
    blended = in_windows_without_visible(hidden, valid) & (w > 0)
    return torch.where(blended, mixed.to(pred.dtype), pred)


def fit_blend(pred: torch.Tensor, other: torch.Tensor, x: torch.Tensor, valid: torch.Tensor,
              hidden: torch.Tensor, catchment: torch.Tensor, stats: Mapping[str, Any]) -> float:
    """The `BLEND_GRID` w with the highest median NSE over catchments (module docstring; ties:
    the smaller w) on the hidden valid days of the windows with no visible valid day.

    pred, x (N, T) normalised validation windows, other (N, T) physical units, valid / hidden
    (N, T) bool, catchment (N,). No NSE defined for any w (no such day): 0, the model."""
    scored = in_windows_without_visible(hidden, valid) & valid
    if not bool(scored.any()):
        return 0.0
    true = denormalise(x[scored], stats)
    days = catchment[:, None].expand_as(x)[scored]
    model, trees = denormalise(pred[scored], stats).double(), other[scored].double()
    scores = {w: median_nse(torch.lerp(model, trees, w), true, days) for w in BLEND_GRID.tolist()}
    scores = {w: s for w, s in scores.items() if np.isfinite(s)}
    return max(scores, key=lambda w: (scores[w], -w)) if scores else 0.0
