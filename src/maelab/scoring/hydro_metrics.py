"""Hydrology reconstruction metrics (RMSE, MAE, NSE, KGE) and the simple baselines they are
compared with: daily climatology, linear interpolation across hidden days, spatial mean of the
visible neighbouring patches.

Arrays are numpy (float64 for sums); NaN marks "no value". Scores that are undefined (fewer than
two values, constant observations) come out NaN and are left out of the summaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.ndimage import uniform_filter1d

_EPOCH = np.datetime64("1970-01-01", "D")
N_DOY = 366


def row_key(name: str, method: str) -> str:
    """Name of a metrics-table row: modality (or test) and method."""
    return f"{name} / {method}"


def denormalise(x: torch.Tensor, stats: Mapping[str, Any]) -> torch.Tensor:
    """Normalised values → physical units with {mean, std, log} (expm1 after log1p)."""
    y = x.double() * float(stats["std"]) + float(stats["mean"])
    return torch.expm1(y) if stats["log"] else y


def nse(sim: np.ndarray, obs: np.ndarray) -> float:
    """Nash-Sutcliffe efficiency 1 − Σ(sim − obs)² / Σ(obs − mean obs)²; NaN if undefined."""
    sim, obs = np.asarray(sim, np.float64), np.asarray(obs, np.float64)
    denom = ((obs - obs.mean()) ** 2).sum() if obs.size else 0.0
    if obs.size < 2 or denom <= 0:
        return float("nan")
    return float(1.0 - ((sim - obs) ** 2).sum() / denom)


def kge(sim: np.ndarray, obs: np.ndarray) -> float:
    """Kling-Gupta efficiency 1 − √((r − 1)² + (α − 1)² + (β − 1)²), α = σ_sim/σ_obs,
    β = μ_sim/μ_obs (Gupta et al. 2009); NaN if undefined."""
    sim, obs = np.asarray(sim, np.float64), np.asarray(obs, np.float64)
    if obs.size < 2 or obs.std() <= 0 or sim.std() <= 0 or obs.mean() == 0:
        return float("nan")
    r = np.corrcoef(sim, obs)[0, 1]
    alpha, beta = sim.std() / obs.std(), sim.mean() / obs.mean()
    return float(1.0 - np.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2))


def per_group_scores(sim: np.ndarray, obs: np.ndarray, select: np.ndarray,
                     groups: np.ndarray) -> dict[str, np.ndarray]:
    """NSE and KGE per group (catchment) over the selected values of all its windows.

    sim, obs, select (W, T) per window; groups (W,) the window's catchment.
    Returns {"group": (K,), "nse": (K,), "kge": (K,), "n": (K,)} over groups with a selection.
    """
    out: dict[str, list] = {"group": [], "nse": [], "kge": [], "n": []}
    for g in np.unique(groups):
        rows = groups == g
        s, o = sim[rows][select[rows]], obs[rows][select[rows]]
        if o.size == 0:
            continue
        out["group"].append(int(g))
        out["nse"].append(nse(s, o))
        out["kge"].append(kge(s, o))
        out["n"].append(int(o.size))
    return {k: np.asarray(v) for k, v in out.items()}


def distribution(values: np.ndarray) -> dict[str, float]:
    """Median, mean, quantiles (10, 25, 75, 90 %), min, max and count of the finite values."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"median": float("nan"), "n": 0}
    q = np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"median": float(q[2]), "mean": float(v.mean()), "p10": float(q[0]), "p25": float(q[1]),
            "p75": float(q[3]), "p90": float(q[4]), "min": float(v.min()), "max": float(v.max()),
            "n": int(v.size)}


class ErrorSums:
    """Running RMSE / MAE over selected positions (pred and true in the same units)."""

    def __init__(self) -> None:
        self.sse, self.sae, self.n = 0.0, 0.0, 0

    def add(self, pred: torch.Tensor, true: torch.Tensor, select: torch.Tensor) -> None:
        """Accumulate pred − true over `select` (the three broadcast together)."""
        pred, true, select = torch.broadcast_tensors(pred.double(), true.double(), select)
        err = (pred - true)[select]
        self.sse += float((err ** 2).sum())
        self.sae += float(err.abs().sum())
        self.n += int(err.numel())

    def result(self) -> dict[str, float]:
        if self.n == 0:
            return {"rmse": float("nan"), "mae": float("nan"), "n": 0}
        return {"rmse": (self.sse / self.n) ** 0.5, "mae": self.sae / self.n, "n": self.n}


def day_of_year(days: np.ndarray | torch.Tensor) -> np.ndarray:
    """Days since 1970-01-01 (any shape) → day of the calendar year, 0 … 365."""
    d = _EPOCH + np.asarray(days, dtype=np.int64).astype("timedelta64[D]")
    return (d - d.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)


def daily_climatology(values: np.ndarray, doy: np.ndarray, window: int = 31) -> np.ndarray:
    """Mean by day of year of `values` (D, ...) (NaN ignored), smoothed by a circular running
    mean of `window` days → (366, ...). Days of the year without data take the overall mean."""
    values = np.asarray(values, np.float64)
    finite = np.isfinite(values)
    sums = np.zeros((N_DOY, *values.shape[1:]))
    counts = np.zeros_like(sums)
    np.add.at(sums, doy, np.where(finite, values, 0.0))
    np.add.at(counts, doy, finite.astype(np.float64))
    if window > 1:
        sums = uniform_filter1d(sums, window, axis=0, mode="wrap")
        counts = uniform_filter1d(counts, window, axis=0, mode="wrap")
    with np.errstate(invalid="ignore", divide="ignore"):
        clim = sums / counts
        overall = np.where(finite, values, 0.0).sum(0) / finite.sum(0)
    return np.where(counts > 1e-9, clim, overall)


def interpolate_days(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Linear interpolation along the last axis (days) from the `known` values; before the first
    and after the last known day the nearest known value is held. Rows with no known value: NaN.
    x, known (..., T) → (..., T)."""
    t = x.shape[-1]
    flat_x, flat_k = x.reshape(-1, t).double(), known.reshape(-1, t)
    days = torch.arange(t, device=x.device).expand_as(flat_k)
    big = t + 1
    prev = torch.where(flat_k, days, -big).cummax(-1).values  # (R, T) last known day ≤ t
    nxt = torch.where(flat_k, days, 2 * big).flip(-1).cummin(-1).values.flip(-1)  # first ≥ t
    has_prev, has_next = prev >= 0, nxt < t
    p, n = prev.clamp(0, t - 1), nxt.clamp(0, t - 1)
    xp, xn = flat_x.gather(1, p), flat_x.gather(1, n)
    span = (n - p).clamp_min(1).double()
    w = ((days - p).double() / span).clamp(0, 1)
    out = torch.where(has_prev & has_next, xp + w * (xn - xp), torch.where(has_prev, xp, xn))
    out = torch.where(has_prev | has_next, out, torch.full_like(out, float("nan")))
    return out.reshape(x.shape)


def neighbour_mean(values: torch.Tensor, known: torch.Tensor, rows: Sequence[int],
                   cols: Sequence[int]) -> torch.Tensor:
    """Spatial mean of the known patches nearest to each patch: the ring of radius r = 1, 2, …
    (Chebyshev distance on the patch grid, the patch itself excluded) with the smallest r that
    holds a known patch. values, known (..., P) patch means → (..., P); NaN if none is known."""
    r, c = torch.as_tensor(rows), torch.as_tensor(cols)
    dist = torch.maximum((r[:, None] - r[None]).abs(), (c[:, None] - c[None]).abs())  # (P, P)
    v = torch.where(known, values.double(), torch.zeros((), dtype=torch.float64))
    k = known.double()
    out = torch.full_like(v, float("nan"))
    for radius in range(1, int(dist.max()) + 1):
        a = ((dist <= radius) & (dist > 0)).double().to(v.device)  # (P, P)
        num, cnt = v @ a.T, k @ a.T
        fill = out.isnan() & (cnt > 0)
        out = torch.where(fill, num / cnt.clamp_min(1), out)
        if not bool(out.isnan().any()):
            break
    return out
