"""Model FLOP utilisation of one MM-MAE training step, against the peak GEMM rate measured here.

A training step is: forward (embed the visible tokens, encoder, decoder over all tokens with
mask tokens and the series prior when the model has one, heads), `mmmae_loss`, backward, AdamW
step; on a synthetic batch in the HydroDataModule format (UK land patches, `ratio` of patches
and days hidden). FLOPs are counted analytically from the model's shapes (`step_flops`: matrix
products only, 2 per multiply-add; backward = 2 × forward, or 1 × where the input needs no
gradient; attention backward without the score recomputation of fused kernels), and
cross-checked with `torch.utils.flop_counter.FlopCounterMode` (which adds that recomputation).
The peak rate is a large `torch.mm` in the step's precision: fp32 (2048³) on a CPU, bf16 (8192³)
on a GPU, where the step runs under bf16 autocast. Steps and GEMMs alternate in one run; each is
the median of `repeats` after `warmup`. MFU = analytic FLOPs / step time / peak GEMM FLOP/s.

    python -m benchmarks.mfu
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from benchmarks.common import device_of, interleaved, median, timed
from benchmarks.mmmae_encoder import GRIDS, SERIES, synthetic_batch
from maelab.data.hydro.layout import PatchLayout, default_land_mask
from maelab.lit.optim import adamw_warmup_cosine
from maelab.masking.count import hidden_count
from maelab.models.mmmae.loss import mmmae_loss
from maelab.models.mmmae.model import MMMAE

N_STATIC = 8


def _linear(rows: int, fan_in: int, fan_out: int, input_grad: bool = True) -> dict[str, int]:
    f = 2 * rows * fan_in * fan_out
    return {"forward": f, "backward": f * (2 if input_grad else 1), "recompute": 0}


def _transformer(batch: int, tokens: int, dim: int, depth: int, mlp_ratio: float) -> dict[str, int]:
    """qkv, projection, MLP and attention (QKᵀ, AV) of `depth` blocks."""
    rows, hidden = batch * tokens, int(dim * mlp_ratio)
    lin = 2 * rows * dim * (3 * dim + dim + 2 * hidden)
    attn = 4 * batch * tokens * tokens * dim
    return {"forward": depth * (lin + attn), "backward": depth * 2 * (lin + attn),
            "recompute": depth * attn // 2}  # fused backward recomputes QKᵀ


def step_flops(model: MMMAE, batch_size: int, ratio: float, n_static: int,
               mlp_ratio: float = 4.0) -> dict[str, int]:
    """Matmul FLOPs of one training step from the model's shapes: forward, backward, recompute."""
    b, g, p, t, k, pp = (batch_size, model.n_groups, model.n_valid, model.seq_len, model.k,
                         model.pp)
    n_grids, n_series = len(model.grid_names), len(model.series_names)
    vis_grid = g * (p - hidden_count(ratio, p))  # per grid and sample: group masks = first day's
    vis_series = t - hidden_count(ratio, t)
    n_vis = n_grids * vis_grid + n_series * vis_series + (1 if n_static else 0)
    n_all = n_grids * g * p + n_series * t + (1 if n_static else 0)
    d = model.decoder_embed.in_features
    dd = model.decoder_embed.out_features
    parts = [
        *[_linear(b * vis_grid, k * (pp + 1), d, input_grad=False)] * n_grids,
        *[_linear(b * vis_series, 2, d, input_grad=False)] * n_series,
        *([_linear(b, 2 * n_static, d, input_grad=False)] if n_static else []),
        _transformer(b, n_vis, d, len(model.encoder.blocks), mlp_ratio),
        _linear(b * n_vis, d, dd),
        _transformer(b, n_all, dd, len(model.decoder.blocks), mlp_ratio),
        *[_linear(b * t, 2, dd, input_grad=False)] * len(getattr(model, "prior_embed", {})),
        *[_linear(b * g * p, dd, k * pp)] * n_grids,
        *[_linear(b * t, dd, 1)] * n_series,
    ]
    out = {key: sum(part[key] for part in parts) for key in ("forward", "backward", "recompute")}
    out["model"] = out["forward"] + out["backward"]
    out |= {"tokens_visible": n_vis, "tokens_all": n_all}
    return out


def _sdpa_cpu(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# the CPU flash-attention kernels have no formula in torch's registry
CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


def counted_flops(step: Callable[[], None]) -> int:
    """FLOPs of one call of `step` as counted by FlopCounterMode."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        step()
    return int(counter.get_total_flops())


def gemm_rate(n: int, device: torch.device, dtype: torch.dtype = torch.float32
              ) -> tuple[Callable[[], torch.Tensor], int]:
    """A callable doing one (n × n) @ (n × n) product in `dtype`, and its FLOPs."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return (lambda: torch.mm(a, b)), 2 * n ** 3


def build(d_model: int, depth: int, heads: int, batch_size: int, ratio: float, seed: int,
          device: torch.device, temporal_patch: int = 15, seq_len: int = 90
          ) -> tuple[MMMAE, Callable[[], None]]:
    """The model and one training step (forward, loss, backward, AdamW) on a synthetic batch."""
    torch.manual_seed(seed)
    layout = PatchLayout.build(default_land_mask(), 10, 0.5)
    model = MMMAE(GRIDS, SERIES, seq_len, layout.patch_size, layout.rows, layout.cols,
                  (layout.n_rows, layout.n_cols), N_STATIC, temporal_patch, d_model, depth,
                  heads, attn_dropout=0.0).to(device)
    opt = adamw_warmup_cosine(model, 1000, 1e-3)["optimizer"]
    batch = synthetic_batch(layout, batch_size, seq_len, ratio, N_STATIC, seed, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = mmmae_loss(model(batch), batch, {})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


def run(d_model: int = 256, depth: int = 4, heads: int = 4, batch_size: int = 4,
        ratio: float = 0.75, repeats: int = 5, warmup: int = 1, gemm_n: int | None = None,
        seed: int = 0, device: str | None = None) -> dict[str, Any]:
    """Analytic and counted FLOPs, step time, peak GEMM rate and MFU (module docstring)."""
    dev = device_of(device)
    gpu = dev.type == "cuda"
    gemm_n = gemm_n or (8192 if gpu else 2048)
    gemm_dtype = torch.bfloat16 if gpu else torch.float32  # the step's precision (bf16 autocast)
    model, step = build(d_model, depth, heads, batch_size, ratio, seed, dev)
    flops = step_flops(model, batch_size, ratio, N_STATIC)
    counted = counted_flops(step)  # also the first warm-up step
    mm, mm_flops = gemm_rate(gemm_n, dev, gemm_dtype)
    for _ in range(warmup):
        step()
        mm()
    times = interleaved({"step": lambda: timed(step, dev), "gemm": lambda: timed(mm, dev)}, repeats)
    step_s, gemm_s = median(times["step"]), median(times["gemm"])
    achieved, peak = flops["model"] / step_s, mm_flops / gemm_s
    return {
        "flops": flops, "counted_flops": counted,
        "counted_vs_analytic": counted / (flops["model"] + flops["recompute"]),
        "step_s": step_s, "achieved_flops_per_s": achieved, "peak_gemm_flops_per_s": peak,
        "mfu": achieved / peak,
        "settings": {"d_model": d_model, "depth": depth, "heads": heads, "batch_size": batch_size,
                     "ratio": ratio, "repeats": repeats, "warmup": warmup, "gemm_n": gemm_n,
                     "device": str(dev), "threads": torch.get_num_threads(),
                     "dtype": "bf16 autocast" if gpu else "fp32",
                     "gemm_dtype": str(gemm_dtype).removeprefix("torch."),
                     "target_mfu": 0.30},
    }


def format_table(results: dict[str, Any]) -> str:
    s, f = results["settings"], results["flops"]
    return "\n".join([
        f"MM-MAE training step, d_model {s['d_model']}, depth {s['depth']}, batch "
        f"{s['batch_size']}, {s['ratio']:.0%} hidden, {s['device']} ({s['threads']} threads)",
        f"analytic {f['model'] / 1e9:.1f} GFLOP (counter {results['counted_flops'] / 1e9:.1f}, "
        f"×{results['counted_vs_analytic']:.3f} of analytic + recompute); step "
        f"{results['step_s']:.3f} s → {results['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s; peak "
        f"GEMM {results['peak_gemm_flops_per_s'] / 1e9:.1f} GFLOP/s; MFU {results['mfu']:.1%}",
    ])


if __name__ == "__main__":
    print(format_table(run()))
