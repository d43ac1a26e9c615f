"""Point scores from stride-N sliding windows: each point scored once, causally."""

import numpy as np
import pytest
import torch

from maelab.data.series.long_series import SeriesWindowDataset
from maelab.scoring import (
    assemble_point_scores,
    scored_mask,
    sliding_window_starts,
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
    """A window is anomalous when an anomaly falls in its scored (last mask_last_n) steps."""
    values = np.zeros((30, 2), dtype=np.float32)
    point_labels = np.zeros(30, dtype=np.int64)
    point_labels[[2, 18, 27]] = 1
    starts = np.array([0, 10, 20])  # windows [0, 10), [10, 20), [20, 30)
    data = SeriesWindowDataset(values, point_labels, starts, starts, np.zeros(3, np.int64),
                               seq_length=10, label_span=3)
    # anomaly at 2: outside the scored steps 7-9; at 18: inside 17-19; at 27: inside 27-29
    assert data.label.tolist() == [0, 1, 1]
    whole = SeriesWindowDataset(values, point_labels, starts, starts, np.zeros(3, np.int64),
                                seq_length=10, label_span=10)
    assert whole.label.tolist() == [1, 1, 1]
