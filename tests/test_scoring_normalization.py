"""Score normalisation fitted on validation normals; monotone non-saturating unit map."""

import numpy as np
import pytest
import torch

from maelab.scoring import (
    NormalStats,
    fit_normal_stats,
    standardize,
    to_unit_interval,
)


def test_fit_uses_only_normal_windows():
    scores = np.array([1.0, 3.0, 1000.0, 2000.0])
    labels = np.array([0, 0, 1, 1])
    mean, std = fit_normal_stats(scores, labels)
    assert (mean, std) == (2.0, 1.0)
    assert fit_normal_stats(torch.tensor([1.0, 3.0])) == NormalStats(2.0, 1.0)


def test_fit_floors_std_and_rejects_no_normals():
    assert fit_normal_stats(np.ones(5)).std == pytest.approx(1e-12)
    with pytest.raises(ValueError, match="no normal"):
        fit_normal_stats(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        fit_normal_stats(np.array([1.0, np.nan]))


def test_standardize():
    z = standardize(torch.tensor([2.0, 4.0]), 2.0, 2.0)
    assert z.dtype == torch.float64 and z.tolist() == [0.0, 1.0]


def test_unit_interval_is_strictly_monotone_without_saturating():
    raw = np.array([-1e9, -5.0, 0.0, 1.0, 1e3, 1e6, 1e9, 2e9])
    u = to_unit_interval(raw, mean=1.0, std=1.0)
    assert u.dtype == torch.float64
    assert bool(((u > 0) & (u < 1)).all())
    assert bool((torch.diff(u) > 0).all())  # distinct and ordered even at 1e9
    assert float(to_unit_interval(np.array([1.0]), 1.0, 1.0)[0]) == 0.5
