"""MM-MAE loss: per-modality MSE on hidden & valid positions, weighted mean over modalities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

EPS = 1e-6


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


def mmmae_loss(
    out: Mapping[str, Any], batch: Mapping[str, Any], weights: Mapping[str, float],
    norm_pix_loss: bool = False,
) -> dict[str, torch.Tensor]:
    """{"loss", <modality>: MSE} on hidden & valid positions (grids: land cells with finite
    values; series: finite days). `loss` = weighted mean of the modality losses present in the
    batch (weight 1 unless given); modalities without hidden valid positions are skipped.
    `norm_pix_loss`: grid targets normalised per patch and day over its valid cells (MAE).
    Grid predictions are (B, T, P, p²), or (B, T, h, p²) at the patches `out["grid_slots"]`.
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
        mse = selected_mse(pred, batch["series"][s], out["series_hidden"][s] & batch["series_valid"][s])
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
