"""Patchify / unpatchify for series (B, T, F) and grids (..., H, W).

Only `reshape` and `swapaxes` are used, so every function takes a torch tensor or a numpy array
(the hydrology patch layout patchifies numpy grids without importing torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import torch

Array = TypeVar("Array", "torch.Tensor", "np.ndarray")


def patchify_1d(x: Array, patch_size: int) -> Array:
    """(B, T, F) -> (B, T // p, p * F); patch n holds steps [n*p, (n+1)*p)."""
    b, t, f = x.shape
    return x.reshape(b, t // patch_size, patch_size * f)


def unpatchify_1d(x: Array, patch_size: int) -> Array:
    """(B, N, p * F) -> (B, N * p, F)."""
    b, n, pf = x.shape
    return x.reshape(b, n * patch_size, pf // patch_size)


def patchify_2d(grid: Array, patch_size: int) -> Array:
    """(..., H, W) -> (..., (H/p)*(W/p), p*p); patch index = patch_row * (W/p) + patch_col."""
    *lead, h, w = grid.shape
    p = patch_size
    g = grid.reshape(*lead, h // p, p, w // p, p)
    g = g.swapaxes(-3, -2)  # (..., H/p, W/p, p, p)
    return g.reshape(*lead, (h // p) * (w // p), p * p)


def unpatchify_2d(patches: Array, patch_size: int, height: int, width: int) -> Array:
    """(..., (H/p)*(W/p), p*p) -> (..., H, W); inverse of `patchify_2d`."""
    *lead, _, _ = patches.shape
    p = patch_size
    g = patches.reshape(*lead, height // p, width // p, p, p)
    g = g.swapaxes(-3, -2)  # (..., H/p, p, W/p, p)
    return g.reshape(*lead, height, width)
