"""MM-MAE encoder step time: visible tokens only (MAE) vs all tokens with mask tokens in place.

Both encoders are the same MM-MAE embedding + transformer (`scaled_dot_product_attention`,
attention dropout 0) on the same batch and masks (75 % hidden by default): the MAE path embeds
and encodes only the visible tokens; the alternative embeds every token, replaces the hidden ones
by a learned mask token and encodes the full sequence. A step is forward + backward of the
encoder. The two are timed alternately in one run (same machine state); reported: the median of
`repeats` steps after `warmup` steps each, and the ratio.

    python -m benchmarks.mmmae_encoder [batch_size=4] [temporal_patch=15] [repeats=5] …
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from maelab.core.errors import ConfigError
from maelab.data.hydro.layout import PatchLayout, default_land_mask
from maelab.masking.noise import KeyedNoise
from maelab.models.mmmae.config import MaskingConfig
from maelab.models.mmmae.masking import grid_masks, series_masks
from maelab.models.mmmae.model import MMMAE

GRIDS = ("precipitation", "soil_moisture", "temperature")
SERIES = ("evaporation", "riverflow")
INT_KEYS = ("batch_size", "seq_len", "temporal_patch", "d_model", "depth", "heads", "repeats",
            "warmup", "seed", "threads")
FLOAT_KEYS = ("ratio",)


def synthetic_batch(layout: PatchLayout, batch_size: int, seq_len: int, ratio: float,
                    n_static: int, seed: int, device: torch.device) -> dict[str, Any]:
    """A random batch in the HydroDataModule format with `ratio` of patches and days hidden."""
    g = torch.Generator().manual_seed(seed)
    b, t, p, pp = batch_size, seq_len, layout.n_valid, layout.patch_size ** 2
    land = torch.from_numpy(layout.pixel_land)  # (P, p²)
    cfg = MaskingConfig(ratio=ratio)
    noise = KeyedNoise(seed, torch.arange(b))  # one key per window
    batch = {
        "grids": {n: torch.randn(b, t, p, pp, generator=g) for n in GRIDS},
        "grid_valid": {n: land.expand(b, t, p, pp) for n in GRIDS},
        "series": {n: torch.randn(b, t, generator=g) for n in SERIES},
        "series_valid": {n: torch.ones(b, t, dtype=torch.bool) for n in SERIES},
        "static": torch.randn(b, n_static, generator=g),
        "static_valid": torch.ones(b, n_static, dtype=torch.bool),
        "present": {n: torch.ones(b, dtype=torch.bool) for n in (*GRIDS, *SERIES)},
        "grid_mask": grid_masks(noise, cfg, t, p, GRIDS),
        "series_mask": series_masks(noise, cfg, t, SERIES),
    }
    return {k: {n: x.to(device) for n, x in v.items()} if isinstance(v, dict) else v.to(device)
            for k, v in batch.items()}


def _median_times(steps: dict[str, Callable[[], None]], repeats: int, warmup: int,
                  sync: Callable[[], None]) -> dict[str, float]:
    """Median seconds per call of each step, calls interleaved (one of each per round)."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def run(batch_size: int = 4, seq_len: int = 90, temporal_patch: int = 15, d_model: int = 128,
        depth: int = 4, heads: int = 4, ratio: float = 0.75, repeats: int = 5, warmup: int = 2,
        seed: int = 0, device: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Time both encoders; returns {visible_only, all_tokens: {step_s, tokens}, speedup, settings}."""
    if seq_len % temporal_patch:
        raise ConfigError("temporal_patch", temporal_patch, f"a divisor of seq_len={seq_len}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    layout = PatchLayout.build(default_land_mask(), 10, 0.5)
    n_static = 8
    model = MMMAE(GRIDS, SERIES, seq_len, layout.patch_size, layout.rows, layout.cols,
                  (layout.n_rows, layout.n_cols), n_static, temporal_patch, d_model, depth, heads,
                  attn_dropout=0.0).to(dev)
    mask_token = torch.nn.Parameter(torch.zeros(d_model, device=dev))
    batch = synthetic_batch(layout, batch_size, seq_len, ratio, n_static, seed, dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def visible_only() -> None:
        with autocast:
            latent = model.encode(batch)["latent"]  # (B, N_vis, D)
        latent.float().square().mean().backward()

    def all_tokens() -> None:
        with autocast:
            emb = model.embed(batch, visible_only=False)  # (B, N, D), hidden (B, N)
            tokens = torch.where(emb["hidden"][..., None], mask_token.to(emb["tokens"].dtype),
                                 emb["tokens"])
            latent = model.encoder(tokens)
        latent.float().square().mean().backward()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = _median_times({"visible_only": visible_only, "all_tokens": all_tokens}, repeats,
                          warmup, sync)
    with torch.no_grad():
        emb = model.embed(batch, visible_only=False)
    n_all, n_hidden = emb["hidden"].shape[1], int(emb["hidden"][0].sum())
    return {
        "visible_only": {"step_s": times["visible_only"], "tokens": n_all - n_hidden},
        "all_tokens": {"step_s": times["all_tokens"], "tokens": n_all},
        "speedup": times["all_tokens"] / times["visible_only"],
        "settings": {"batch_size": batch_size, "seq_len": seq_len, "temporal_patch": temporal_patch,
                     "d_model": d_model, "depth": depth, "heads": heads, "ratio": ratio,
                     "repeats": repeats, "warmup": warmup, "device": str(dev),
                     "threads": torch.get_num_threads(), "attn_dropout": 0.0},
    }


def format_table(results: dict[str, Any]) -> str:
    """Side-by-side table of `run` results."""
    s = results["settings"]
    lines = [f"MM-MAE encoder step (forward + backward), batch {s['batch_size']}, "
             f"{s['ratio']:.0%} hidden, temporal_patch {s['temporal_patch']}, d_model "
             f"{s['d_model']}, depth {s['depth']}, {s['device']} ({s['threads']} threads), "
             f"median of {s['repeats']}",
             f"{'encoder':<36}{'tokens':>8}{'step (s)':>12}"]
    labels = {"visible_only": "visible tokens only (MAE)",
              "all_tokens": "all tokens, mask tokens in place"}
    for key, label in labels.items():
        r = results[key]
        lines.append(f"{label:<36}{r['tokens']:>8d}{r['step_s']:>12.4f}")
    lines.append(f"speed-up of the visible-only encoder: {results['speedup']:.2f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: ``key=value`` for the arguments of `run`; prints the table."""
    kw: dict[str, Any] = {}
    for arg in sys.argv[1:] if argv is None else argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in (*INT_KEYS, *FLOAT_KEYS, "device"):
            raise ConfigError(key, value, "key=value with key one of "
                              + ", ".join((*INT_KEYS, *FLOAT_KEYS, "device")))
        kw[key] = int(value) if key in INT_KEYS else float(value) if key in FLOAT_KEYS else value
    results = run(**kw)
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
