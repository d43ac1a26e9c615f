"""Series shrinkage toward interpolation, fitted on validation (`model.calibration`).

On a hidden series day the prediction becomes

    interpolation + s_b · (model − interpolation)        (normalised units: log space for flows)

where interpolation is linear across the hidden days from the window's visible valid days (the
series prior and the `interpolation_log` baseline) and b is the bin of the day's distance to the
nearest visible valid day (`DISTANCE_BINS`). s_b ∈ [0, 1] is chosen on a grid to minimise
Σ_c SSE_c / SST_c over the validation windows' hidden valid days in physical units (1 − the mean
NSE over catchments c; SST_c over all of c's hidden days, so the bins are fitted one by one).
s_b = 1 keeps the model, 0 gives interpolation. Windows with no visible valid day are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from maelab.models.mmmae.priors import nearest_days
from maelab.scoring.hydro_metrics import denormalise, interpolate_days

DISTANCE_BINS = (1, 2, 3, 5)  # lower edges in days: 1, 2, 3–4, ≥ 5
DISTANCE_LABELS = ("1", "2", "3-4", ">=5")  # the bins as metrics.json names them
SHRINK_GRID = torch.linspace(0, 1, 21, dtype=torch.float64)


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
    return torch.where(hidden & known.any(1, keepdim=True), pulled, pred)


def fit_shrinkage(pred: torch.Tensor, x: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor,
                  catchment: torch.Tensor, stats: Mapping[str, Any]) -> torch.Tensor:
    """(len(DISTANCE_BINS),) float64 weights s_b minimising Σ_c SSE_c / SST_c (module docstring).

    pred, x (N, T) normalised validation windows, valid / hidden (N, T) bool, catchment (N,).
    A bin with no scored day keeps 1 (the model)."""
    known = valid & ~hidden
    prior = interpolate_days(x, known)  # (N, T) float64
    scored = hidden & valid & known.any(1, keepdim=True)
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
