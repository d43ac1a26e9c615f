import pytest
import torch

from maelab.masking.noise import KeyedNoise
from maelab.models.sdmae.config import STRATEGIES
from maelab.models.sdmae.masking import random_mask
from maelab.models.sdmae.model import SDMAE


def mask_of(strategy: str, batch: int):
    """A training mask (ratio 0.6, patch size 10) for `batch` windows of 100 steps × 5 features."""
    return random_mask(KeyedNoise(0, torch.arange(batch)), strategy, 100, 5, 0.6, 10)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shapes(strategy):
    model = SDMAE(100, 5, strategy, 10, d_model=32, encoder_depth=1, teacher_depth=2)
    mask = mask_of(strategy, 3)
    out = model(torch.randn(3, 100, 5), mask)
    assert out["teacher"].shape == out["student"].shape == (3, 100, 5)
    assert out["hidden"].shape == (3, 100, 5) and out["hidden"].dtype == torch.bool
    assert out["hidden"].float().mean().item() == pytest.approx(0.6)


@pytest.mark.parametrize("strategy", ["patch", "temporal"])
def test_encoder_sees_only_visible_tokens(strategy):
    model = SDMAE(100, 5, strategy, 10, d_model=32, encoder_depth=1, teacher_depth=1)
    seen = []
    model.encoder.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    mask = mask_of(strategy, 2)
    model(torch.randn(2, 100, 5), mask)
    units = mask.shape[1]
    assert seen == [units - int(mask[0].sum())]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hidden_values_cannot_change_the_output(strategy):
    """Whatever is hidden, the model's reconstruction is the same (no leakage)."""
    torch.manual_seed(0)
    model = SDMAE(100, 5, strategy, 10, d_model=32, encoder_depth=1, teacher_depth=1).eval()
    mask = mask_of(strategy, 2)
    x = torch.randn(2, 100, 5)
    hidden = model(x, mask)["hidden"]
    x2 = torch.where(hidden, torch.randn_like(x) * 100, x)
    a, b = model(x, mask), model(x2, mask)
    assert torch.allclose(a["teacher"], b["teacher"], atol=1e-5)
    assert torch.allclose(a["student"], b["student"], atol=1e-5)


def test_single_decoder():
    model = SDMAE(100, 5, "patch", 10, d_model=32, decoders=["teacher"])
    out = model(torch.randn(2, 100, 5), mask_of("patch", 2))
    assert "student" not in out and out["teacher"].shape == (2, 100, 5)
