"""Transformer blocks on `scaled_dot_product_attention` (fused kernels when attention dropout is 0).

Pre-norm (`norm="pre"`, maelab's default: x + f(LN(x)), a final LayerNorm after the stack) or
post-norm (`norm="post"`: LN(x + f(x)), as `nn.TransformerEncoderLayer`'s default).
Self- and cross-attention take an optional key mask (True = attend) for padded groups of tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _key_mask(key_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, Nk) bool, True = attend → SDPA's (B, 1, 1, Nk) boolean mask; None stays None."""
    return None if key_mask is None else key_mask[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention; `attn_dropout` > 0 disables the fused SDPA kernel."""

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.attn_dropout = heads, attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D), key_mask (B, N) True = attend (None: all) → (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=_key_mask(key_mask),
                                             dropout_p=drop)  # (B, H, N, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Multi-head attention of queries `x` to a `context` (keys and values)."""

    def __init__(self, dim: int, heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.attn_dropout = heads, attn_dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Nq, D), context (B, Nk, D), key_mask (B, Nk) True = attend → (B, Nq, D)."""
        b, nq, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, nq, h, d // h).transpose(1, 2)  # (B, H, Nq, Dh)
        kv = self.kv(context).reshape(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)  # (2, B, H, Nk, Dh)
        drop = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=_key_mask(key_mask),
                                             dropout_p=drop)  # (B, H, Nq, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
NORMS = ("pre", "post")


class Block(nn.Module):
    """Self-attention, [cross-attention to a memory,] MLP, each a residual branch.

    pre-norm: x + Drop(Attn(LN(x))) …; post-norm: LN(x + Drop(Attn(x))) …
    """

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
        attn_dropout: float = 0.0, cross: bool = False, norm: str = "pre",
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if norm not in NORMS or activation not in ACTIVATIONS:
            raise ValueError(f"norm={norm!r} not in {NORMS} or activation={activation!r} not in "
                             f"{tuple(ACTIVATIONS)}")
        self.pre = norm == "pre"
        self.drop = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, attn_dropout)
        if cross:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = CrossAttention(dim, heads, attn_dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), ACTIVATIONS[activation](), nn.Dropout(dropout),
            nn.Linear(hidden, dim), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D); memory (B, M, D), required with `cross`."""
        if self.pre:
            x = x + self.drop(self.attn(self.norm1(x)))
            if memory is not None:
                x = x + self.drop(self.cross(self.norm_cross(x), memory))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.drop(self.attn(x)))
        if memory is not None:
            x = self.norm_cross(x + self.drop(self.cross(x, memory)))
        return self.norm2(x + self.mlp(x))


class Transformer(nn.Module):
    """A stack of `depth` blocks, followed by a final LayerNorm in pre-norm (post-norm blocks end
    normalised); with `cross`, every block also attends to a memory (a decoder in the style of
    `nn.TransformerDecoder`)."""

    def __init__(
        self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
        attn_dropout: float = 0.0, cross: bool = False, norm: str = "pre",
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, dropout, attn_dropout, cross, norm, activation)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim) if norm == "pre" else nn.Identity()

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D) -> (B, N, D); memory (B, M, D) for cross-attention blocks."""
        for block in self.blocks:
            x = block(x, memory)
        return self.norm(x)
