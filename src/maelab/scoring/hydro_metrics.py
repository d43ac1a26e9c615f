"""Hydrology reconstruction metrics and the simple baselines they are compared with: daily
climatology, linear interpolation across hidden days, spatial mean of the visible neighbouring
patches.

Metrics: RMSE, MAE; per catchment NSE, KGE (Gupta et al. 2009) with its components r, α, β (NSE
and KGE from HydroErr), NSE of log flows (log(Q + ε), ε = 1 % of the mean observed flow, as
Pushpalatha et al. 2012), and the flow-duration-curve biases of Yilmaz et al. (2008): FHV, the %
bias of the highest 2 % of flows, and FLV, the % bias of the lowest 30 % in log space (as in
NeuralHydrology: values ≤ 0 become 1e-6 before the log).

Arrays are numpy (float64 for sums); NaN marks "no value". Scores that are undefined (fewer than
two values, constant observations) come out NaN and are left out of the summaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import HydroErr as he
import numpy as np
import torch
from scipy.ndimage import uniform_filter1d

_EPOCH = np.datetime64("1970-01-01", "D")
N_DOY = 366


def row_key(name: str, method: str) -> str:
    """Name of a metrics-table row: modality (or test) and method."""
    return f"{name} / {method}"


def denormalise(x: torch.Tensor, stats: Mapping[str, Any],
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised values → physical units with {mean, std, log} (expm1 after log1p), computed in
    `dtype` (differentiable)."""
    y = x.to(dtype) * float(stats["std"]) + float(stats["mean"])
    return torch.expm1(y) if stats["log"] else y


FLOW_SCORES = ("nse", "kge", "kge_r", "kge_alpha", "kge_beta", "log_nse", "fhv", "flv")


def _pair(sim: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(sim, np.float64).ravel(), np.asarray(obs, np.float64).ravel()


def nse(sim: np.ndarray, obs: np.ndarray) -> float:
    """Nash-Sutcliffe efficiency 1 − Σ(sim − obs)² / Σ(obs − mean obs)²; NaN if undefined."""
    sim, obs = _pair(sim, obs)
    if obs.size < 2 or obs.std() <= 0:
        return float("nan")
    return float(he.nse(sim, obs))


def kge_parts(sim: np.ndarray, obs: np.ndarray) -> dict[str, float]:
    """KGE = 1 − √((r − 1)² + (α − 1)² + (β − 1)²) with r the correlation, α = σ_sim/σ_obs,
    β = μ_sim/μ_obs (Gupta et al. 2009, HydroErr `kge_2009`): {kge, kge_r, kge_alpha,
    kge_beta}, NaN where undefined."""
    sim, obs = _pair(sim, obs)
    nan = float("nan")
    if obs.size < 2 or obs.std() <= 0 or obs.mean() == 0:
        return {"kge": nan, "kge_r": nan, "kge_alpha": nan, "kge_beta": nan}
    if sim.std() <= 0:  # no correlation: KGE undefined, α and β still say something
        return {"kge": nan, "kge_r": nan, "kge_alpha": 0.0,
                "kge_beta": float(sim.mean() / obs.mean())}
    r, alpha, beta, k = he.kge_2009(sim, obs, return_all=True)
    return {"kge": float(k), "kge_r": float(r), "kge_alpha": float(alpha), "kge_beta": float(beta)}


def kge(sim: np.ndarray, obs: np.ndarray) -> float:
    """Kling-Gupta efficiency (`kge_parts`); NaN if undefined."""
    return kge_parts(sim, obs)["kge"]


def log_nse(sim: np.ndarray, obs: np.ndarray) -> float:
    """NSE of log(Q + ε), ε = 1 % of the mean observed flow (negative values count as 0)."""
    sim, obs = _pair(sim, obs)
    if obs.size < 2 or obs.mean() <= 0:
        return float("nan")
    eps = 0.01 * obs.mean()
    return nse(np.log(np.maximum(sim, 0) + eps), np.log(np.maximum(obs, 0) + eps))


def fhv(sim: np.ndarray, obs: np.ndarray, share: float = 0.02) -> float:
    """% bias of the high-flow segment of the flow duration curve: the `share` highest flows of
    each series, Σ(sim_h − obs_h) / Σ obs_h × 100; NaN when the segment is empty."""
    sim, obs = _pair(sim, obs)
    n = int(np.round(share * obs.size))
    top_o, top_s = np.sort(obs)[::-1][:n], np.sort(sim)[::-1][:n]
    if n == 0 or top_o.sum() <= 0:
        return float("nan")
    return float((top_s - top_o).sum() / top_o.sum() * 100)


def flv(sim: np.ndarray, obs: np.ndarray, share: float = 0.3) -> float:
    """% bias of the low-flow segment (the `share` lowest flows) in log space, relative to its
    minimum: −(Σ(log s − log s_min) − Σ(log o − log o_min)) / Σ(log o − log o_min) × 100; values
    ≤ 0 become 1e-6 first. NaN when the segment is empty or flat."""
    sim, obs = _pair(sim, obs)
    n = int(np.round(share * obs.size))
    if n < 2:
        return float("nan")
    low_o = np.log(np.maximum(np.sort(obs)[:n], 1e-6))
    low_s = np.log(np.maximum(np.sort(sim)[:n], 1e-6))
    qol, qsl = (low_o - low_o.min()).sum(), (low_s - low_s.min()).sum()
    if qol <= 0:
        return float("nan")
    return float(-(qsl - qol) / qol * 100)


def flow_scores(sim: np.ndarray, obs: np.ndarray) -> dict[str, float]:
    """Every score of FLOW_SCORES for one catchment's pooled values."""
    return {"nse": nse(sim, obs), **kge_parts(sim, obs), "log_nse": log_nse(sim, obs),
            "fhv": fhv(sim, obs), "flv": flv(sim, obs)}


def per_group_scores(sim: np.ndarray, obs: np.ndarray, select: np.ndarray,
                     groups: np.ndarray) -> dict[str, np.ndarray]:
    """FLOW_SCORES per group (catchment) over the selected values of all its windows.

    sim, obs, select (W, T) per window; groups (W,) the window's catchment.
    Returns {"group": (K,), <score>: (K,) …, "n": (K,)} over groups with a selection.
    """
    out: dict[str, list] = {"group": [], **{k: [] for k in FLOW_SCORES}, "n": []}
    for g in np.unique(groups):
        rows = groups == g
        s, o = sim[rows][select[rows]], obs[rows][select[rows]]
        if o.size == 0:
            continue
        out["group"].append(int(g))
        for k, v in flow_scores(s, o).items():
            out[k].append(v)
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


def daily_climatology(values: np.ndarray, doy: np.ndarray, window: int = 31,
                      block: int = 366) -> np.ndarray:
    """Mean by day of year of `values` (D, ...) (NaN ignored), smoothed by a circular running
    mean of `window` days → (366, ...). Days of the year without data take the overall mean.
    `values` (a memmap, say) is read `block` days at a time, so memory does not grow with D."""
    sums = np.zeros((N_DOY, *values.shape[1:]))  # (366, ...) float64
    counts = np.zeros_like(sums)
    for lo in range(0, len(values), block):
        chunk = np.asarray(values[lo:lo + block], np.float64)  # (≤ block, ...)
        finite = np.isfinite(chunk)
        np.add.at(sums, doy[lo:lo + block], np.where(finite, chunk, 0.0))
        np.add.at(counts, doy[lo:lo + block], finite.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        overall = sums.sum(0) / counts.sum(0)
        if window > 1:
            sums = uniform_filter1d(sums, window, axis=0, mode="wrap")
            counts = uniform_filter1d(counts, window, axis=0, mode="wrap")
        clim = sums / counts
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
