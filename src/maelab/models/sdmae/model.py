"""Self-distilled masked autoencoder (SD-MAE) for multivariate time-series anomaly detection.

A shared transformer encoder, a deep *teacher* decoder and a shallow *student* decoder. How a
hidden unit is withheld from the encoder depends on the masking strategy:
    patch         tokens are patches of p steps × F features; hidden patches are removed (MAE)
    token         tokens are steps; hidden steps are replaced by a learned mask token (BERT)
    temporal      tokens are steps; hidden steps (contiguous spans) are removed (MAE)
    feature_wise  tokens are steps; hidden cells are zeroed and a mask indicator is appended
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maelab.models.sdmae.config import DECODERS
from maelab.models.sdmae.masking import cell_mask
from maelab.nn.patchify import patchify_1d, unpatchify_1d
from maelab.nn.posemb import sincos_1d
from maelab.nn.tokens import insert_mask_tokens, keep_visible
from maelab.nn.transformer import Transformer


class SDMAE(nn.Module):
    """Encoder + teacher/student decoders; `forward` returns reconstructions of the window."""

    def __init__(
        self,
        seq_length: int,
        num_features: int,
        strategy: str = "patch",
        patch_size: int = 10,
        d_model: int = 64,
        heads: int = 4,
        encoder_depth: int = 3,
        teacher_depth: int = 4,
        student_depth: int = 1,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        decoders: Sequence[str] = DECODERS,
    ) -> None:
        super().__init__()
        self.strategy, self.patch_size = strategy, patch_size
        self.seq_length, self.num_features = seq_length, num_features
        self.decoders = tuple(decoders)
        self.removes_hidden = strategy in ("patch", "temporal")
        step = patch_size if strategy == "patch" else 1
        self.n_tokens = seq_length // step
        token_in = step * num_features * (2 if strategy == "feature_wise" else 1)
        self.token_out = step * num_features

        self.embed = nn.Linear(token_in, d_model)
        self.mask_token = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("pos", sincos_1d(torch.arange(self.n_tokens), d_model), persistent=False)
        self.encoder = Transformer(d_model, encoder_depth, heads, mlp_ratio, dropout, attn_dropout)
        self.decoder_embed = nn.Linear(d_model, d_model)
        depth = {"teacher": teacher_depth, "student": student_depth}
        self.decoder = nn.ModuleDict({
            name: Transformer(d_model, depth[name], heads, mlp_ratio, dropout, attn_dropout)
            for name in self.decoders
        })
        self.head = nn.ModuleDict({name: nn.Linear(d_model, self.token_out) for name in self.decoders})
        nn.init.normal_(self.mask_token, std=0.02)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decoder input (B, N, D) for window x (B, T, F) under the strategy-level `mask`."""
        if self.strategy == "patch":
            tokens = self.embed(patchify_1d(x, self.patch_size))  # (B, T/p, D)
        elif self.strategy == "feature_wise":
            hidden = mask.to(x.dtype)  # (B, T, F) the model is told which cells are hidden
            tokens = self.embed(torch.cat([x * (1 - hidden), hidden], dim=-1))  # (B, T, D)
        else:
            tokens = self.embed(x)  # (B, T, D)
        if self.strategy == "token":
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.pos
        if not self.removes_hidden:
            return self.decoder_embed(self.encoder(tokens)) + self.pos
        visible, ids_keep = keep_visible(tokens, mask)  # (B, N_vis, D): hidden never seen
        latent = self.decoder_embed(self.encoder(visible))
        return insert_mask_tokens(latent, ids_keep, self.n_tokens, self.mask_token) + self.pos

    def decode(self, name: str, dec_in: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> reconstruction (B, T, F) by decoder `name`."""
        out = self.head[name](self.decoder[name](dec_in))  # (B, N, token_out)
        if self.strategy == "patch":
            return unpatchify_1d(out, self.patch_size)
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, T, F), strategy-level mask -> {decoder: (B, T, F), "hidden": (B, T, F) bool}."""
        dec_in = self.encode(x, mask)
        out = {name: self.decode(name, dec_in) for name in self.decoders}
        out["hidden"] = cell_mask(mask, self.strategy, self.patch_size, self.num_features)
        return out
