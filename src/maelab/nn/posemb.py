"""Fixed sin-cos positional embeddings (1-D positions, 2-D grid positions)."""

from __future__ import annotations

import torch


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(...,) float positions -> (..., dim) embedding; dim must be even."""
    half = dim // 2
    freq = torch.exp(-torch.arange(half, dtype=torch.float32) * (torch.log(torch.tensor(1e4)) / half))
    ang = positions.float().unsqueeze(-1) * freq.to(positions.device)  # (..., half)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


def sincos_2d_at(rows: torch.Tensor, cols: torch.Tensor, dim: int) -> torch.Tensor:
    """(...,) float rows and columns -> (..., dim); half the channels the row, half the column."""
    return torch.cat([sincos_1d(rows, dim // 2), sincos_1d(cols, dim // 2)], -1)


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """(height * width, dim) embedding of every cell of a height × width grid (row-major)."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return sincos_2d_at(rows.flatten(), cols.flatten(), dim)
