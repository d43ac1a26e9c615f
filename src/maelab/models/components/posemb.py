"""Fixed sin-cos positional embeddings (1-D positions, 2-D grid positions)."""

from __future__ import annotations

import torch


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(...,) float positions -> (..., dim) embedding; dim must be even."""
    half = dim // 2
    freq = torch.exp(-torch.arange(half, dtype=torch.float32) * (torch.log(torch.tensor(1e4)) / half))
    ang = positions.float().unsqueeze(-1) * freq.to(positions.device)  # (..., half)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """(height * width, dim) embedding; half the channels encode the row, half the column."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.cat([sincos_1d(rows.flatten(), dim // 2), sincos_1d(cols.flatten(), dim // 2)], -1)
