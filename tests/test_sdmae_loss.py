from dataclasses import asdict

import pytest
import torch

from maelab.models.sdmae.config import LossConfig
from maelab.models.sdmae.loss import (
    anomaly_ramp,
    anomaly_visible,
    discrepancy_terms,
    per_window_hidden_mse,
    sdmae_loss,
)


def _out(hidden: torch.Tensor, teacher: torch.Tensor, student: torch.Tensor) -> dict:
    return {"hidden": hidden, "teacher": teacher, "student": student}


def _loss(**overrides) -> dict:
    """The `model.loss` settings (defaults of the config) with `overrides`."""
    return asdict(LossConfig()) | overrides


def test_reconstruction_counts_hidden_values_only():
    x = torch.zeros(2, 10, 3)
    hidden = torch.zeros(2, 10, 3, dtype=torch.bool)
    hidden[:, :4] = True
    teacher = torch.ones(2, 10, 3)
    base = sdmae_loss(_out(hidden, teacher, teacher), x, torch.zeros(2, dtype=torch.bool),
                      _loss(), 1.0)
    changed = teacher.clone()
    changed[:, 4:] = 1e6  # visible positions only
    other = sdmae_loss(_out(hidden, changed, changed), x, torch.zeros(2, dtype=torch.bool),
                       _loss(), 1.0)
    assert torch.equal(base["recon"], other["recon"]) and torch.equal(base["loss"], other["loss"])
    assert base["recon"].item() == 1.0


def test_discrepancy_pulls_normal_and_pushes_labelled_anomalies():
    d = torch.tensor([0.2, 0.2, 0.3], requires_grad=True)
    anomalous = torch.tensor([False, False, True])
    pull, push = discrepancy_terms(d, anomalous, margin=1.0)
    (pull + push).backward()
    assert d.grad[0] > 0 and d.grad[1] > 0, "normal gap is pulled down"
    assert d.grad[2] < 0, "anomalous gap is pushed up"
    assert torch.isclose(push, torch.tensor(0.7))
    d2 = torch.tensor([0.2, 1.5])
    assert discrepancy_terms(d2, torch.tensor([False, True]), 1.0)[1] == 0, "past the margin"


def test_teacher_detached_in_discrepancy():
    hidden = torch.ones(1, 4, 2, dtype=torch.bool)
    teacher = torch.zeros(1, 4, 2, requires_grad=True)
    student = torch.ones(1, 4, 2, requires_grad=True)
    x = torch.zeros(1, 4, 2)
    parts = sdmae_loss(_out(hidden, teacher, student), x, torch.zeros(1, dtype=torch.bool),
                       _loss(lambda_disc=1.0), 1.0)
    parts["disc_normal"].backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_gradients_reach_the_teacher_through_d_when_not_detached():
    hidden = torch.ones(1, 4, 2, dtype=torch.bool)
    teacher = torch.zeros(1, 4, 2, requires_grad=True)
    student = torch.ones(1, 4, 2, requires_grad=True)
    parts = sdmae_loss(_out(hidden, teacher, student), torch.zeros(1, 4, 2),
                       torch.zeros(1, dtype=torch.bool), _loss(detach_teacher=False), 1.0)
    parts["disc_normal"].backward()
    assert teacher.grad.abs().sum() > 0 and student.grad.abs().sum() > 0


def test_gap_region_window_counts_visible_values_too():
    hidden = torch.zeros(1, 4, 2, dtype=torch.bool)
    hidden[:, :2] = True
    teacher, student = torch.zeros(1, 4, 2), torch.zeros(1, 4, 2)
    student[:, 2:] = 2.0  # a gap on the visible steps only
    out, x, no = _out(hidden, teacher, student), torch.zeros(1, 4, 2), torch.zeros(1, dtype=torch.bool)
    assert sdmae_loss(out, x, no, _loss(gap_region="hidden"), 1.0)["disc_normal"] == 0
    assert sdmae_loss(out, x, no, _loss(gap_region="window"), 1.0)["disc_normal"] == 2.0


def test_gap_from_another_pass():
    """`gap_out` (e.g. the inference-mask pass) is where d comes from; reconstruction stays on `out`."""
    hidden = torch.ones(1, 4, 2, dtype=torch.bool)
    zeros = torch.zeros(1, 4, 2)
    out = _out(hidden, zeros, zeros)
    gap = _out(hidden, zeros, torch.full((1, 4, 2), 3.0))
    parts = sdmae_loss(out, zeros, torch.zeros(1, dtype=torch.bool), _loss(), 1.0, gap)
    assert parts["recon"] == 0 and parts["disc_normal"] == 9.0


@pytest.mark.parametrize("pull_weight, flat", [(1.0, True), (1.5, False)])
def test_pull_weight_removes_the_flat_direction(pull_weight, flat):
    """Equal weights: raising every window's gap d by the same amount (anomalies below the
    margin) leaves the loss unchanged; a heavier pull makes it cost."""
    hidden = torch.ones(3, 4, 2, dtype=torch.bool)
    anomalous = torch.tensor([False, False, True])

    def loss_at(gaps: torch.Tensor) -> torch.Tensor:  # student = sqrt(gap) above a zero teacher
        student = gaps.sqrt()[:, None, None].expand(3, 4, 2)
        out = _out(hidden, torch.zeros(3, 4, 2), student)
        return sdmae_loss(out, torch.zeros(3, 4, 2), anomalous,
                          _loss(pull_weight=pull_weight, lambda_disc=1.0), 1.0)["loss"]

    gaps = torch.tensor([0.1, 0.1, 0.3])
    change = loss_at(gaps + 0.05) - loss_at(gaps)
    assert bool(torch.isclose(change, torch.tensor(0.0), atol=1e-6)) == flat
    assert flat or change > 0


def test_relative_margin_follows_the_normal_gap():
    d = torch.tensor([0.1, 0.1, 0.3])
    anomalous = torch.tensor([False, False, True])
    assert torch.isclose(discrepancy_terms(d, anomalous, 5.0, "relative")[1], torch.tensor(0.2))
    assert torch.isclose(discrepancy_terms(d * 10, anomalous, 5.0, "relative")[1], torch.tensor(2.0))


def test_feature_sum_scales_reconstruction_by_features():
    hidden = torch.ones(1, 4, 3, dtype=torch.bool)
    out = _out(hidden, torch.ones(1, 4, 3), torch.ones(1, 4, 3))
    x, no = torch.zeros(1, 4, 3), torch.zeros(1, dtype=torch.bool)
    assert sdmae_loss(out, x, no, _loss(recon_reduction="feature_sum"), 1.0)["recon"] == 3.0
    assert sdmae_loss(out, x, no, _loss(), 1.0)["recon"] == 1.0


@pytest.mark.parametrize("hidden_steps, expected", [((0, 4), False), ((2, 4), True)])
def test_anomaly_visible(hidden_steps, expected):
    point_labels = torch.zeros(1, 4, dtype=torch.long)
    point_labels[0, 1] = 1  # the anomaly is at step 1
    hidden = torch.zeros(1, 4, 2, dtype=torch.bool)
    hidden[:, hidden_steps[0]:hidden_steps[1]] = True
    assert anomaly_visible(point_labels, hidden).item() is expected


def test_warmup_ramps_linearly():
    assert [anomaly_ramp(e, 4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert anomaly_ramp(0, 0) == 1.0


def test_masked_mse_per_sample():
    pred, target = torch.ones(2, 3, 1), torch.zeros(2, 3, 1)
    hidden = torch.tensor([[True, False, False], [True, True, True]])[..., None]
    pred[1] = 2.0
    assert per_window_hidden_mse(pred, target, hidden).tolist() == [1.0, 4.0]
