"""SD-MAE loss: teacher reconstruction on hidden values + λ · self-distillation discrepancy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_window_hidden_mse(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over hidden cells only: (B, T, F) x3 -> (B,)."""
    w = hidden.to(pred.dtype)
    return ((pred - target) ** 2 * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2)).clamp_min(1.0)


def discrepancy_terms(
    d: torch.Tensor, anomalous: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean d over normal/unlabelled windows, mean relu(margin − d) over labelled anomalies.

    d (B,) teacher–student gap per window; anomalous (B,) bool, True only for labelled anomalies.
    An empty group contributes 0.
    """
    normal, anomaly = ~anomalous, anomalous
    pull = (d * normal).sum() / normal.sum().clamp_min(1)
    push = (F.relu(margin - d) * anomaly).sum() / anomaly.sum().clamp_min(1)
    return pull, push


def anomaly_ramp(epoch: int, warmup_epochs: int) -> float:
    """Weight of the anomaly term: rises linearly to 1 over the first `warmup_epochs` epochs."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, (epoch + 1) / warmup_epochs)


def sdmae_loss(
    out: dict[str, torch.Tensor], x: torch.Tensor, anomalous: torch.Tensor,
    lambda_disc: float, margin: float, ramp: float, discrepancy: bool = True,
) -> dict[str, torch.Tensor]:
    """Total loss and its parts from the model output `out` (see `SDMAE.forward`).

    With both decoders: teacher reconstruction + λ·(pull + ramp·push), teacher detached in d.
    With one decoder (ablation): that decoder's reconstruction alone.
    """
    hidden = out["hidden"]
    name = "teacher" if "teacher" in out else "student"
    recon = per_window_hidden_mse(out[name], x, hidden).mean()
    parts = {"recon": recon}
    if discrepancy and "teacher" in out and "student" in out:
        d = per_window_hidden_mse(out["student"], out["teacher"].detach(), hidden)  # (B,)
        pull, push = discrepancy_terms(d, anomalous, margin)
        parts |= {"disc_normal": pull, "disc_anomaly": push}
        parts["loss"] = recon + lambda_disc * (pull + ramp * push)
    else:
        parts["loss"] = recon
    return parts
