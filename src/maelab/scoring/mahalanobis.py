"""Mahalanobis distance of residual vectors from the residuals of normal data.

A model's residuals on normal data are correlated (across features driven by one workload, and
across neighbouring steps) and unequally spread; the squared Mahalanobis distance scores a
residual vector against that Gaussian: a deviation along a direction normal data rarely takes
counts more than one of the same size along a direction it often takes. The covariance is
scikit-learn's Ledoit-Wolf shrinkage estimate, well conditioned when vectors are long (a window's
scored region: steps × features) beside the number of normal vectors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Whitening(NamedTuple):
    """Mean (D,) and precision (D, D) of normal residual vectors, float64."""

    mean: torch.Tensor
    precision: torch.Tensor


def fit_whitening(residuals: torch.Tensor, normal: torch.Tensor | None = None) -> Whitening:
    """Ledoit-Wolf mean and precision of the rows of `residuals` (N, D) where `normal` (N,) is
    true (all rows if None)."""
    from sklearn.covariance import LedoitWolf  # imported when used: ~1 s, off the default path

    rows = residuals if normal is None else residuals[normal.to(torch.bool)]
    if rows.shape[0] < 2:
        raise ValueError(f"{rows.shape[0]} normal residual vectors: at least 2 are needed to fit "
                         "a covariance")
    est = LedoitWolf().fit(rows.detach().to("cpu", torch.float64).numpy())
    return Whitening(torch.from_numpy(est.location_).double(),
                     torch.from_numpy(est.get_precision()).double())


def mahalanobis(residuals: torch.Tensor, whitening: Whitening) -> torch.Tensor:
    """(N,) squared Mahalanobis distances of the rows of `residuals` (N, D), float64."""
    v = residuals.detach().to("cpu", torch.float64) - whitening.mean  # (N, D)
    return ((v @ whitening.precision) * v).sum(dim=1)


def cross_fitted_mahalanobis(residuals: torch.Tensor, normal: torch.Tensor | None = None,
                             folds: int = 5) -> torch.Tensor:
    """(N,) squared distances, each row's from a whitening fitted without its fold.

    Row i is in fold i mod `folds`; the whitening of fold k is fitted on the normal rows of the
    other folds, so no row scores against a covariance that saw it (the distances behave as
    they will on unseen data, e.g. for choosing a score or a threshold on validation).
    """
    residuals = residuals.detach().to("cpu", torch.float64)
    n = residuals.shape[0]
    normal = torch.ones(n, dtype=torch.bool) if normal is None else normal.to("cpu", torch.bool)
    fold = torch.arange(n) % folds
    out = torch.empty(n, dtype=torch.float64)
    for k in range(min(folds, n)):
        rows = fold == k
        out[rows] = mahalanobis(residuals[rows], fit_whitening(residuals[~rows], normal[~rows]))
    return out
