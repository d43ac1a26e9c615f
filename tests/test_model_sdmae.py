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
    # patch_feature: 60 % of the patches whole, plus single-feature blocks of the others
    whole = out["hidden"].all(-1) if strategy == "patch_feature" else out["hidden"]
    assert whole.float().mean().item() == pytest.approx(0.6)


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


NET_OPTIONS = [
    {"encoder_input": "mask_tokens"}, {"decoder": "cross_attention"}, {"head": "shared"},
    {"encoder_input": "mask_tokens", "decoder": "cross_attention", "head": "shared",
     "mask_token_std": 1.0},
]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("options", NET_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_net_options_shapes_and_no_leak(strategy, options):
    """Every network option builds, keeps the shapes, and hidden values never reach the output."""
    torch.manual_seed(0)
    model = SDMAE(100, 5, strategy, 10, d_model=32, encoder_depth=1, teacher_depth=2, **options).eval()
    mask = mask_of(strategy, 3)
    x = torch.randn(3, 100, 5)
    out = model(x, mask)
    assert out["teacher"].shape == out["student"].shape == (3, 100, 5)
    x2 = torch.where(out["hidden"], torch.randn_like(x) * 100, x)
    assert torch.allclose(model(x2, mask)["teacher"], out["teacher"], atol=1e-4)


def test_mask_tokens_keep_every_token_in_the_encoder():
    model = SDMAE(100, 5, "patch", 10, d_model=32, encoder_depth=1, teacher_depth=1,
                  encoder_input="mask_tokens")
    seen = []
    model.encoder.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    model(torch.randn(2, 100, 5), mask_of("patch", 2))
    assert seen == [10]


def test_cross_attention_queries_are_positions_and_memory_is_the_latent():
    """Cross-attention decoders attend to the encoder output: the decoder sees N positional
    queries and a memory of the visible tokens only."""
    model = SDMAE(100, 5, "patch", 10, d_model=32, encoder_depth=1, teacher_depth=1,
                  decoder="cross_attention")
    seen = []
    model.decoder["teacher"].register_forward_hook(
        lambda m, i, o: seen.append((i[0].shape, i[1].shape)))
    mask = mask_of("patch", 2)
    model(torch.randn(2, 100, 5), mask)
    n_visible = 10 - int(mask[0].sum())
    assert seen == [(torch.Size([2, 10, 32]), torch.Size([2, n_visible, 32]))]


def test_shared_head_is_one_module():
    model = SDMAE(100, 5, "patch", 10, d_model=32, head="shared")
    assert model.head["teacher"] is model.head["student"]


def test_post_norm_block_matches_torch_encoder_layer():
    """`norm="post"`, ReLU: the block computes what nn.TransformerEncoderLayer computes."""
    from maelab.nn.transformer import Block

    torch.manual_seed(0)
    ours = Block(16, 4, 4.0, norm="post", activation="relu").eval()
    ref = torch.nn.TransformerEncoderLayer(16, 4, 64, 0.0, batch_first=True).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(ours.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(ours.attn.proj.weight)
        ref.self_attn.out_proj.bias.copy_(ours.attn.proj.bias)
        for a, b in ((ref.linear1, ours.mlp[0]), (ref.linear2, ours.mlp[3]),
                     (ref.norm1, ours.norm1), (ref.norm2, ours.norm2)):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
    x = torch.randn(2, 7, 16)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
