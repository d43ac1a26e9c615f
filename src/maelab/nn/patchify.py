"""Patchify / unpatchify for series (B, T, F) and grids (..., H, W)."""

from __future__ import annotations

import torch


def patchify_1d(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, T, F) -> (B, T // p, p * F); patch n holds steps [n*p, (n+1)*p)."""
    b, t, f = x.shape
    return x.reshape(b, t // patch_size, patch_size * f)


def unpatchify_1d(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, N, p * F) -> (B, N * p, F)."""
    b, n, pf = x.shape
    return x.reshape(b, n * patch_size, pf // patch_size)


def patchify_2d(grid: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(..., H, W) -> (..., (H/p)*(W/p), p*p); patch index = patch_row * (W/p) + patch_col."""
    *lead, h, w = grid.shape
    p = patch_size
    g = grid.reshape(*lead, h // p, p, w // p, p)
    g = g.movedim(-3, -2)  # (..., H/p, W/p, p, p)
    return g.reshape(*lead, (h // p) * (w // p), p * p)


def unpatchify_2d(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """(..., (H/p)*(W/p), p*p) -> (..., H, W); inverse of `patchify_2d`."""
    *lead, _, _ = patches.shape
    p = patch_size
    g = patches.reshape(*lead, height // p, width // p, p, p)
    g = g.movedim(-2, -3)  # (..., H/p, p, W/p, p)
    return g.reshape(*lead, height, width)
