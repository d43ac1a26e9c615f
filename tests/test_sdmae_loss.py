import torch

from maelab.models.sdmae.loss import anomaly_ramp, discrepancy_terms, per_window_hidden_mse, sdmae_loss


def _out(hidden: torch.Tensor, teacher: torch.Tensor, student: torch.Tensor) -> dict:
    return {"hidden": hidden, "teacher": teacher, "student": student}


def test_reconstruction_counts_hidden_values_only():
    x = torch.zeros(2, 10, 3)
    hidden = torch.zeros(2, 10, 3, dtype=torch.bool)
    hidden[:, :4] = True
    teacher = torch.ones(2, 10, 3)
    base = sdmae_loss(_out(hidden, teacher, teacher), x, torch.zeros(2, dtype=torch.bool),
                      0.5, 1.0, 1.0)
    changed = teacher.clone()
    changed[:, 4:] = 1e6  # visible positions only
    other = sdmae_loss(_out(hidden, changed, changed), x, torch.zeros(2, dtype=torch.bool),
                       0.5, 1.0, 1.0)
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
                       1.0, 1.0, 1.0)
    parts["disc_normal"].backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_warmup_ramps_linearly():
    assert [anomaly_ramp(e, 4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert anomaly_ramp(0, 0) == 1.0


def test_masked_mse_per_sample():
    pred, target = torch.ones(2, 3, 1), torch.zeros(2, 3, 1)
    hidden = torch.tensor([[True, False, False], [True, True, True]])[..., None]
    pred[1] = 2.0
    assert per_window_hidden_mse(pred, target, hidden).tolist() == [1.0, 4.0]
