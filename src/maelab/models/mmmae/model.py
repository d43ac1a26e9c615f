"""Multi-modal masked autoencoder (MM-MAE) for hydrology: grids, catchment series, static attributes.

Tokens (D = d_model; k = `temporal_patch` days per grid token, G = T / k groups):
    grid g      one token per (day group, valid land patch): per day the p² values (NaN → 0)
                and the share of valid cells → linear embedding per grid; + 2-D sin-cos of the
                patch (row, col) on the patch grid + 1-D sin-cos of the group's centre day + a
                learned modality embedding
    series s    one token per day: (value, validity) → linear embedding per series; + sin-cos
                of the day + modality embedding
    static      one token of the catchment attributes (values, validity), never hidden
    location    with `catchment_location`, the static and series tokens (encoder and decoder)
                also get the 2-D sin-cos of the catchment's place on the patch grid (the batch's
                `location`, NaN → nothing added), the same embedding as the grid patches there,
                so attention can find the patches over the catchment

Masking (True = hidden). Series tokens follow the day masks of the data exactly. A grid token
with k > 1 covers k days: it is hidden when the data's mask hides its patch on the group's
*first* day (each day of the data mask hides the same number of patches, so every group does
too); the whole token (all k days) is then reconstructed and scored. With k = 1 tokens and
masks coincide. `forward` returns the token-level mask expanded to days (`grid_hidden`).

Hidden tokens are removed before the single cross-modal encoder (MAE; they are not even
embedded, their values are never read); a lighter decoder of its own width and depth gets mask
tokens at their places and predicts p² values per patch and day and one value per series day.

Absent modalities (presence flags of the batch): a modality absent in every sample has no tokens
at all; one absent in only some samples keeps its tokens (same counts per sample), their content
replaced by a learned `absent` embedding; its values are invalid, so no loss reaches them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from maelab.nn.posemb import sincos_1d, sincos_2d, sincos_2d_at
from maelab.nn.tokens import insert_mask_tokens, keep_visible
from maelab.nn.transformer import Transformer
from maelab.scoring.hydro_metrics import interpolate_days


def _filled(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Values with invalid (NaN) places set to 0."""
    return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))


def catchment_embedding(batch: Mapping[str, Any], dim: int) -> torch.Tensor:
    """(B, dim) 2-D sin-cos of each catchment's place on the patch grid (the batch's `location`
    (B, 2) row, col), the embedding of the grid patches there; 0 where the place is unknown."""
    if batch.get("location") is None:
        raise ValueError("catchment_location=True needs the batch's `location` (B, 2)")
    loc = batch["location"].float()  # (B, 2) patch-grid (row, col), NaN = unknown
    known = loc.isfinite().all(-1, keepdim=True)  # (B, 1)
    return sincos_2d_at(loc[:, 0].nan_to_num(0.0), loc[:, 1].nan_to_num(0.0), dim) * known


class MMMAE(nn.Module):
    """Cross-modal MAE over grid patches, series days and a static token."""

    def __init__(
        self,
        grid_names: Sequence[str],
        series_names: Sequence[str],
        seq_len: int,
        patch_size: int,
        patch_rows: Sequence[int],
        patch_cols: Sequence[int],
        patch_grid_shape: Sequence[int],
        n_static: int = 0,
        temporal_patch: int = 1,
        d_model: int = 128,
        depth: int = 4,
        heads: int = 4,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        series_skip: str = "interpolation",
        catchment_location: bool = False,
    ) -> None:
        super().__init__()
        self.series_skip = series_skip
        self.catchment_location = bool(catchment_location)
        self.grid_names, self.series_names = list(grid_names), list(series_names)
        self.seq_len, self.k = int(seq_len), int(temporal_patch)
        self.n_groups = self.seq_len // self.k
        self.pp, self.n_static = int(patch_size) ** 2, int(n_static)
        self.n_valid = len(patch_rows)
        token_in = self.k * self.pp

        self.grid_embed = nn.ModuleDict({g: nn.Linear(self.k * (self.pp + 1), d_model)
                                         for g in self.grid_names})
        self.series_embed = nn.ModuleDict({s: nn.Linear(2, d_model) for s in self.series_names})
        self.static_embed = nn.Linear(2 * self.n_static, d_model) if self.n_static else None
        n_mod = len(self.grid_names) + len(self.series_names) + 1  # + static
        self.modality = nn.Parameter(torch.zeros(n_mod, d_model))
        self.absent = nn.Parameter(torch.zeros(d_model))
        self.encoder = Transformer(d_model, depth, heads, mlp_ratio, dropout, attn_dropout)

        self.decoder_embed = nn.Linear(d_model, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.decoder_modality = nn.Parameter(torch.zeros(n_mod, decoder_dim))
        self.decoder = Transformer(decoder_dim, decoder_depth, decoder_heads, mlp_ratio, dropout,
                                   attn_dropout)
        self.grid_head = nn.ModuleDict({g: nn.Linear(decoder_dim, token_in) for g in self.grid_names})
        self.series_head = nn.ModuleDict({s: nn.Linear(decoder_dim, 1) for s in self.series_names})
        self.prior_embed = nn.ModuleDict({s: nn.Linear(2, decoder_dim) for s in self.series_names}
                                         if series_skip != "none" else {})

        h, w = (int(v) for v in patch_grid_shape)
        idx = torch.as_tensor(patch_rows) * w + torch.as_tensor(patch_cols)  # (P,)
        centres = torch.arange(self.n_groups) * self.k + (self.k - 1) / 2  # (G,) centre day
        for prefix, dim in (("enc", d_model), ("dec", decoder_dim)):
            self.register_buffer(f"{prefix}_space", sincos_2d(h, w, dim)[idx], persistent=False)
            self.register_buffer(f"{prefix}_group", sincos_1d(centres, dim), persistent=False)
            self.register_buffer(f"{prefix}_day", sincos_1d(torch.arange(self.seq_len), dim),
                                 persistent=False)
        for p in (self.modality, self.absent, self.mask_token, self.decoder_modality):
            nn.init.normal_(p, std=0.02)
        if series_skip == "interpolation":  # start as the interpolation, learn the correction
            for head in self.series_head.values():
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    # ---- token layout -----------------------------------------------------------------------
    def included(self, present: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Grids and series present in at least one sample of the batch (those get tokens)."""
        keep = [n for n in (*self.grid_names, *self.series_names) if bool(present[n].any())]
        return [g for g in self.grid_names if g in keep], [s for s in self.series_names if s in keep]

    def _pos(self, prefix: str, grids: list[str], series: list[str]) -> torch.Tensor:
        """(N, dim) positional + modality embedding of every token of the layout."""
        space, group, day = (getattr(self, f"{prefix}_{n}") for n in ("space", "group", "day"))
        mod = self.modality if prefix == "enc" else self.decoder_modality
        parts = [mod[-1:]] if self.n_static else []
        for g in grids:
            m = mod[self.grid_names.index(g)]
            parts.append((group[:, None] + space[None] + m).flatten(0, 1))  # (G*P, dim)
        for s in series:
            parts.append(day + mod[len(self.grid_names) + self.series_names.index(s)])  # (T, dim)
        return torch.cat(parts)

    def location_embedding(self, batch: Mapping[str, Any], dim: int) -> torch.Tensor | None:
        """(B, 1, dim) sin-cos of the catchment's patch-grid place (0 where unknown), or None
        without `catchment_location`."""
        if not self.catchment_location:
            return None
        return catchment_embedding(batch, dim)[:, None]

    def grid_token_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Day mask (B, T, P) → token mask (B, G, P): the mask of each group's first day."""
        return mask[:, :: self.k]

    def expand_tokens(self, token_mask: torch.Tensor) -> torch.Tensor:
        """Token mask (B, G, P) → per-day mask (B, T, P)."""
        return token_mask.repeat_interleave(self.k, dim=1)

    # ---- encoder ----------------------------------------------------------------------------
    def _grid_inputs(self, x: torch.Tensor, valid: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Raw inputs (B, n, k·(p²+1)) of the grid tokens `ids` (B, n) (index g·P + p): per day
        the p² values (NaN → 0) and the share of valid cells. Reads only the selected tokens."""
        b, n = ids.shape
        day = (ids // self.n_valid)[..., None] * self.k + torch.arange(self.k, device=ids.device)
        rows = torch.arange(b, device=ids.device)[:, None, None]
        sel = (rows, day, (ids % self.n_valid)[..., None])  # each broadcast to (B, n, k)
        v = valid[sel]  # (B, n, k, p²)
        vals = torch.cat([_filled(x[sel], v), v.to(x.dtype).mean(-1, keepdim=True)], -1)
        return vals.reshape(b, n, -1)

    def embed(self, batch: Mapping[str, Any], visible_only: bool = True) -> dict[str, Any]:
        """Embedded tokens with positions: the visible ones (MAE encoder input) or all of them.

        Returns tokens (B, N', D), their indices `ids` (B, N') into the full layout of N tokens
        ([static] + G·P per included grid + T per included series), hidden (B, N) and the
        included `grids` / `series`. Hidden values are never read when `visible_only`.
        """
        grids, series = self.included(batch["present"])
        pos = self._pos("enc", grids, series)  # (N, D)
        ref = batch["static"]
        b, dev = ref.shape[0], ref.device
        loc = self.location_embedding(batch, pos.shape[-1])  # (B, 1, D) | None
        toks, ids, hidden, offset = [], [], [], 0

        def add(e: torch.Tensor, i: torch.Tensor, h: torch.Tensor, at_catchment: bool) -> None:
            nonlocal offset
            toks.append(e + pos[offset + i] + (loc if at_catchment and loc is not None else 0))
            ids.append(offset + i)
            hidden.append(h)
            offset += h.shape[1]

        def select(h: torch.Tensor) -> torch.Tensor:
            """(B, n) token indices to embed: visible ones (same count per sample) or all."""
            if not visible_only:
                return torch.arange(h.shape[1], device=dev).expand(b, -1)
            counts = h.sum(1)
            if bool((counts != counts[0]).any()):
                raise ValueError("every sample must hide the same number of tokens of a "
                                 f"modality; hidden counts per sample: {counts.tolist()}")
            return keep_visible(h[..., None].float(), h)[1]

        if self.n_static:
            valid = batch["static_valid"]  # (B, A)
            x = torch.cat([_filled(ref, valid), valid.to(ref.dtype)], -1)  # (B, 2A)
            add(self.static_embed(x)[:, None], torch.zeros((b, 1), dtype=torch.long, device=dev),
                torch.zeros((b, 1), dtype=torch.bool, device=dev), at_catchment=True)
        for g in grids:
            h = self.grid_token_mask(batch["grid_mask"][g]).flatten(1)  # (B, G*P)
            i = select(h)
            x = self._grid_inputs(batch["grids"][g], batch["grid_valid"][g], i)
            add(self._absent(self.grid_embed[g](x), batch["present"][g]), i, h, at_catchment=False)
        for s in series:
            h = batch["series_mask"][s]  # (B, T)
            i = select(h)
            x, valid = batch["series"][s].gather(1, i), batch["series_valid"][s].gather(1, i)
            e = self.series_embed[s](torch.stack([_filled(x, valid), valid.to(x.dtype)], -1))
            add(self._absent(e, batch["present"][s]), i, h, at_catchment=True)
        return {"tokens": torch.cat(toks, 1), "ids": torch.cat(ids, 1),
                "hidden": torch.cat(hidden, 1), "grids": grids, "series": series,
                "location": batch.get("location")}

    def _absent(self, e: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Replace the tokens of samples lacking the modality by the `absent` embedding. Always
        through `where`: DDP needs every parameter in every step's graph (and no host sync)."""
        return torch.where(present[:, None, None], e, self.absent.to(e.dtype))

    def encode(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Encoder output over the visible tokens only: latent (B, N_vis, D), ids_keep, layout."""
        emb = self.embed(batch)  # hidden tokens are never embedded nor seen
        return {"latent": self.encoder(emb["tokens"]), "ids_keep": emb["ids"],
                "n_tokens": emb["hidden"].shape[1], "grids": emb["grids"], "series": emb["series"],
                "location": emb["location"]}

    # ---- decoder ----------------------------------------------------------------------------
    def series_prior(self, batch: Mapping[str, Any], series: list[str]) -> dict[str, torch.Tensor]:
        """Per series (B, T, 2): linear interpolation of the visible valid days (0 where the
        window has none) and a flag that it exists. Uses visible values only."""
        prior = {}
        for s in series:
            known = batch["series_valid"][s] & ~batch["series_mask"][s]
            base = interpolate_days(batch["series"][s], known).float()  # (B, T), NaN if none
            prior[s] = torch.stack([base.nan_to_num(0.0), base.isfinite().float()], -1)
        return prior

    def decode(self, enc: Mapping[str, Any],
               prior: Mapping[str, torch.Tensor] | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Mask tokens at hidden places, lighter transformer, per-modality heads; with a series
        `prior` its embedding joins the decoder's series tokens and its value their output."""
        latent = self.decoder_embed(enc["latent"])  # (B, N_vis, Dd)
        x = insert_mask_tokens(latent, enc["ids_keep"], enc["n_tokens"], self.mask_token)
        x = x + self._pos("dec", enc["grids"], enc["series"])  # (B, N, Dd)
        n_grid = self.n_groups * self.n_valid
        i0 = int(self.n_static > 0)
        i = i0 + len(enc["grids"]) * n_grid  # first series token
        loc = self.location_embedding(enc, x.shape[-1])  # (B, 1, Dd) | None
        if loc is not None:  # static and series tokens sit at the catchment
            x = torch.cat([x[:, :i0] + loc, x[:, i0:i], x[:, i:] + loc], 1)
        if prior is not None:
            parts = [x[:, :i]] + [x[:, i + j * self.seq_len:i + (j + 1) * self.seq_len]
                                  + self.prior_embed[s](prior[s].to(x.dtype))
                                  for j, s in enumerate(enc["series"])]
            x = torch.cat(parts, 1)
        x = self.decoder(x)
        b, i = x.shape[0], int(self.n_static > 0)
        out: dict[str, dict[str, torch.Tensor]] = {"grids": {}, "series": {}}
        for g in enc["grids"]:
            y = self.grid_head[g](x[:, i:i + n_grid])  # (B, G*P, k·p²)
            y = y.reshape(b, self.n_groups, self.n_valid, self.k, self.pp).transpose(2, 3)
            out["grids"][g] = y.reshape(b, self.seq_len, self.n_valid, self.pp)  # (B, T, P, p²)
            i += n_grid
        for s in enc["series"]:
            y = self.series_head[s](x[:, i:i + self.seq_len])[..., 0].float()  # (B, T)
            out["series"][s] = y if prior is None else y + prior[s][..., 0]
            i += self.seq_len
        return out

    def forward(self, batch: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Batch dict (HydroDataModule format) → reconstructions of the included modalities:
        {"grids": {g: (B, T, P, p²)}, "series": {s: (B, T)}, "grid_hidden": {g: (B, T, P)},
        "series_hidden": {s: (B, T)}} (normalised units; hidden = what the model had to predict).
        """
        enc = self.encode(batch)
        prior = self.series_prior(batch, enc["series"]) if self.series_skip != "none" else None
        out = self.decode(enc, prior)
        out["grid_hidden"] = {g: self.expand_tokens(self.grid_token_mask(batch["grid_mask"][g]))
                              for g in out["grids"]}
        out["series_hidden"] = {s: batch["series_mask"][s] for s in out["series"]}
        return out
