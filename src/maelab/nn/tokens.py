"""MAE token bookkeeping: keep visible tokens, put mask tokens back at hidden places."""

from __future__ import annotations

import torch


def keep_visible(tokens: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather visible tokens.

    tokens (B, N, D), hidden (B, N) bool with the same hidden count per row.
    Returns visible tokens (B, N_vis, D) in original order and their indices (B, N_vis).
    """
    b, n, d = tokens.shape
    n_vis = n - int(hidden[0].sum())
    # stable sort puts visible (False) first, preserving order within each group
    order = hidden.to(torch.int8).argsort(dim=1, stable=True)
    ids_keep = order[:, :n_vis]  # (B, N_vis)
    return tokens.gather(1, ids_keep.unsqueeze(-1).expand(b, n_vis, d)), ids_keep


def insert_mask_tokens(
    visible: torch.Tensor, ids_keep: torch.Tensor, n_tokens: int, mask_token: torch.Tensor
) -> torch.Tensor:
    """Scatter visible (B, N_vis, D) back to (B, N, D), mask_token (D,) at hidden places."""
    b, _, d = visible.shape
    full = mask_token.to(visible.dtype).expand(b, n_tokens, d).clone()
    return full.scatter(1, ids_keep.unsqueeze(-1).expand_as(visible), visible)
