"""MM-MAE loss: per-modality MSE on hidden & valid positions, weighted mean over modalities.

A series may instead be scored by NSE* (Kratzert et al. 2019, HESS 23:5089): the squared error of
physical values (de-normalised, expm1 after log1p) over (σ_c + ε)², σ_c its catchment's standard
deviation in the training period. Its mean is 1 − NSE averaged over catchments, which the test's
median NSE and KGE read in physical units, where the log-space MSE under-weighs peaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from maelab.scoring.hydro_metrics import denormalise

EPS = 1e-6
NSE_STAR_EPS = 0.1  # ε of NSE*, in the series' physical units (Kratzert et al. 2019)
NSE_STAR_CLAMP = 8.0  # |normalised value| bound before expm1 in NSE*


def patch_stats(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (+eps) over the valid pixels of each patch: x, valid (..., p²) → (..., 1)."""
    v = valid.to(x.dtype)
    n = v.sum(-1, keepdim=True).clamp_min(1)
    x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    mean = (x * v).sum(-1, keepdim=True) / n
    var = (((x - mean) * v) ** 2).sum(-1, keepdim=True) / n
    return mean, (var + EPS).sqrt()


def selected_mse(pred: torch.Tensor, target: torch.Tensor, select: torch.Tensor) -> torch.Tensor | None:
    """Mean squared error over the `select`ed places (NaN targets elsewhere are harmless);
    None when nothing is selected."""
    n = int(select.sum())
    if n == 0:
        return None
    zero = torch.zeros((), device=pred.device)
    target = torch.where(select, target.float(), zero)  # NaN-free: no NaN gradient either
    return torch.where(select, (pred.float() - target) ** 2, zero).sum() / n


def _physical(pred: torch.Tensor, target: torch.Tensor, select: torch.Tensor,
              stats: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 physical values of pred and target (B, T); target 0 where not selected (NaN-free),
    normalised values clamped so that a wild prediction cannot overflow."""
    target = torch.where(select, target.float(), torch.zeros((), device=pred.device))
    return (denormalise(pred.float().clamp(-NSE_STAR_CLAMP, NSE_STAR_CLAMP), stats, torch.float32),
            denormalise(target.clamp(-NSE_STAR_CLAMP, NSE_STAR_CLAMP), stats, torch.float32))


def nse_star(pred: torch.Tensor, target: torch.Tensor, select: torch.Tensor,
             stats: Mapping[str, Any], sigma: torch.Tensor,
             variability: float = 0.0) -> torch.Tensor | None:
    """Mean over the `select`ed days of (pred − target)² / (σ + ε)² in physical units:
    pred, target, select (B, T); sigma (B,) the window's catchment training std. None when
    nothing is selected. `variability` > 0 adds that weight × `variability_error` of the same
    physical values."""
    n = int(select.sum())
    if n == 0:
        return None
    phys_pred, phys_target = _physical(pred, target, select, stats)
    err = (phys_pred - phys_target) ** 2 / (sigma.float()[:, None] + NSE_STAR_EPS) ** 2
    loss = torch.where(select, err, torch.zeros((), device=pred.device)).sum() / n
    spread = variability_error(phys_pred, phys_target, select, sigma) if variability else None
    return loss if spread is None else loss + variability * spread


def variability_error(phys_pred: torch.Tensor, phys_target: torch.Tensor, select: torch.Tensor,
                      sigma: torch.Tensor) -> torch.Tensor | None:
    """Mean over windows of (s_pred − s_obs)² / (σ + ε)²: s the spread (std) of each window's
    `select`ed days of the physical values (B, T) (KGE's variability term, in NSE*'s scale);
    windows with fewer than 2 selected days are left out. None when no window has 2."""
    n = select.sum(1)  # (B,)
    keep = n >= 2
    if not bool(keep.any()):
        return None
    v, count = select.float(), n.clamp_min(1).float()

    def spread(x: torch.Tensor) -> torch.Tensor:  # (B, T) → (B,)
        mean = (x * v).sum(1) / count
        return ((((x - mean[:, None]) * v) ** 2).sum(1) / count + EPS).sqrt()

    err = (spread(phys_pred) - spread(phys_target)) ** 2 / (sigma.float() + NSE_STAR_EPS) ** 2
    return err[keep].mean()


def mmmae_loss(
    out: Mapping[str, Any], batch: Mapping[str, Any], weights: Mapping[str, float],
    norm_pix_loss: bool = False,
    nse_star_series: Mapping[str, tuple[Mapping[str, Any], torch.Tensor]] | None = None,
    variability: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """{"loss", <modality>: MSE} on hidden & valid positions (grids: land cells with finite
    values; series: finite days). `loss` = weighted mean of the modality losses present in the
    batch (weight 1 unless given); modalities without hidden valid positions are skipped.
    `norm_pix_loss`: grid targets normalised per patch and day over its valid cells (MAE).
    Grid predictions are (B, T, P, p²), or (B, T, h, p²) at the patches `out["grid_slots"]`.
    `nse_star_series`: {series: (its normalisation stats, σ (B,) of each window's catchment)}:
    those series are scored by NSE* instead of the normalised MSE. `variability`: {NSE* series:
    weight} adds that weight × `variability_error` to the series' loss.
    """
    parts: dict[str, torch.Tensor] = {}
    for g, pred in out["grids"].items():
        target, valid = batch["grids"][g], batch["grid_valid"][g]  # (B, T, P, p²)
        hidden = out["grid_hidden"][g][..., None]
        if "grid_slots" in out:  # predictions of the decoded (hidden) tokens only: (B, T, h, p²)
            slots = out["grid_slots"][g]
            rows = torch.arange(slots.shape[0], device=slots.device).view(-1, 1, 1)
            days = torch.arange(slots.shape[1], device=slots.device).view(1, -1, 1)
            target, valid = target[rows, days, slots], valid[rows, days, slots]
            hidden = hidden[rows, days, slots]
        if norm_pix_loss:
            mean, std = patch_stats(target, valid)
            target = (target - mean) / std
        mse = selected_mse(pred, target, hidden & valid)
        if mse is not None:
            parts[g] = mse
    for s, pred in out["series"].items():
        select = out["series_hidden"][s] & batch["series_valid"][s]
        if nse_star_series and s in nse_star_series:
            mse = nse_star(pred, batch["series"][s], select, *nse_star_series[s],
                           variability=float((variability or {}).get(s, 0.0)))
        else:
            mse = selected_mse(pred, batch["series"][s], select)
        if mse is not None:
            parts[s] = mse
    w = {k: float(weights.get(k, 1.0)) for k in parts}
    total_w = sum(w.values())
    if total_w > 0:
        loss = sum(w[k] * v for k, v in parts.items()) / total_w
    else:  # nothing to reconstruct: a zero that still backpropagates
        preds = [*out["grids"].values(), *out["series"].values()]
        loss = sum(p.float().sum() * 0.0 for p in preds)
    return {"loss": loss, **{k: v.detach() for k, v in parts.items()}}
