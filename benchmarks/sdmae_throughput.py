"""SD-MAE training throughput per masking strategy: Lightning vs a minimal plain-torch loop.

Per strategy, the default config (`conf/train.yaml` with `masking=<strategy>`) builds one
DataModule and one initial set of weights, loaded into two modules. A Lightning `Trainer.fit`
(the configured trainer with no logger, checkpointing, progress bar, model summary or
validation) trains one; after each of its steps a callback runs one step of a plain loop on the
other (`SDMAEModule._loss`, backward, grad-norm clipping as configured, AdamW + schedule step),
so the two alternate step by step (A B A B …) and share every phase of the machine's load. Both
see the same DataLoader order and the same masks (`KeyedNoise` keyed by the batch's samples,
epoch 0). A Lightning step is timed from the end of the previous plain step to the end of its own
batch (data fetch, hooks, logging included), a plain step from its data fetch to its optimiser
step. Each of `rounds` fits restarts both from the same weights; the first `warmup` steps of each
are dropped. Reported: windows/s from the median step time of each, and their ratio plain /
Lightning (the Lightning overhead), per wall-clock second and per second of this process's CPU
time. On a shared CPU the CPU-time ratio is the headline: it leaves out the time other
processes hold the core (one intra-op thread, no loader workers); on an accelerator it is the
wall-clock ratio.

    python -m benchmarks.sdmae_throughput
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate

from benchmarks.common import compose, device_of, median, synchronize
from maelab.lit.optim import adamw_warmup_cosine, effective_lr
from maelab.models.sdmae.config import STRATEGIES
from maelab.pipeline import build_datamodule, build_module

Seconds = tuple[float, float]  # (wall, process CPU)


def _stamp(device: torch.device) -> Seconds:
    """(wall, process CPU) seconds now, after queued device work."""
    synchronize(device)
    return time.perf_counter(), time.process_time()


def _since(start: Seconds, device: torch.device) -> Seconds:
    now = _stamp(device)
    return now[0] - start[0], now[1] - start[1]


def plain_steps(cfg, module: L.LightningModule, dm, device: torch.device,
                total_steps: int) -> Iterator[Seconds]:
    """The training step without Lightning; each `next` runs one step and yields its seconds."""
    module.to(device).train()
    o = module.hparams.optim
    lr = effective_lr(o["lr"], dm.batch_size, 1, 1, o.get("base_batch_size"))
    sched_cfg = adamw_warmup_cosine(module.net, total_steps, lr, o["weight_decay"],
                                    tuple(o["betas"]), o["warmup_fraction"])
    opt, sched = sched_cfg["optimizer"], sched_cfg["lr_scheduler"]["scheduler"]
    clip = cfg.trainer.get("gradient_clip_val")
    batches = iter(dm.train_dataloader())
    while True:
        start = _stamp(device)
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        loss = module._loss_and_inference(batch, module._noise(batch, 0))[0]["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        opt.step()
        sched.step()
        yield _since(start, device)


class _Alternate(L.Callback):
    """After every Lightning step: time it, then run and time one plain step."""

    def __init__(self, device: torch.device, plain: Iterator[Seconds]) -> None:
        self.device, self.plain_iter = device, plain
        self.lightning: list[Seconds] = []
        self.plain: list[Seconds] = []
        self.resumed: Seconds | None = None

    def on_train_batch_end(self, *args: Any) -> None:
        if self.resumed is not None:
            self.lightning.append(_since(self.resumed, self.device))
        self.plain.append(next(self.plain_iter))
        self.resumed = _stamp(self.device)


def paired_round(cfg, lit: L.LightningModule, plain: L.LightningModule, dm, init: dict,
                 warmup: int, steps: int, device: torch.device, root: str
                 ) -> dict[str, list[Seconds]]:
    """One fit of `warmup + steps + 1` Lightning steps alternating with plain steps."""
    lit.load_state_dict(init)
    plain.load_state_dict(init)
    n = warmup + steps + 1  # the first Lightning step has no start stamp
    alternate = _Alternate(device, plain_steps(cfg, plain, dm, device, n))
    trainer = instantiate(
        cfg.trainer, accelerator=device.type, devices=1, max_steps=n, max_epochs=1,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[alternate],
        default_root_dir=root,
    )
    trainer.fit(lit, train_dataloaders=dm.train_dataloader())
    return {"lightning": alternate.lightning[warmup:], "plain": alternate.plain[warmup + 1:]}


def measure_strategy(strategy: str, steps: int, warmup: int, rounds: int,
                     overrides: Sequence[str] = (), device: str | None = None) -> dict[str, Any]:
    """Lightning and plain steps of one strategy, alternating (see the module docstring)."""
    dev = device_of(device)
    cfg = compose([f"masking={strategy}", *overrides])
    dm = build_datamodule(cfg)
    n_batches = len(dm.train_dataloader())
    if warmup + steps + 1 > n_batches:
        raise ValueError(f"warmup + steps + 1 ({warmup + steps + 1}) must be at most the "
                         f"{n_batches} batches of one epoch")
    torch.manual_seed(int(cfg.seed))
    lit = build_module(cfg, dm)
    init = copy.deepcopy(lit.state_dict())
    plain = build_module(cfg, dm)  # never attached to a trainer: epoch 0, same masks
    times: dict[str, list[Seconds]] = {"lightning": [], "plain": []}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(rounds):
            for k, v in paired_round(cfg, lit, plain, dm, init, warmup, steps, dev, root).items():
                times[k] += v
    b = int(dm.batch_size)
    out: dict[str, Any] = {"batch_size": b, "steps_timed": len(times["plain"])}
    for i, clock in enumerate(("wall", "cpu")):
        lt, pl = (median([t[i] for t in times[k]]) for k in ("lightning", "plain"))
        paired = [a[i] / p[i] for a, p in zip(times["lightning"], times["plain"], strict=True)]
        out[clock] = {"lightning_windows_per_s": b / lt, "plain_windows_per_s": b / pl,
                      "overhead_ratio": lt / pl, "median_paired_ratio": median(paired)}
    # wall clock on an accelerator; on a shared CPU the process's CPU time is the stable clock
    out["overhead_ratio"] = out["wall" if dev.type == "cuda" else "cpu"]["overhead_ratio"]
    return out


# timed steps per fit: the overhead is a per-step constant, so the fast default strategy
# (10 patch tokens) gets the most steps; the 100-token strategies are ~8x slower per step
STEPS = {"patch": 30, "token": 5, "temporal": 6, "feature_wise": 5}


def run(strategies: Sequence[str] = STRATEGIES, steps: int | Mapping[str, int] = STEPS,
        warmup: int = 2, rounds: int = 2, overrides: Sequence[str] = (),
        device: str | None = None) -> dict[str, Any]:
    """Throughput of every strategy; {strategy: {...}, settings}."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    per = {s: steps[s] if isinstance(steps, Mapping) else int(steps) for s in strategies}
    results: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*validation_step.*")
        warnings.filterwarnings("ignore", ".*treespec.*")
        for strategy in strategies:
            results[strategy] = measure_strategy(strategy, per[strategy], warmup, rounds, overrides,
                                                 device)
    results["settings"] = {"steps": per, "warmup": warmup, "rounds": rounds,
                           "overrides": list(overrides), "device": str(device_of(device)),
                           "threads": torch.get_num_threads(), "target_overhead_ratio": 1.05}
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [f"{'strategy':<14}{'Lightning w/s':>15}{'plain w/s':>12}{'ratio wall':>12}"
             f"{'ratio CPU':>11}"]
    for name, r in results.items():
        if name != "settings":
            w, c = r["wall"], r["cpu"]
            lines.append(f"{name:<14}{w['lightning_windows_per_s']:>15.1f}"
                         f"{w['plain_windows_per_s']:>12.1f}{w['overhead_ratio']:>12.3f}"
                         f"{c['overhead_ratio']:>11.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(run()))
