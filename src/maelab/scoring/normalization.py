"""Score normalisation fitted on validation *normal* windows.

Each raw score (discrepancy, reconstruction) is standardised with the mean/std of the
validation windows labelled normal (SD-MAE's combined score sums them).
For torchmetrics (which applies a sigmoid to anything outside [0, 1]) scores are mapped into
(0, 1) by a softsign of the z-score: strictly monotone, computed in float64, and far from
saturating, so very large raw errors keep their ranking.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from maelab.scoring._arrays import ArrayLike, as_labels, as_scores, check_scores


class NormalStats(NamedTuple):
    """Mean and standard deviation of a score over validation normal windows."""

    mean: float
    std: float


def fit_normal_stats(
    scores: ArrayLike, labels: ArrayLike | None = None, min_std: float = 1e-12
) -> NormalStats:
    """Mean/std (population, ddof=0) of `scores` where `labels == 0` (all if labels is None).

    The std is floored at `min_std` so constant scores do not divide by zero.
    """
    s = as_scores(scores)  # (N,)
    if labels is not None:
        y = as_labels(labels)  # (N,)
        check_scores(s, y)
        s = s[~y]
        if s.numel() == 0:
            raise ValueError("no normal (label 0) scores to fit the normalisation on")
    check_scores(s)
    mean = float(s.mean())
    std = float(s.std(correction=0))
    return NormalStats(mean, max(std, min_std))


def standardize(scores: ArrayLike, mean: float, std: float) -> torch.Tensor:
    """z-score (scores - mean) / std as a float64 tensor of the input's flat shape."""
    return (as_scores(scores) - float(mean)) / float(std)


def to_unit_interval(scores: ArrayLike, mean: float, std: float) -> torch.Tensor:
    """Strictly monotone map into (0, 1): 0.5 * (1 + z / (1 + |z|)), z the float64 z-score.

    Unlike a sigmoid or clamp it does not tie large values: z = 1e9 and z = 2e9 stay distinct
    (ties only appear beyond |z| ~ 1e16, where float64 runs out of resolution).
    """
    z = standardize(scores, mean, std)  # (N,) float64
    return 0.5 * (1.0 + z / (1.0 + z.abs()))
