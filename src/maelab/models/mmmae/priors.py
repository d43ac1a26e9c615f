"""Baseline priors of MM-MAE's decoder (pure functions on visible values; model units).

A prior is what a baseline predicts at every place from the same visible information the model
gets; the factorised decoder takes the priors as inputs and predicts per hidden token a weighted
sum of them plus a correction (`maelab.models.mmmae.factorised`). Hidden values are never read:
every prior is computed from the visible valid values only (and climatology from the training
period). The baselines of the test table (`maelab.models.mmmae.evaluation`) are the same
functions in physical units.

Grids (B, T, P, p²) normalised:
    neighbour_mean   same day, mean of the visible patches in the nearest ring (per patch)
    interpolation    per cell, linear in time between the visible days of its patch
    climatology      per cell, the training period's daily climatology (day of year)
Series (B, T) normalised (log1p first where the data says so):
    interpolation    linear in time between the visible valid days
    climatology      per catchment, the training period's daily climatology
    regression       the cross-modal series only: gradient-boosted trees on the visible forcing
                     series (maelab.models.mmmae.regression.RegressionPrior, given by the module)
Donor catchments (`data.donors`): a series' value on a day from the visible valid days of its
most correlated catchments (`donor_estimate`), and the series filled with it where its own day is
hidden (`donor_filled`).
Missing values fall back along the list (interpolation → neighbour mean → climatology → 0 for
grids; interpolation → climatology → 0 for series), so every prior is finite.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from maelab.models.mmmae.config import GRID_PRIORS, SERIES_PRIORS
from maelab.scoring.hydro_metrics import day_of_year, interpolate_days, neighbour_mean

__all__ = ["GRID_PRIORS", "SERIES_PRIORS", "doy_index", "grid_priors", "nearest_days", "normalise",
           "normalised_climatology", "series_priors", "patch_at_location", "value_at_patch",
           "antecedent", "gap_features", "donor_estimate", "donor_filled"]


def normalise(x: torch.Tensor, stats: Mapping[str, Any]) -> torch.Tensor:
    """Physical units → model units with {mean, std, log} (log1p first); inverse of
    `maelab.scoring.hydro_metrics.denormalise`."""
    x = x.double()
    if stats["log"]:
        x = torch.log1p(x.clamp_min(0))
    return ((x - float(stats["mean"])) / float(stats["std"])).float()


def doy_index(time: torch.Tensor) -> torch.Tensor:
    """(B, T) days since 1970-01-01 → (B, T) int64 day of the year on the same device."""
    return torch.from_numpy(day_of_year(time.cpu())).to(time.device)


def _or(x: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    return torch.where(x.isfinite(), x, fallback)


def nearest_days(known: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """known (B, T, P) → (B, T, P) last known day ≤ t (−1 if none) and first known day ≥ t
    (T if none) of each column."""
    t = known.shape[1]
    days = torch.arange(t, device=known.device).view(1, t, 1)
    prev = torch.where(known, days, -1).cummax(1).values
    nxt = torch.where(known, days, t).flip(1).cummin(1).values.flip(1)
    return prev, nxt


def gap_features(known: torch.Tensor, scale: float = 30.0) -> torch.Tensor:
    """known (B, T, U) → (B, T, U, 3): days since the last known day and until the next one
    (/ scale, capped at 1; 1 where there is none) and whether any day is known: how far the
    interpolation prior has to reach (a decoder input)."""
    t = known.shape[1]
    prev, nxt = nearest_days(known)
    now = torch.arange(t, device=known.device).view(1, t, 1)
    since = torch.where(prev >= 0, (now - prev) / scale, 1.0).clamp_max(1.0)
    until = torch.where(nxt < t, (nxt - now) / scale, 1.0).clamp_max(1.0)
    return torch.stack([since, until, known.any(1, keepdim=True).expand_as(since).float()], -1)


def grid_priors(names: Sequence[str], x: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor,
                slots: torch.Tensor, rows: Sequence[int], cols: Sequence[int],
                clim: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, h, K, p²) finite priors `names` of one grid at the patches `slots` of each day,
    from its visible valid cells.

    x, valid (B, T, P, p²); hidden (B, T, P) True = hidden patch-day; slots (B, T, h) the
    patches to predict each day; clim (B, T, h, p²) their climatology on each window day (needed
    for "climatology"; NaN off land). `interpolation` is linear per cell between the nearest
    visible days of the patch before and after (the one there is at the window's edges).
    """
    b, t, n_patches = hidden.shape
    r = torch.arange(b, device=x.device).view(b, 1, 1)
    zero = torch.zeros((), dtype=torch.float32, device=x.device)
    base = zero if clim is None else _or(clim.float(), zero)  # last fallback
    out: dict[str, torch.Tensor] = {}
    if "neighbour_mean" in names or "interpolation" in names:
        n = n_patches - int(hidden[0, 0].sum())  # visible patches per day (the same every day)
        vis = (~hidden).to(torch.int8).argsort(dim=-1, stable=True, descending=True)[..., :n]
        day = torch.arange(t, device=x.device).view(1, t, 1)
        v = valid[r, day, vis]  # (B, T, n, p²) the visible patches only
        count = v.sum(-1)
        mean = torch.where(v, x[r, day, vis], zero).sum(-1) / count.clamp_min(1)  # (B, T, n)
        means = torch.zeros(hidden.shape, device=x.device).scatter(2, vis, mean.float())
        known = torch.zeros_like(hidden).scatter(2, vis, count > 0)  # (B, T, P)
        near = neighbour_mean(means, known, rows, cols).float().gather(2, slots)
        out["neighbour_mean"] = _or(near[..., None], base).expand(*slots.shape, x.shape[-1])
    if "interpolation" in names:
        prev, nxt = (d.gather(2, slots) for d in nearest_days(~hidden))  # (B, T, h)
        ends = []
        for day in (prev, nxt):  # visible days of the patch (hidden there is False)
            d = day.clamp(0, t - 1)
            ok = valid[r, d, slots] & ((day >= 0) & (day < t))[..., None]  # (B, T, h, p²)
            ends.append(torch.where(ok, x[r, d, slots], float("nan")))
        now = torch.arange(t, device=x.device).view(1, t, 1)
        w = ((now - prev) / (nxt - prev).clamp_min(1)).clamp(0, 1)[..., None].float()
        both = ends[0] + w * (ends[1] - ends[0])
        one = _or(ends[0], ends[1])
        out["interpolation"] = _or(_or(both, one), out["neighbour_mean"])
    if "climatology" in names:
        if clim is None:
            raise ValueError("the climatology prior needs the climatology (set_climatology)")
        out["climatology"] = base.expand(*slots.shape, x.shape[-1])
    return torch.stack([out[n] for n in names], 3)


def patch_at_location(location: torch.Tensor, place: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid patch nearest to each catchment: location (B, 2) patch-grid (row, col), NaN =
    unknown; place (P, 2) float (row, col) of the valid patches → patch (B,) int64 and known (B,)
    bool (False where the location is unknown; patch 0 there)."""
    loc = location.float()
    known = loc.isfinite().all(-1)
    return torch.cdist(loc.nan_to_num(0.0), place.to(loc)).argmin(-1), known


def value_at_patch(x: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor,
                   patch: torch.Tensor, rows: Sequence[int], cols: Sequence[int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A grid's daily value at one patch per window from visible cells only: the mean of the
    patch's valid cells on the days it is visible, else the neighbour mean (else 0).

    x, valid (B, T, P, p²); hidden (B, T, P); patch (B,) → value (B, T), seen (B, T) bool.
    """
    b, t = hidden.shape[:2]
    at = patch.view(b, 1, 1).expand(b, t, 1)  # (B, T, 1)
    near = grid_priors(["neighbour_mean"], x, valid, hidden, at, rows, cols)[..., 0, 0, 0]
    r = torch.arange(b, device=x.device).view(b, 1, 1)
    day = torch.arange(t, device=x.device).view(1, t, 1)
    v = valid[r, day, at][:, :, 0] & ~hidden.gather(2, at)  # (B, T, p²) visible valid cells
    own = torch.where(v, x[r, day, at][:, :, 0], 0.0).sum(-1) / v.sum(-1).clamp_min(1)
    seen = v.any(-1)
    return torch.where(seen, own.float(), near), seen


def antecedent(x: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Causal exponentially weighted means of daily values (antecedent indices, as hydrology's
    antecedent precipitation index): x (B, T, C) → (B, T, C · len(scales)); day t averages days
    ≤ t of the window with weights exp(−lag / scale), normalised over the days there are."""
    b, t, c = x.shape
    lag = torch.arange(t, device=x.device, dtype=torch.float32)
    w = torch.exp(-lag[None] / torch.as_tensor(scales, dtype=torch.float32, device=x.device)[:, None])
    kernel = w.flip(-1)[:, None]  # (S, 1, T) conv1d weights, lag 0 last
    flat = x.permute(0, 2, 1).reshape(b * c, 1, t)
    num = torch.nn.functional.conv1d(torch.nn.functional.pad(flat, (t - 1, 0)), kernel)  # (B·C, S, T)
    den = w.cumsum(-1)  # (S, T): the weights of days 0 … t
    return (num / den).reshape(b, c, len(scales), t).permute(0, 3, 1, 2).reshape(b, t, -1)


def donor_estimate(values: torch.Tensor, seen: torch.Tensor, weight: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A series from its donor catchments on each day: the weighted mean of the donors' visible
    valid values. values, seen (B, K, T) (hidden or invalid values are never read); weight (B, K)
    ≥ 0 (the donors' training correlation) → (B, T) estimate (0 where no donor is seen) and
    (B, T) bool whether one is."""
    w = torch.where(seen, weight.float()[..., None], 0.0)  # (B, K, T)
    total = w.sum(1)  # (B, T)
    has = total > 0
    num = (w * torch.where(seen, values.float(), 0.0)).sum(1)
    return torch.where(has, num / torch.where(has, total, 1.0), 0.0), has


def donor_filled(x: torch.Tensor, seen: torch.Tensor, estimate: torch.Tensor, has: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) the series' own value where it is seen, else the donors' estimate where there is
    one (0 elsewhere), and (B, T) bool where either is."""
    return torch.where(seen, x.float(), torch.where(has, estimate, 0.0)), seen | has


def series_priors(names: Sequence[str], x: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor,
                  clim: torch.Tensor | None = None, regression: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """(B, T, K) finite priors `names` of one series from its visible valid days.

    x, valid, hidden (B, T); clim (B, T) the catchment's climatology on each window day;
    regression (B, T) the trees' prediction from the visible forcing (`regression`; the series
    it is not given for fall back to climatology).
    """
    zero = torch.zeros((), dtype=torch.float32, device=x.device)
    base = zero if clim is None else _or(clim.float(), zero)
    out: dict[str, torch.Tensor] = {}
    if "interpolation" in names:
        out["interpolation"] = _or(interpolate_days(x, valid & ~hidden).float(), base)
    if "climatology" in names:
        if clim is None:
            raise ValueError("the climatology prior needs the climatology (set_climatology)")
        out["climatology"] = base.expand_as(x)
    if "regression" in names:
        out["regression"] = base.expand_as(x) if regression is None else \
            _or(regression.float(), base)
    return torch.stack([out[n] for n in names], -1)


def normalised_climatology(clim: Mapping[str, torch.Tensor], stats: Mapping[str, Mapping[str, Any]]
                           ) -> dict[str, torch.Tensor]:
    """The baseline climatologies (physical units: grids (366, P, p²), series (366, C), from
    `evaluation.climatologies`) in model units, float32."""
    return {k: normalise(v, stats[k]) for k, v in clim.items()}
