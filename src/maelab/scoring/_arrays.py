"""Conversion of score/label inputs (torch tensors or numpy arrays) to flat torch tensors."""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def as_scores(x: ArrayLike) -> torch.Tensor:
    """Flat float64 CPU tensor (float64 keeps huge raw scores distinguishable)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    return torch.as_tensor(np.asarray(x, dtype=np.float64)).reshape(-1)


def as_labels(x: ArrayLike) -> torch.Tensor:
    """Flat bool CPU tensor (any non-zero label is anomalous)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").reshape(-1) != 0
    return torch.as_tensor(np.asarray(x) != 0).reshape(-1)


def as_ints(x: ArrayLike) -> torch.Tensor:
    """Flat int64 CPU tensor (anomaly-type codes)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.int64).reshape(-1)
    return torch.as_tensor(np.asarray(x, dtype=np.int64)).reshape(-1)


def check_scores(scores: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    """Raise ValueError unless scores are non-empty, finite and as long as `labels`."""
    if scores.numel() == 0:
        raise ValueError("scores are empty")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or inf; drop unscored points first (see scored_mask)")
    if labels is not None and scores.numel() != labels.numel():
        raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels")
