"""TinyForecaster: a plain nn.Module forecasting the last `horizon` steps of a window."""

from __future__ import annotations

import torch
from torch import nn


class TinyForecaster(nn.Module):
    def __init__(self, seq_length: int, num_features: int, horizon: int, hidden: int) -> None:
        super().__init__()
        self.horizon = horizon
        context = (seq_length - horizon) * num_features
        self.mlp = nn.Sequential(nn.Linear(context, hidden), nn.GELU(),
                                 nn.Linear(hidden, horizon * num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, F) → forecast of its last `horizon` steps (B, horizon, F), from the others."""
        b, _, f = x.shape
        return self.mlp(x[:, : -self.horizon].flatten(1)).reshape(b, self.horizon, f)
