"""Self-distilled masked autoencoder (SD-MAE) for multivariate time-series anomaly detection.

A shared transformer encoder, a deep *teacher* decoder and a shallow *student* decoder. How a
hidden unit is withheld from the encoder depends on the masking strategy:
    patch         tokens are patches of p steps × F features; hidden patches are removed (MAE)
    token         tokens are steps; hidden steps are replaced by a learned mask token (BERT)
    temporal      tokens are steps; hidden steps (contiguous spans) are removed (MAE)
    feature_wise  tokens are steps; hidden cells are zeroed and a mask indicator is appended
    patch_feature tokens are patches of p steps × F features; hidden cells are zeroed and a mask
                  indicator is appended (a patch with one feature hidden keeps the others)
`encoder_input="mask_tokens"` keeps hidden patches/spans in the encoder as the learned mask token
instead (the design's `x*mask + mask_token*(1-mask)`).

Decoders (`decoder`):
    self_attention   mask tokens are inserted at the hidden places; blocks attend over all tokens
    cross_attention  queries are the positional embeddings of every token; blocks attend among the
                     queries and to the encoder output (the design's `nn.TransformerDecoder`)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maelab.models.sdmae.config import DECODER_KINDS, DECODERS, ENCODER_INPUTS, HEADS
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
        encoder_input: str = "visible",
        decoder: str = "self_attention",
        head: str = "separate",
        mask_token_std: float = 0.02,
        norm: str = "pre",
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        for key, value, choices in (("encoder_input", encoder_input, ENCODER_INPUTS),
                                    ("decoder", decoder, DECODER_KINDS), ("head", head, HEADS)):
            if value not in choices:
                raise ValueError(f"{key}={value!r} not in {choices}")
        self.strategy, self.patch_size = strategy, patch_size
        self.seq_length, self.num_features = seq_length, num_features
        self.decoders = tuple(decoders)
        self.cross = decoder == "cross_attention"
        # patch/temporal: hidden units are removed before the encoder, or kept as mask tokens
        self.removes_hidden = strategy in ("patch", "temporal") and encoder_input == "visible"
        self.mask_tokens_in = strategy == "token" or (
            strategy in ("patch", "temporal") and encoder_input == "mask_tokens")
        self.cells_in = strategy in ("feature_wise", "patch_feature")  # values + indicator
        step = patch_size if strategy in ("patch", "patch_feature") else 1
        self.n_tokens = seq_length // step
        token_in = step * num_features * (2 if self.cells_in else 1)
        self.token_out = step * num_features

        self.embed = nn.Linear(token_in, d_model)
        self.mask_token = nn.Parameter(torch.zeros(d_model))
        self.register_buffer("pos", sincos_1d(torch.arange(self.n_tokens), d_model), persistent=False)
        blocks = {"norm": norm, "activation": activation}
        self.encoder = Transformer(d_model, encoder_depth, heads, mlp_ratio, dropout, attn_dropout,
                                   **blocks)
        self.decoder_embed = nn.Linear(d_model, d_model)
        depth = {"teacher": teacher_depth, "student": student_depth}
        self.decoder = nn.ModuleDict({
            name: Transformer(d_model, depth[name], heads, mlp_ratio, dropout, attn_dropout,
                              cross=self.cross, **blocks)
            for name in self.decoders
        })
        shared = nn.Linear(d_model, self.token_out) if head == "shared" else None
        self.head = nn.ModuleDict({name: shared or nn.Linear(d_model, self.token_out)
                                   for name in self.decoders})
        nn.init.normal_(self.mask_token, std=mask_token_std)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode window x (B, T, F) under the strategy-level `mask`.

        Returns (decoder input, memory): self-attention decoders get (B, N, D) tokens with mask
        tokens at the hidden places and no memory; cross-attention decoders get the positional
        queries (B, N, D) and the encoder output as memory (B, N_vis or N, D).
        """
        if self.strategy == "patch":
            tokens = self.embed(patchify_1d(x, self.patch_size))  # (B, T/p, D)
        elif self.cells_in:  # the model is told which cells are hidden
            hidden = cell_mask(mask, self.strategy, self.patch_size, self.num_features).to(x.dtype)
            cells = torch.cat([x * (1 - hidden), hidden], dim=-1)  # (B, T, 2F)
            if self.strategy == "patch_feature":
                cells = patchify_1d(cells, self.patch_size)  # (B, T/p, p·2F)
            tokens = self.embed(cells)  # (B, N, D)
        else:
            tokens = self.embed(x)  # (B, T, D)
        if self.mask_tokens_in:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.pos
        if self.removes_hidden:
            tokens, ids_keep = keep_visible(tokens, mask)  # (B, N_vis, D): hidden never seen
        latent = self.decoder_embed(self.encoder(tokens))
        if self.cross:
            return self.pos.expand(x.shape[0], -1, -1), latent
        if self.removes_hidden:
            latent = insert_mask_tokens(latent, ids_keep, self.n_tokens, self.mask_token)
        return latent + self.pos, None

    def decode(self, name: str, dec_in: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) [+ memory (B, M, D)] -> reconstruction (B, T, F) by decoder `name`."""
        out = self.head[name](self.decoder[name](dec_in, memory))  # (B, N, token_out)
        if self.strategy in ("patch", "patch_feature"):
            return unpatchify_1d(out, self.patch_size)
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, T, F), strategy-level mask -> {decoder: (B, T, F), "hidden": (B, T, F) bool}."""
        dec_in, memory = self.encode(x, mask)
        out = {name: self.decode(name, dec_in, memory) for name in self.decoders}
        out["hidden"] = cell_mask(mask, self.strategy, self.patch_size, self.num_features)
        return out
