"""MM-MAE training step: the default (factorised, per-day tokens) beside the joint transformer
at k = 15 days per grid token (before issue 15) and at k = 1 (full attention over per-day tokens).

The three networks are built from the composed configs (`experiment=hydro`, `experiment=hydro_joint`
and `experiment=hydro_joint model.net.temporal_patch=1`) on the UK patch layout and one synthetic
batch in the HydroDataModule format with the masks of `masking=unified` (75 % of the land patches
of every day and of the series days hidden; the same batch and masks for all three). A step is
what training does: masks already drawn, the default's decoded subset of hidden grid tokens
(`decode_fraction`), forward, `mmmae_loss`, backward, AdamW. The steps are timed interleaved in
one run (A B C, C B A, …); reported: the median seconds per step and per window, and each
joint network's time over the default's. Full attention over per-day tokens is very slow on a
CPU (its decoder attends over 25,000+ tokens), so it gets `full_repeats` steps without warm-up.

    python -m benchmarks.mmmae_step [batch_size=1] [repeats=3] [full_repeats=1]
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from benchmarks.common import compose, device_of, median, timed
from benchmarks.mmmae_encoder import GRIDS, SERIES, synthetic_batch
from maelab.core.config import load_model_config
from maelab.core.errors import ConfigError
from maelab.data.contracts import HydroInfo
from maelab.data.hydro.layout import PatchLayout, default_land_mask
from maelab.lit.optim import adamw_warmup_cosine
from maelab.masking.noise import KeyedNoise
from maelab.models.mmmae.factorised import FactorisedMMMAE
from maelab.models.mmmae.loss import mmmae_loss
from maelab.models.mmmae.masking import decode_subset
from maelab.models.mmmae.module import MMMAEModule

N_STATIC = 8
FULL_ATTENTION = "joint, k = 1 (full attention)"  # timed full_repeats times, no warm-up round
NETWORKS = {  # row: overrides of the composed config
    "factorised (default)": ["experiment=hydro"],
    "joint, k = 15": ["experiment=hydro_joint"],
    FULL_ATTENTION: ["experiment=hydro_joint", "model.net.temporal_patch=1"],
}


def _info(layout: PatchLayout, batch_size: int, seq_len: int) -> dict[str, Any]:
    names = (*GRIDS, *SERIES)
    return asdict(HydroInfo(
        batch_size=batch_size, grid_names=list(GRIDS), series_names=list(SERIES),
        present=dict.fromkeys(names, True), patch_size=layout.patch_size, seq_len=seq_len,
        n_valid_patches=layout.n_valid, n_patches=layout.n_rows * layout.n_cols,
        patch_grid_shape=[layout.n_rows, layout.n_cols], valid_patch_rows=list(layout.rows),
        valid_patch_cols=list(layout.cols), n_static=N_STATIC,
        static_names=[f"a{i}" for i in range(N_STATIC)],
        stats={n: {"mean": 0.0, "std": 1.0, "log": False} for n in names}))


def build(overrides: list[str], layout: PatchLayout, batch: dict[str, Any], seed: int,
          device: torch.device) -> tuple[torch.nn.Module, Callable[[], None]]:
    """The network of the composed config and one training step on `batch`."""
    cfg = compose([*overrides, f"data.seq_len={batch['time'].shape[1]}"])
    model = asdict(load_model_config(cfg))
    torch.manual_seed(seed)
    b, t = batch["time"].shape
    module = MMMAEModule(**{k: model[k] for k in ("net", "loss", "optim", "evaluation", "masking",
                                                   "hide_series", "seed")},
                         data_info=_info(layout, b, t))
    net = module.net.to(device).train()
    if isinstance(net, FactorisedMMMAE):  # a climatology for the climatology prior
        g = torch.Generator().manual_seed(seed)
        net.set_climatology({n: torch.randn(366, layout.n_valid, layout.patch_size ** 2, generator=g)
                             for n in GRIDS} | {n: torch.randn(366, b, generator=g) for n in SERIES})
    opt = adamw_warmup_cosine(net, 1000, 1e-3)["optimizer"]
    fraction = float(model["net"]["decode_fraction"])
    decode = None
    if isinstance(net, FactorisedMMMAE) and fraction < 1:
        noise = KeyedNoise(seed, torch.arange(b, device=device))
        decode = decode_subset(noise, {g: batch["grid_mask"][g] for g in GRIDS}, fraction)
    weights = model["loss"]["weights"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            out = net(batch) if decode is None else net(batch, decode)
            loss = mmmae_loss(out, batch, weights)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return net, step


def run(batch_size: int = 1, repeats: int = 3, warmup: int = 1, full_repeats: int = 1,
        seq_len: int = 90, overrides: Sequence[str] = (), seed: int = 0,
        device: str | None = None, networks: Sequence[str] | None = None) -> dict[str, Any]:
    """Median step seconds of the networks (default all three of NETWORKS), measured
    interleaved (module docstring); `overrides` apply to all (smoke runs: smaller networks)."""
    dev = device_of(device)
    layout = PatchLayout.build(default_land_mask(), 10, 0.5)
    batch = synthetic_batch(layout, batch_size, seq_len, 0.75, N_STATIC, seed, dev)
    batch["time"] = 11_000 + torch.arange(seq_len, device=dev).expand(batch_size, seq_len)
    batch["catchment"] = torch.arange(batch_size, device=dev)
    batch["location"] = torch.full((batch_size, 2), 5.0, device=dev)
    steps, params = {}, {}
    for name in networks or NETWORKS:
        net, steps[name] = build([*NETWORKS[name], *overrides], layout, batch, seed, dev)
        params[name] = sum(p.numel() for p in net.parameters())
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(warmup + repeats):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        for name in order:
            if name == FULL_ATTENTION and (r < warmup or len(times[name]) >= full_repeats):
                continue
            seconds = timed(steps[name], dev)
            if r >= warmup:
                times[name].append(seconds)
    base = median(times[next(iter(times))])
    rows = {name: {"step_s": median(v), "per_window_s": median(v) / batch_size,
                   "over_default": median(v) / base, "steps_timed": len(v),
                   "parameters": params[name]} for name, v in times.items()}
    return {"rows": rows, "settings": {
        "batch_size": batch_size, "repeats": repeats, "warmup": warmup, "full_repeats": full_repeats,
        "seq_len": seq_len, "overrides": list(overrides), "ratio": 0.75, "masking": "unified",
        "device": str(dev), "threads": torch.get_num_threads(), "networks": NETWORKS}}


def format_table(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [f"MM-MAE training step, batch {s['batch_size']} × {s['seq_len']} days, 75 % hidden "
             f"({s['masking']}), {s['device']} ({s['threads']} threads), median",
             f"{'network':<32}{'step (s)':>10}{'per window (s)':>16}{'× default':>11}{'steps':>7}"]
    for name, r in results["rows"].items():
        lines.append(f"{name:<32}{r['step_s']:>10.3f}{r['per_window_s']:>16.3f}"
                     f"{r['over_default']:>11.2f}{r['steps_timed']:>7d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: ``key=value`` for the integer arguments of `run` (and device=…); prints the table."""
    keys = ("batch_size", "repeats", "warmup", "full_repeats", "seq_len", "seed")
    kw: dict[str, Any] = {}
    for arg in sys.argv[1:] if argv is None else argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in (*keys, "device"):
            raise ConfigError(key, value, "key=value with key one of " + ", ".join((*keys, "device")))
        kw[key] = value if key == "device" else int(value)
    results = run(**kw)
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
