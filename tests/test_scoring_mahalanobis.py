"""Mahalanobis scores of residual vectors (maelab.scoring.mahalanobis)."""

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from maelab.scoring import cross_fitted_mahalanobis, fit_whitening, mahalanobis


def correlated(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3) residuals: the first two strongly correlated, the third independent."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 1, generator=g, dtype=torch.float64)
    noise = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return torch.cat([shared + 0.1 * noise[:, :1], shared + 0.1 * noise[:, 1:2], noise[:, 2:]], 1)


def test_equals_scikit_learns_ledoit_wolf():
    train, test = correlated(200), correlated(50, seed=1)
    expected = LedoitWolf().fit(train.numpy()).mahalanobis(test.numpy())
    np.testing.assert_allclose(mahalanobis(test, fit_whitening(train)).numpy(), expected,
                               rtol=1e-10)


def test_only_normal_rows_are_fitted():
    rows, normal = correlated(120), torch.arange(120) % 3 != 0
    rows[~normal] += 50.0  # anomalous rows far away must not move the fit
    a, b = fit_whitening(rows, normal), fit_whitening(rows[normal])
    assert torch.equal(a.mean, b.mean) and torch.equal(a.precision, b.precision)


def test_a_deviation_against_the_correlation_scores_higher():
    """Same Euclidean size: along the direction normal residuals take (both up) vs against it."""
    whitening = fit_whitening(correlated(500))
    along, against = torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[1.0, -1.0, 0.0]])
    assert float(mahalanobis(against, whitening)) > 20 * float(mahalanobis(along, whitening))


def test_cross_fitted_rows_never_score_against_their_own_fold():
    rows, normal = correlated(53), torch.arange(53) % 7 != 0
    got = cross_fitted_mahalanobis(rows, normal, folds=4)
    fold = torch.arange(53) % 4
    for k in range(4):
        w = fit_whitening(rows[fold != k], normal[fold != k])
        torch.testing.assert_close(got[fold == k], mahalanobis(rows[fold == k], w))
    moved = rows.clone()
    moved[1] += 10.0  # normal row 1 (fold 1) changes: fold 1's other distances do not
    again = cross_fitted_mahalanobis(moved, normal, folds=4)
    torch.testing.assert_close(again[fold == 1][1:], got[fold == 1][1:])
    assert not torch.equal(again[fold != 1], got[fold != 1])


def test_too_few_normal_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2"):
        fit_whitening(correlated(10), torch.tensor([True] + [False] * 9))
