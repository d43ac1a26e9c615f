"""Optimiser and schedule shared by the LightningModules: AdamW, linear warm-up, cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn


def effective_lr(lr: float, batch_size: int, world_size: int, accumulate: int,
                 base_batch_size: int | None) -> float:
    """Linear scaling: lr × (batch × ranks × accumulation) / base_batch_size (None: lr as is)."""
    if not base_batch_size:
        return lr
    return lr * batch_size * world_size * accumulate / base_batch_size


def adamw_warmup_cosine(
    model: nn.Module, total_steps: int, lr: float, weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999), warmup_fraction: float = 0.1, min_lr_ratio: float = 0.01,
    fused: bool = True,
) -> dict:
    """Lightning `configure_optimizers` dict; no weight decay on biases, norms and embeddings.

    `fused` AdamW is the fast kernel; Lightning refuses to clip its gradients under mixed
    precision (it unscales internally), so mixed-precision runs use the default implementation.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "token" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=tuple(betas), fused=fused,
    )
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
