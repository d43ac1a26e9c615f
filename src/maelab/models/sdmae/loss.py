"""SD-MAE loss: teacher reconstruction on hidden values + λ · self-distillation discrepancy.

The discrepancy d of a window is the mean squared teacher–student gap. Options (`model.loss`):
    gap_region      hidden: over the hidden values | window: over every value of the window
    gap_mask        training: d from the training pass | inference: from a second pass under the
                    inference mask (last n steps hidden), the way windows are scored
    detach_teacher  the teacher gets no gradient through d (only the student moves)
    push            labelled: every labelled anomaly is pushed | visible: only those whose anomaly
                    the encoder sees under the gap's mask (a hidden anomaly cannot move the gap)
    margin_mode     absolute: push d above `margin` | relative: above `margin` × the batch's mean
                    gap of normal windows (detached): the same target whatever the data's scale
    pull_weight     weight of the normal term beside the anomaly term: with equal weights, raising
                    every d by the same amount changes nothing while anomalies are below the margin
                    (a flat direction along which the gaps drift); above 1 it costs
    recon_reduction mean over hidden cells | feature_sum: summed over features (the design's scale)
    recon_mask      training: reconstruction of the training pass's hidden values |
                    training_and_inference: plus that of the inference pass (last n steps hidden),
                    the task windows are scored on
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F


def per_window_hidden_mse(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over hidden cells only: (B, T, F) x3 -> (B,)."""
    w = hidden.to(pred.dtype)
    return ((pred - target) ** 2 * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2)).clamp_min(1.0)


def discrepancy_terms(
    d: torch.Tensor, anomalous: torch.Tensor, margin: float, margin_mode: str = "absolute",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean d over normal/unlabelled windows, mean relu(margin − d) over labelled anomalies.

    d (B,) teacher–student gap per window; anomalous (B,) bool, True only for pushed anomalies.
    `relative`: the margin is `margin` × the mean gap of the batch's normal windows (detached).
    An empty group contributes 0.
    """
    normal, anomaly = ~anomalous, anomalous
    pull = (d * normal).sum() / normal.sum().clamp_min(1)
    if margin_mode == "relative":
        margin = margin * pull.detach()
    push = (F.relu(margin - d) * anomaly).sum() / anomaly.sum().clamp_min(1)
    return pull, push


def anomaly_ramp(epoch: int, warmup_epochs: int) -> float:
    """Weight of the anomaly term: rises linearly to 1 over the first `warmup_epochs` epochs."""
    return 1.0 if warmup_epochs <= 0 else min(1.0, (epoch + 1) / warmup_epochs)


def anomaly_visible(point_labels: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """(B,) True where an anomalous step has a value the encoder sees: point_labels (B, T),
    hidden (B, T, F) bool."""
    seen = ~hidden.all(dim=-1)  # (B, T) some feature of the step is visible
    return ((point_labels > 0) & seen).any(dim=1)


def sdmae_loss(
    out: Mapping[str, torch.Tensor], x: torch.Tensor, anomalous: torch.Tensor,
    loss: Mapping[str, Any], ramp: float, gap_out: Mapping[str, torch.Tensor] | None = None,
    inference_out: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Total loss and its parts.

    out: the training pass (`SDMAE.forward`: decoder outputs (B, T, F), "hidden" (B, T, F));
    gap_out: the pass d is taken from (default `out`); inference_out: the pass under the inference
    mask, reconstructed too with `recon_mask: training_and_inference`; anomalous (B,): windows
    pushed; loss: the `model.loss` settings. With both decoders: reconstruction +
    λ·(w·pull + ramp·push); with one decoder (ablation) or `discrepancy: false`: reconstruction
    alone.
    """
    name = "teacher" if "teacher" in out else "student"
    recon = per_window_hidden_mse(out[name], x, out["hidden"]).mean()
    if loss["recon_mask"] == "training_and_inference":
        if inference_out is None:
            raise ValueError("recon_mask: training_and_inference needs the inference pass")
        recon = recon + per_window_hidden_mse(inference_out[name], x, inference_out["hidden"]).mean()
    if loss["recon_reduction"] == "feature_sum":
        recon = recon * x.shape[-1]
    parts = {"recon": recon}
    if not (loss["discrepancy"] and "teacher" in out and "student" in out):
        return parts | {"loss": recon}
    g = out if gap_out is None else gap_out
    teacher = g["teacher"].detach() if loss["detach_teacher"] else g["teacher"]
    region = g["hidden"] if loss["gap_region"] == "hidden" else torch.ones_like(g["hidden"])
    d = per_window_hidden_mse(g["student"], teacher, region)  # (B,)
    pull, push = discrepancy_terms(d, anomalous, loss["margin"], loss["margin_mode"])
    total = recon + loss["lambda_disc"] * (loss["pull_weight"] * pull + ramp * push)
    return parts | {"disc_normal": pull, "disc_anomaly": push, "loss": total}
