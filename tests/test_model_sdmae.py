import pytest
import torch

from maelab.models.sdmae.masking import STRATEGIES, random_mask
from maelab.models.sdmae.model import SDMAE


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shapes(strategy):
    model = SDMAE(100, 5, strategy, 10, d_model=32, encoder_depth=1, teacher_depth=2)
    mask = random_mask(strategy, 3, 100, 5, 0.6, 10)
    out = model(torch.randn(3, 100, 5), mask)
    assert out["teacher"].shape == out["student"].shape == (3, 100, 5)
    assert out["hidden"].shape == (3, 100, 5) and out["hidden"].dtype == torch.bool
    assert out["hidden"].float().mean().item() == pytest.approx(0.6)


@pytest.mark.parametrize("strategy", ["patch", "temporal"])
def test_encoder_sees_only_visible_tokens(strategy):
    model = SDMAE(100, 5, strategy, 10, d_model=32, encoder_depth=1, teacher_depth=1)
    seen = []
    model.encoder.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    mask = random_mask(strategy, 2, 100, 5, 0.6, 10)
    model(torch.randn(2, 100, 5), mask)
    units = mask.shape[1]
    assert seen == [units - int(mask[0].sum())]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hidden_values_cannot_change_the_output(strategy):
    """Whatever is hidden, the model's reconstruction is the same (no leakage)."""
    torch.manual_seed(0)
    model = SDMAE(100, 5, strategy, 10, d_model=32, encoder_depth=1, teacher_depth=1).eval()
    mask = random_mask(strategy, 2, 100, 5, 0.6, 10)
    x = torch.randn(2, 100, 5)
    hidden = model(x, mask)["hidden"]
    x2 = torch.where(hidden, torch.randn_like(x) * 100, x)
    a, b = model(x, mask), model(x2, mask)
    assert torch.allclose(a["teacher"], b["teacher"], atol=1e-5)
    assert torch.allclose(a["student"], b["student"], atol=1e-5)


def test_single_decoder():
    model = SDMAE(100, 5, "patch", 10, d_model=32, decoders=["teacher"])
    out = model(torch.randn(2, 100, 5), random_mask("patch", 2, 100, 5, 0.6, 10))
    assert "student" not in out and out["teacher"].shape == (2, 100, 5)
