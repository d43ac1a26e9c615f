"""Hydrology loader time as a fraction of the MM-MAE training step, measured side by side.

The train loader of a HydroDataModule on a prepared synthetic store (1 year by default, shared
with `benchmarks.memory`; `num_workers=0`, so a batch is built in this process: memmap
slices, normalisation, validity) and the MM-MAE of the default config
(`experiment=hydro`: masks, forward, `mmmae_loss`, backward, AdamW) alternate batch by batch: fetch one
batch (timed), train one step on it (timed). Reported: median seconds of each over `repeats`
after `warmup`, windows/s of the loader, and step / loader (target ≥ 5: the loader is no
bottleneck even without worker processes).

    python -m benchmarks.hydro_step
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import compose, device_of, median, timed
from benchmarks.memory import DEFAULT_CACHE, store_kwargs
from maelab.data.hydro.datamodule import HydroDataModule
from maelab.lit.optim import adamw_warmup_cosine
from maelab.models.mmmae.loss import mmmae_loss
from maelab.pipeline import build_module


def _to(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch dict on `device`."""
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch.to(device, non_blocking=True) if torch.is_tensor(batch) else batch


def run(years: int = 1, repeats: int = 5, warmup: int = 1, seed: int = 0,
        overrides: Sequence[str] = (), cache_dir: str | Path | None = None,
        device: str | None = None) -> dict[str, Any]:
    """Alternate loader batches and training steps; medians and their ratio."""
    dev = device_of(device)
    cfg = compose(["experiment=hydro", *overrides])
    kw = store_kwargs(years, cache_dir or DEFAULT_CACHE, int(cfg.data.seq_len),
                      int(cfg.data.batch_size))
    dm = HydroDataModule(**kw, patch_size=int(cfg.data.patch_size))
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(seed)
    module = build_module(cfg, dm)
    module.use_data(dm)  # the climatology (prior and baseline), as the trainer's setup does
    module = module.to(dev)
    net = module.net.train()
    opt = adamw_warmup_cosine(net, 1000, 1e-3)["optimizer"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    batches = iter(dm.train_dataloader())
    current: dict[str, Any] = {}

    def load() -> None:
        current["batch"] = _to(next(batches), dev)

    def step() -> None:
        batch = module.masked(current["batch"], stream=0)  # as training_step does
        decode = module._decode_subset(batch, 0)
        with autocast:
            out = net(batch) if decode is None else net(batch, decode)
            loss = mmmae_loss(out, batch, {})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times: dict[str, list[float]] = {"loader": [], "step": []}
    for i in range(warmup + repeats):
        for name, fn in (("loader", load), ("step", step)):
            seconds = timed(fn, dev)
            if i >= warmup:
                times[name].append(seconds)
    loader_s, step_s = median(times["loader"]), median(times["step"])
    b = int(dm.batch_size)
    return {"loader_batch_s": loader_s, "step_s": step_s, "step_over_loader": step_s / loader_s,
            "loader_windows_per_s": b / loader_s, "step_windows_per_s": b / step_s,
            "settings": {"years": years, "batch_size": b, "seq_len": int(dm.seq_len),
                         "repeats": repeats, "warmup": warmup, "num_workers": 0,
                         "device": str(dev), "threads": torch.get_num_threads(),
                         "net": dict(cfg.model.net), "target_step_over_loader": 5.0}}


def format_table(results: dict[str, Any]) -> str:
    return (f"hydro batch of {results['settings']['batch_size']}: loader "
            f"{results['loader_batch_s'] * 1e3:.0f} ms, MM-MAE step {results['step_s'] * 1e3:.0f} ms "
            f"→ step / loader {results['step_over_loader']:.1f}×")


if __name__ == "__main__":
    print(format_table(run()))
