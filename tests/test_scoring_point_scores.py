"""Point scores from stride-N sliding windows: each point scored once, causally."""

import numpy as np
import pytest
import torch

from maelab.scoring import (
    assemble_point_scores,
    scored_mask,
    sliding_window_starts,
    window_labels_from_points,
)


def test_each_point_after_first_window_scored_exactly_once():
    length, t, n = 103, 20, 4
    starts = sliding_window_starts(length, t, n)  # (W,)
    assert starts[:3].tolist() == [0, 4, 8] and int(starts[-1]) + t <= length
    # step score = index of the point it scores, so placement is checkable
    step = (starts[:, None] + t - n + torch.arange(n)).double()  # (W, N)
    points = assemble_point_scores(step, starts, t, length)
    assert points.shape == (length,) and points.dtype == torch.float64
    assert bool(torch.isnan(points[: t - n]).all())  # first T-N points unscored
    mask = scored_mask(points)
    last = int(starts[-1]) + t
    assert bool(mask[t - n : last].all()) and not bool(mask[last:].any())  # short tail unscored
    assert torch.equal(points[mask], torch.arange(t - n, last).double())  # each once, in place
    np_points = assemble_point_scores(step.numpy(), starts.numpy(), t, length)
    assert torch.equal(np_points[mask], points[mask])


@pytest.mark.parametrize("stride", [3, 5])
def test_wrong_stride_raises(stride):
    t, n = 20, 4
    starts = torch.arange(0, 60, stride)
    with pytest.raises(ValueError, match="stride N=4"):
        assemble_point_scores(torch.zeros(len(starts), n), starts, t, 100)


def test_out_of_series_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="outside"):
        assemble_point_scores(torch.zeros(2, 4), torch.tensor([0, 4]), 10, 12)
    with pytest.raises(ValueError, match=r"\(W, N\)"):
        assemble_point_scores(torch.zeros(4), torch.tensor([0]), 10, 12)
    with pytest.raises(ValueError):
        sliding_window_starts(10, 20, 4)


def test_window_labels_from_scored_region_only():
    labels = np.zeros((3, 10), dtype=np.int64)
    labels[0, 2] = 1  # anomaly outside the scored last 3 steps
    labels[1, 8] = 1  # inside
    labels[2, 7] = 2  # first scored step, any non-zero type counts
    assert window_labels_from_points(labels, 3).tolist() == [False, True, True]
    assert window_labels_from_points(torch.tensor(labels), 10).tolist() == [True, True, True]
    with pytest.raises(ValueError):
        window_labels_from_points(labels, 0)
