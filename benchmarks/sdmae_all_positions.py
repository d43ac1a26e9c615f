"""SD-MAE `all_positions` inference cost beside `last_n`, measured side by side.

The default SD-MAE (weights do not change the cost) scores the same batches of windows three ways,
alternated call by call: `last_n` (the last `mask_last_n` steps hidden, one pass), `all_positions`
(every block of `mask_last_n` steps hidden once: `passes` masks in one batched forward), and a naive
loop with one forward per block (the cost the vectorised form avoids). Reported: median seconds per
batch and the ratios to `last_n` (target for `all_positions`: ≤ 3×).

    python -m benchmarks.sdmae_all_positions
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.common import compose, device_of, median, timed
from maelab.models.sdmae.masking import block_masks
from maelab.pipeline import build_datamodule, build_module


def naive_loop(module, x: torch.Tensor) -> torch.Tensor:
    """One forward per block of `mask_last_n` steps; squared reconstruction error (B, T, F)."""
    b, t, f = x.shape
    n = module.mask_last_n
    out = torch.zeros_like(x)
    for mask in block_masks(module.strategy, b, t, f, n, t // n, module.net.patch_size, x.device):
        o = module.net(x, mask)
        out += torch.where(o["hidden"], (o["teacher"] - x) ** 2, 0.0)
    return out


def run(batch_size: int = 256, repeats: int = 7, overrides: Sequence[str] = (),
        device: str | None = None) -> dict[str, Any]:
    """Median seconds per batch of `last_n`, `all_positions` and the naive loop; ratios."""
    dev = device_of(device)
    cfg = compose([*overrides])
    dm = build_datamodule(cfg)
    torch.manual_seed(int(cfg.seed))
    module = build_module(cfg, dm).to(dev).eval()
    x = dm.dataset("test").x[:batch_size].to(dev)  # (B, T, F)
    scoring = module.hparams.scoring

    def scored(mode: str):
        def call():
            scoring["inference"] = mode
            module.step_scores(x)
        return call

    ways = {"last_n": scored("last_n"), "all_positions": scored("all_positions"),
            "naive_loop": lambda: naive_loop(module, x)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    with torch.inference_mode():
        for fn in ways.values():  # warm-up
            fn()
        for _ in range(repeats):
            for k, fn in ways.items():
                times[k].append(timed(fn, dev))
    scoring["inference"] = "last_n"
    med = {k: median(v) for k, v in times.items()}
    return {"batch_size": batch_size, "passes": int(scoring["passes"]),
            "blocks": int(dm.seq_length) // module.mask_last_n, "median_seconds": med,
            "ratio_all_positions": med["all_positions"] / med["last_n"],
            "ratio_naive_loop": med["naive_loop"] / med["last_n"], "target": 3.0,
            "met": med["all_positions"] / med["last_n"] <= 3.0}


def format_table(r: dict[str, Any]) -> str:
    s = r["median_seconds"]
    return (f"SD-MAE inference, batch {r['batch_size']}: last_n {s['last_n'] * 1e3:.1f} ms · "
            f"all_positions ({r['passes']} passes) {s['all_positions'] * 1e3:.1f} ms "
            f"({r['ratio_all_positions']:.2f}×, target ≤ {r['target']:.0f}×) · naive loop over "
            f"{r['blocks']} blocks {s['naive_loop'] * 1e3:.1f} ms ({r['ratio_naive_loop']:.2f}×)")


if __name__ == "__main__":
    print(format_table(run()))
