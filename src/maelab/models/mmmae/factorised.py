"""Factorised space-time MM-MAE: per-day grid tokens, per-day masks, baseline priors in the decoder.

Tokens (D = d_model; per sample, T days, P valid land patches, S series):
    grid        one token per (day, patch) the day's mask leaves visible: per grid the p² values
                (NaN → 0) and the share of valid cells → linear embedding per grid; + 2-D sin-cos
                of the patch on the patch grid + sin-cos of the day + season (day of year) +
                modality. Grids whose masks are equal (`unified` masking) share their tokens: one
                token holds each grid's embedding summed (the grids as the channels of an image
                patch); with `independent` masks every grid has its own tokens. The G token
                groups are the layout's grid dimension; the weights are per grid either way.
    series s    one token per visible day: (value, validity) → linear embedding per series;
                + day + season + modality (+ the catchment's place)
    day         one token per day, never hidden: a learned vector + the static attributes'
                embedding + day + season (+ the catchment's place and, with grids, the day's
                value of each grid at the catchment's patch: its visible cells' mean on days it
                is visible, else the visible-neighbour mean — visible information only; with
                `forcing_series`, those series' visible values and antecedent means, and with
                `donor_series` their donors' estimate on each day and the antecedent means of
                the series filled with it where its own day is hidden); the
                place where a day's grids and series meet and the catchment's days follow each
                other (a register, as in ViTs with registers)
Hidden tokens are never built (their values are never read): the encoder sees n = P − hidden
grid tokens per day and grid (every day of the data's mask hides the same number), the visible
days of each series and the T day tokens.

Encoder blocks (divided space-time attention, as in video transformers such as TimeSformer):
    day attention     per day: its day token, its G·n grid tokens and its visible series tokens
                      (a series hidden that day is a masked key); rectangular but for the series
    track attention   per (group, patch): its visible days (a varying count: padded, key mask);
                      per catchment: the day tokens and every visible series token together
    MLP               per token
Decoder (cross-attention only, as CrossMAE): a query per decoded grid token (mask token + its
place + the priors' summary + its distance in days to the patch's visible days) and per series
day (the same, + the day's catchment forcing); per block, cross-attention to the encoder's
tokens of the query's day, then to those of its track (grid queries: the same patch's visible
days; series queries: the catchment track), then an MLP. Queries never attend to each other, so
decoding a subset of the hidden grid tokens (training) gives the same prediction for each as
decoding all of them (evaluation). Heads predict per query K weights over the K priors
(`maelab.models.mmmae.priors`) and a correction: prediction = Σ_k w_k · prior_k + correction;
the weights start at the first prior and the correction at 0, so a fresh model predicts that
baseline. Without priors the heads are a plain MAE head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maelab.models.mmmae.config import ANTECEDENT_DAYS
from maelab.models.mmmae.masking import visible_donors
from maelab.models.mmmae.model import _filled, catchment_embedding
from maelab.models.mmmae.priors import (
    GRID_PRIORS,
    antecedent,
    donor_estimate,
    donor_filled,
    doy_index,
    gap_features,
    grid_priors,
    patch_at_location,
    series_priors,
    value_at_patch,
)
from maelab.nn.posemb import sincos_1d, sincos_2d
from maelab.nn.transformer import CrossAttention, SelfAttention

_YEAR = 365.25


def visible_slots(member: torch.Tensor, n: int) -> torch.Tensor:
    """(…, P) bool with exactly n True per row → (…, n) indices of the True places, ascending."""
    return (~member).to(torch.int8).argsort(dim=-1, stable=True)[..., :n]


@dataclass
class Tracks:
    """Tokens laid out (day, group, slot), regrouped by track (group, patch): its days, padded."""

    idx: torch.Tensor  # (B, K, L) flat token index (t·G + g)·n + slot; padding: any token
    mask: torch.Tensor  # (B, K, L) True = a token (slot 0 always, so no row is empty)
    inv: torch.Tensor  # (B, T·G·n) position k·L + l of each token in the (B, K·L) layout

    @classmethod
    def build(cls, member: torch.Tensor, slots: torch.Tensor) -> Tracks:
        """member (B, T, G, P) bool tokens; slots (B, T, G, n) their patches (`visible_slots`)."""
        b, t, g, p = member.shape
        n, dev = slots.shape[-1], member.device
        m = member.long()
        slot = (m.cumsum(-1) - 1).clamp_min(0)  # (B, T, G, P) slot of the patch on its day
        day = torch.arange(t, device=dev).view(1, t, 1, 1)
        grid = torch.arange(g, device=dev).view(1, 1, g, 1)
        flat = (day * g + grid) * n + slot  # (B, T, G, P)
        count = m.sum(1)  # (B, G, P) days per track
        length = max(int(count.max()), 1)
        days = (~member).to(torch.int8).argsort(dim=1, stable=True)[:, :length]  # (B, L, G, P)
        idx = flat.gather(1, days).permute(0, 2, 3, 1).reshape(b, g * p, length)
        mask = torch.arange(length, device=dev) < count[..., None]  # (B, G, P, L)
        mask = mask.reshape(b, g * p, length)
        mask[..., 0] = True
        rank = (m.cumsum(1) - 1).clamp_min(0).gather(3, slots)  # (B, T, G, n) day's rank in track
        inv = ((grid * p + slots) * length + rank).reshape(b, t * g * n)
        return cls(idx, mask, inv)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T·G·n, D) tokens → (B·K, L, D) tracks."""
        b, k, length = self.idx.shape
        i = self.idx.reshape(b, k * length, 1).expand(-1, -1, x.shape[-1])
        return x.gather(1, i).reshape(b * k, length, -1)

    def scatter(self, y: torch.Tensor, b: int) -> torch.Tensor:
        """(B·K, L, D) track outputs → (B, T·G·n, D) per token."""
        y = y.reshape(b, -1, y.shape[-1])
        return y.gather(1, self.inv[..., None].expand(-1, -1, y.shape[-1]))


@dataclass
class Layout:
    """Where every encoder token sits, built once per batch from the masks."""

    groups: list[list[str]]  # grids sharing tokens (equal masks)
    series: list[str]
    grid_slots: torch.Tensor  # (B, T, G, n) visible patches per day and group
    grid_tracks: Tracks | None  # visible grid tokens by (group, patch)
    series_days: list[torch.Tensor]  # per series (B, V_s) its visible days, ascending
    series_rank: list[torch.Tensor]  # per series (B, T) index of day t among its visible days
    series_seen: torch.Tensor  # (B, T, S) series visible on the day (day-attention key mask)
    t: int

    def day_groups(self, catch: torch.Tensor, grid: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens of each day: catch (B, N_c, D) [day tokens, series tokens], grid (B, T, G·n, D)
        → (B·T, 1 + G·n + S, D) and key mask (B·T, 1 + G·n + S)."""
        b, t, d = catch.shape[0], self.t, catch.shape[-1]
        parts, offset = [catch[:, :t, None], grid], t
        for days, rank in zip(self.series_days, self.series_rank, strict=True):
            tokens = catch[:, offset:offset + days.shape[1]]  # (B, V_s, D)
            offset += days.shape[1]
            if days.shape[1]:
                parts.append(tokens.gather(1, rank[..., None].expand(-1, -1, d))[:, :, None])
            else:  # wholly hidden in this batch: masked placeholder
                parts.append(catch.new_zeros(b, t, 1, d))
        x = torch.cat(parts, 2)  # (B, T, L_d, D)
        ones = torch.ones((b, t, 1 + grid.shape[2]), dtype=torch.bool, device=catch.device)
        mask = torch.cat([ones, self.series_seen], 2)
        return x.flatten(0, 1), mask.flatten(0, 1)

    def split_days(self, y: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B·T, L_d, D) day-attention output → catch (B, N_c, D), grid (B, T, G·n, D)."""
        y = y.reshape(b, self.t, *y.shape[1:])
        n_grid = y.shape[2] - 1 - len(self.series)
        catch = [y[:, :, 0]]
        for j, days in enumerate(self.series_days):
            catch.append(y[:, :, 1 + n_grid + j].gather(1, days[..., None].expand(-1, -1, y.shape[-1])))
        return torch.cat(catch, 1), y[:, :, 1:1 + n_grid]


def _mlp(dim: int, mlp_ratio: float, dropout: float) -> nn.Sequential:
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim), nn.Dropout(dropout))


class FactorisedBlock(nn.Module):
    """Pre-norm block: day attention, track attention, MLP (module docstring)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_day, self.norm_track, self.norm_mlp = (nn.LayerNorm(dim) for _ in range(3))
        self.day_attn = SelfAttention(dim, heads, attn_dropout)
        self.track_attn = SelfAttention(dim, heads, attn_dropout)
        self.mlp = _mlp(dim, mlp_ratio, dropout)

    def forward(self, catch: torch.Tensor, grid: torch.Tensor, lay: Layout
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """catch (B, N_c, D) day and series tokens, grid (B, T, G·n, D) → same shapes."""
        b = catch.shape[0]
        x, mask = lay.day_groups(self.norm_day(catch), self.norm_day(grid))
        dc, dg = lay.split_days(self.day_attn(x, mask), b)
        catch, grid = catch + dc, grid + dg
        catch = catch + self.track_attn(self.norm_track(catch))
        if lay.grid_tracks is not None and grid.shape[2]:
            tr = lay.grid_tracks
            flat = self.norm_track(grid).flatten(1, 2)  # (B, T·G·n, D)
            grid = grid + tr.scatter(self.track_attn(tr.gather(flat), tr.mask.flatten(0, 1)),
                                     b).view_as(grid)
        return catch + self.mlp(self.norm_mlp(catch)), grid + self.mlp(self.norm_mlp(grid))


class DecoderBlock(nn.Module):
    """Pre-norm queries: cross-attention to their day, then to their track; MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm_day, self.norm_track, self.norm_mlp = (nn.LayerNorm(dim) for _ in range(3))
        self.day_attn = CrossAttention(dim, heads, attn_dropout)
        self.track_attn = CrossAttention(dim, heads, attn_dropout)
        self.mlp = _mlp(dim, mlp_ratio, dropout)

    def forward(self, q_grid: torch.Tensor, q_series: torch.Tensor, keys: Mapping[str, Any]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """q_grid (B, T, G·h, Dd), q_series (B, T, S, Dd) → same shapes; `keys` from
        `FactorisedMMMAE.decoder_keys`."""
        b, t, ng, d = q_grid.shape
        q = torch.cat([q_grid, q_series], 2)  # (B, T, G·h + S, Dd) the queries of each day
        q = q + self.day_attn(self.norm_day(q).flatten(0, 1), keys["day"],
                              keys["day_mask"]).view_as(q)
        q_grid, q_series = q[:, :, :ng], q[:, :, ng:]
        tr = keys["query_tracks"]
        if tr is not None and ng:
            ys = self.track_attn(tr.gather(self.norm_track(q_grid).flatten(1, 2)), keys["track"],
                                 keys["track_mask"])
            q_grid = q_grid + tr.scatter(ys, b).view_as(q_grid)
        if q_series.shape[2]:
            flat = self.norm_track(q_series).flatten(1, 2)  # (B, T·S, Dd)
            q_series = q_series + self.track_attn(flat, keys["catch"]).view_as(q_series)
        return (q_grid + self.mlp(self.norm_mlp(q_grid)),
                q_series + self.mlp(self.norm_mlp(q_series)))


class FactorisedMMMAE(nn.Module):
    """MM-MAE with per-day grid tokens and factorised (day × track) attention."""

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
        d_model: int = 64,
        depth: int = 3,
        heads: int = 2,
        decoder_dim: int = 64,
        decoder_depth: int = 2,
        decoder_heads: int = 2,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        catchment_location: bool = False,
        grid_priors: Sequence[str] = GRID_PRIORS,
        series_priors: Sequence[str] = ("interpolation",),
        forcing_series: Sequence[str] = (),
        antecedent_days: Sequence[float] = ANTECEDENT_DAYS,
        donor_series: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.grid_names, self.series_names = list(grid_names), list(series_names)
        self.grid_prior_names, self.series_prior_names = list(grid_priors), list(series_priors)
        self.seq_len, self.pp, self.n_static = int(seq_len), int(patch_size) ** 2, int(n_static)
        self.n_valid = len(patch_rows)
        self.patch_rows, self.patch_cols = list(patch_rows), list(patch_cols)
        self.catchment_location = bool(catchment_location)
        self.forcing_series = list(forcing_series)
        self.antecedent_days = tuple(float(v) for v in antecedent_days)
        unknown = [s for s in self.forcing_series if s not in self.series_names]
        if unknown:
            raise ValueError(f"forcing_series {unknown}: not among the series {self.series_names}")
        self.donor_series = list(donor_series)
        unknown = [s for s in self.donor_series if s not in self.forcing_series]
        if unknown:
            raise ValueError(f"donor_series {unknown}: not among the forcing series "
                             f"{self.forcing_series}")
        d, dd = d_model, decoder_dim
        n_mod = len(self.grid_names) + len(self.series_names) + 1  # + day tokens
        kg, ks = len(self.grid_prior_names), len(self.series_prior_names)

        self.grid_embed = nn.ModuleDict({g: nn.Linear(self.pp + 1, d) for g in self.grid_names})
        self.series_embed = nn.ModuleDict({s: nn.Linear(2, d) for s in self.series_names})
        self.static_embed = nn.Linear(2 * self.n_static, d) if self.n_static else None
        self.day_token = nn.Parameter(torch.zeros(d))
        self.modality = nn.Parameter(torch.zeros(n_mod, d))
        self.absent = nn.Parameter(torch.zeros(d))
        self.season = nn.Linear(2, d)
        n_forcing = len(self.grid_names) * (2 + len(self.antecedent_days))
        self.catchment_forcing = nn.Linear(n_forcing, d) \
            if self.catchment_location and self.grid_names else None
        n_series_forcing = (len(self.forcing_series) + len(self.donor_series)) \
            * (2 + len(self.antecedent_days))
        self.series_forcing = nn.Linear(n_series_forcing, d) if n_series_forcing else None
        self.encoder = nn.ModuleList(FactorisedBlock(d, heads, mlp_ratio, dropout, attn_dropout)
                                     for _ in range(depth))
        self.encoder_norm = nn.LayerNorm(d)

        self.decoder_embed = nn.Linear(d, dd)
        self.mask_token = nn.Parameter(torch.zeros(dd))
        self.decoder_modality = nn.Parameter(torch.zeros(n_mod, dd))
        self.decoder_season = nn.Linear(2, dd)
        self.grid_prior_embed = nn.ModuleDict({g: nn.Linear(kg, dd) for g in self.grid_names}
                                              if kg else {})
        self.series_prior_embed = nn.ModuleDict({s: nn.Linear(ks, dd) for s in self.series_names}
                                                if ks else {})
        self.decoder_forcing = nn.Linear(n_forcing, dd) if self.catchment_forcing is not None \
            else None
        self.decoder_series_forcing = nn.Linear(n_series_forcing, dd) if n_series_forcing \
            else None
        self.grid_gap = nn.Linear(3, dd)  # distance of a query to its patch's visible days
        self.series_gap = nn.Linear(3, dd)  # … to its series' visible valid days
        self.decoder = nn.ModuleList(DecoderBlock(dd, decoder_heads, mlp_ratio, dropout, attn_dropout)
                                     for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(dd)
        self.grid_head = nn.ModuleDict({g: nn.Linear(dd, self.pp + kg) for g in self.grid_names})
        self.series_head = nn.ModuleDict({s: nn.Linear(dd, 1 + ks) for s in self.series_names})

        h, w = (int(v) for v in patch_grid_shape)
        idx = torch.as_tensor(self.patch_rows) * w + torch.as_tensor(self.patch_cols)  # (P,)
        self.register_buffer("patch_place", torch.stack([torch.as_tensor(self.patch_rows),
                                                         torch.as_tensor(self.patch_cols)], -1
                                                        ).float(), persistent=False)  # (P, 2)
        for prefix, dim in (("enc", d), ("dec", dd)):
            self.register_buffer(f"{prefix}_space", sincos_2d(h, w, dim)[idx], persistent=False)
            self.register_buffer(f"{prefix}_day", sincos_1d(torch.arange(self.seq_len), dim),
                                 persistent=False)
        self.climatology: dict[str, torch.Tensor] = {}
        for p in (self.day_token, self.modality, self.absent, self.mask_token, self.decoder_modality):
            nn.init.normal_(p, std=0.02)
        for heads_, k in ((self.grid_head, kg), (self.series_head, ks)):
            for head in heads_.values():  # start as the first prior, learn weights + correction
                if k:
                    nn.init.zeros_(head.weight)
                    nn.init.zeros_(head.bias)
                    with torch.no_grad():
                        head.bias[-k] = 1.0

    # ---- inputs -------------------------------------------------------------------------------
    def set_climatology(self, clim: Mapping[str, torch.Tensor]) -> None:
        """Daily climatologies in model units (grids (366, P, p²), series (366, C)) for the
        climatology prior; kept off the state dict (recomputed from the training data)."""
        self.climatology = {k: v.float() for k, v in clim.items()}

    def _clim(self, name: str, batch: Mapping[str, Any], doy: torch.Tensor,
              slots: torch.Tensor | None = None) -> torch.Tensor | None:
        """Climatology of the window days doy (B, T): grids at the patches `slots` (B, T, h) →
        (B, T, h, p²), series → (B, T); None when it is not a prior."""
        names = self.grid_prior_names if name in self.grid_names else self.series_prior_names
        if "climatology" not in names:
            return None
        if name not in self.climatology:
            raise ValueError(f"the climatology prior of {name} needs set_climatology(...) first")
        c = self.climatology[name]
        if c.device != doy.device:  # moved once to the batch's device
            c = self.climatology[name] = c.to(doy.device)
        return c[doy[..., None], slots] if name in self.grid_names else \
            c[doy, batch["catchment"][:, None]]

    def included(self, present: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Grids and series present in at least one sample of the batch (those get tokens)."""
        keep = [n for n in (*self.grid_names, *self.series_names) if bool(present[n].any())]
        return [g for g in self.grid_names if g in keep], [s for s in self.series_names if s in keep]

    @staticmethod
    def season_angle(time: torch.Tensor) -> torch.Tensor:
        """(B, T) days since 1970-01-01 → (B, T, 2) sin, cos of the annual phase."""
        a = (2 * math.pi / _YEAR) * time.double()
        return torch.stack([a.sin(), a.cos()], -1).float()

    @staticmethod
    def _same_count(h: torch.Tensor, what: str) -> int:
        """Hidden count of each row of `h` (…, units), which must be the same everywhere."""
        counts = h.sum(-1).flatten()
        if bool((counts != counts[0]).any()):
            raise ValueError(f"every sample must hide the same number of {what}; hidden counts: "
                             f"{sorted(set(counts.tolist()))}")
        return int(counts[0])

    @staticmethod
    def groups(masks: Mapping[str, torch.Tensor], grids: list[str]) -> list[list[str]]:
        """The included grids grouped by equal masks (`unified`: one group), in order."""
        out: list[list[str]] = []
        for g in grids:
            for group in out:
                first = masks[group[0]]
                if masks[g] is first or torch.equal(masks[g], first):
                    group.append(g)
                    break
            else:
                out.append([g])
        return out

    def layout(self, batch: Mapping[str, Any], grids: list[str], series: list[str]) -> Layout:
        """Visible grid slots and tracks, visible series days (the encoder's token layout)."""
        b, t = batch["time"].shape
        dev = batch["time"].device
        groups = self.groups(batch["grid_mask"], grids)
        if groups:
            hidden = torch.stack([batch["grid_mask"][gr[0]] for gr in groups], 2)  # (B, T, G, P)
            n = self.n_valid - self._same_count(hidden, "patches per day and grid")
            slots = visible_slots(~hidden, n)
            tracks = Tracks.build(~hidden, slots) if n else None
        else:
            slots, tracks = torch.zeros((b, t, 0, 0), dtype=torch.long, device=dev), None
        days, ranks, seen = [], [], []
        for s in series:
            h = batch["series_mask"][s]  # (B, T)
            v = t - self._same_count(h, f"days of {s}")
            days.append(visible_slots(~h, v))
            ranks.append(((~h).long().cumsum(1) - 1).clamp_min(0).clamp_max(max(v - 1, 0)))
            seen.append(~h)
        seen_t = torch.stack(seen, -1) if seen else torch.zeros((b, t, 0), dtype=torch.bool,
                                                                device=dev)
        return Layout(groups, series, slots, tracks, days, ranks, seen_t, t)

    def _absent(self, e: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Replace the tokens of samples lacking the modality by the `absent` embedding."""
        if bool(present.all()):
            return e
        shape = (-1, *[1] * (e.dim() - 1))
        return torch.where(present.view(shape), e, self.absent.to(e.dtype))

    def forcing_at_catchment(self, batch: Mapping[str, Any], grids: list[str]) -> torch.Tensor:
        """(B, T, grids · (2 + A)) each grid's daily value at the catchment's patch (the valid
        patch nearest to `location`), whether that patch was visible, and the value's A antecedent
        means over `antecedent_days` (3, 10 and 30 by default; `antecedent`: what a catchment's
        stores integrate); 0 for a grid absent from the batch and where the place is unknown.
        Visible cells only (`value_at_patch`)."""
        patch, known = patch_at_location(batch["location"], self.patch_place)  # (B,) each
        b, t = batch["time"].shape
        parts = []
        with torch.no_grad():
            for g in self.grid_names:
                if g not in grids:
                    parts.append(torch.zeros(b, t, 2 + len(self.antecedent_days),
                                             device=patch.device))
                    continue
                value, seen = value_at_patch(batch["grids"][g], batch["grid_valid"][g],
                                             batch["grid_mask"][g], patch, self.patch_rows,
                                             self.patch_cols)
                parts.append(torch.cat([value[..., None], seen.float()[..., None],
                                        antecedent(value[..., None], self.antecedent_days)], -1)
                             * known.view(b, 1, 1))
        return torch.cat(parts, -1)

    def _seen_features(self, x: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """(B, T, 2 + A): the value where seen (0 elsewhere), whether it is, and its A antecedent
        means over `antecedent_days` taken over the seen days only (0 before the first)."""
        x = torch.where(seen, x.float(), 0.0)[..., None]  # (B, T, 1)
        w = seen.float()[..., None]
        num, den = antecedent(x, self.antecedent_days), antecedent(w, self.antecedent_days)
        seen_before = den > 0  # some seen day up to t
        mean = torch.where(seen_before, num / torch.where(seen_before, den, 1.0), 0.0)
        return torch.cat([x, w, mean], -1)

    def forcing_from_series(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """(B, T, (forcing + donor series) · (2 + A)): each of `forcing_series` on its visible
        valid days (`_seen_features`), then for each of `donor_series` its donors' estimate
        (`donor_estimate`: visible donor days only) with whether there is one, and the antecedent
        means of the series filled with the estimate where its own day is not visible; 0 where
        the series is absent. The catchment's forcing when it comes as series rather than grids
        (CAMELS)."""
        parts, donors = [], []
        with torch.no_grad():
            for s in self.forcing_series:
                seen = batch["series_valid"][s] & ~batch["series_mask"][s] \
                    & batch["present"][s].view(-1, 1)  # (B, T)
                parts.append(self._seen_features(batch["series"][s], seen))
                if s not in self.donor_series:
                    continue
                if "donor_mask" not in batch:
                    raise ValueError(f"the network reads donors of {s} (data.donors.series) and "
                                     "the batch has none")
                d = batch["donors"]
                est, has = donor_estimate(d["series"][s], visible_donors(batch, s),
                                          d["weight"][s])  # (B, T)
                filled, known = donor_filled(batch["series"][s], seen, est, has)
                ante = self._seen_features(filled, known)[..., 2:]  # (B, T, A)
                donors.append(torch.cat([est[..., None], has.float()[..., None], ante], -1))
        return torch.cat(parts + donors, -1)

    # ---- encoder ------------------------------------------------------------------------------
    def encode(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Encoder over the visible tokens only. Returns catch (B, N_c, D) [day tokens, visible
        series tokens], grid (B, T, G·n, D) [visible grid tokens per day], the layout."""
        grids, series = self.included(batch["present"])
        lay = self.layout(batch, grids, series)
        b, t = batch["time"].shape
        season = self.season(self.season_angle(batch["time"]))  # (B, T, D)
        at_day = self.enc_day + season  # (B, T, D)
        place = catchment_embedding(batch, at_day.shape[-1])[:, None] if self.catchment_location \
            else 0.0
        day = self.day_token + self.modality[-1] + at_day + place
        if self.n_static:
            valid = batch["static_valid"]
            x = torch.cat([_filled(batch["static"], valid), valid.to(batch["static"].dtype)], -1)
            day = day + self.static_embed(x)[:, None]
        forcing = None
        if self.catchment_forcing is not None and grids:
            forcing = self.forcing_at_catchment(batch, grids)  # (B, T, F)
            day = day + self.catchment_forcing(forcing)
        series_forcing = None
        if self.series_forcing is not None:
            series_forcing = self.forcing_from_series(batch)  # (B, T, F_s)
            day = day + self.series_forcing(series_forcing)
        catch = [day]
        for j, s in enumerate(series):
            i = lay.series_days[j]  # (B, V_s)
            x, valid = batch["series"][s].gather(1, i), batch["series_valid"][s].gather(1, i)
            e = self.series_embed[s](torch.stack([_filled(x, valid), valid.to(x.dtype)], -1))
            pos = at_day.gather(1, i[..., None].expand(-1, -1, at_day.shape[-1]))
            m = self.modality[len(self.grid_names) + self.series_names.index(s)]
            catch.append(self._absent(e, batch["present"][s]) + pos + m + place)
        grid = []
        rows = torch.arange(b, device=season.device)[:, None, None]
        days = torch.arange(t, device=season.device)[None, :, None]
        for j, group in enumerate(lay.groups):
            p = lay.grid_slots[:, :, j]  # (B, T, n)
            e = self.enc_space[p] + at_day[:, :, None]  # (B, T, n, D)
            for g in group:  # each grid's embedding of its values: the token's channels
                v = batch["grid_valid"][g][rows, days, p]  # (B, T, n, p²) visible tokens only
                x = torch.cat([_filled(batch["grids"][g][rows, days, p], v),
                               v.to(torch.float32).mean(-1, keepdim=True)], -1)
                e = e + self._absent(self.grid_embed[g](x), batch["present"][g]) \
                    + self.modality[self.grid_names.index(g)]
            grid.append(e)
        d = day.shape[-1]
        grid_t = torch.cat(grid, 2) if grid else day.new_zeros(b, t, 0, d)
        catch_t = torch.cat(catch, 1)
        for block in self.encoder:
            catch_t, grid_t = block(catch_t, grid_t, lay)
        return {"catch": self.encoder_norm(catch_t), "grid": self.encoder_norm(grid_t),
                "layout": lay, "forcing": forcing, "series_forcing": series_forcing}

    # ---- decoder ------------------------------------------------------------------------------
    def decoder_keys(self, enc: Mapping[str, Any], query_tracks: Tracks | None) -> dict[str, Any]:
        """Encoder tokens in decoder width, grouped for the decoder's cross-attention."""
        lay: Layout = enc["layout"]
        catch, grid = self.decoder_embed(enc["catch"]), self.decoder_embed(enc["grid"])
        day, day_mask = lay.day_groups(catch, grid)
        keys: dict[str, Any] = {"catch": catch, "day": day, "day_mask": day_mask,
                                "query_tracks": query_tracks, "track": None, "track_mask": None}
        if query_tracks is not None and lay.grid_tracks is not None:
            keys["track"] = lay.grid_tracks.gather(grid.flatten(1, 2))  # (B·K, L, Dd)
            keys["track_mask"] = lay.grid_tracks.mask.flatten(0, 1)
        elif query_tracks is not None:  # nothing visible of any grid: no track keys
            keys["query_tracks"] = None
        return keys

    def decode(self, batch: Mapping[str, Any], enc: Mapping[str, Any],
               decode: Mapping[str, torch.Tensor] | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Predictions (model units) of every hidden grid token in `decode` (default: every
        hidden one) and of every series day; see `forward`."""
        lay: Layout = enc["layout"]
        b, t = batch["time"].shape
        doy = doy_index(batch["time"])
        at_day = self.dec_day + self.decoder_season(self.season_angle(batch["time"]))  # (B, T, Dd)
        dd = at_day.shape[-1]
        out: dict[str, dict[str, torch.Tensor]] = {"grids": {}, "grid_slots": {}, "series": {},
                                                   "grid_hidden": {}, "series_hidden": {}}
        # grid queries: the decoded hidden tokens of each day, one per token group and patch
        grids = [g for group in lay.groups for g in group]
        targets = {g: (batch["grid_mask"][g] if decode is None else decode[g]) for g in grids}
        q_grid, slots, priors, h = [], None, {}, 0
        member = None
        if lay.groups:
            for group in lay.groups:
                if any(not torch.equal(targets[g], targets[group[0]]) for g in group[1:]):
                    raise ValueError(f"grids sharing tokens ({group}) must decode the same ones")
            member = torch.stack([targets[gr[0]] for gr in lay.groups], 2)  # (B, T, G, P)
            hidden = torch.stack([batch["grid_mask"][gr[0]] for gr in lay.groups], 2)
            if bool((member & ~hidden).any()):
                raise ValueError("decode may only select hidden grid tokens")
            h = self._same_count(member, "decoded patches per day and grid")
            slots = visible_slots(member, h)  # (B, T, G, h)
        query_tracks = Tracks.build(member, slots) if h else None
        for j, group in enumerate(lay.groups):
            p = slots[:, :, j]  # (B, T, h)
            gaps = gap_features(~batch["grid_mask"][group[0]])  # (B, T, P, 3)
            gaps = gaps.gather(2, p[..., None].expand(-1, -1, -1, 3))  # (B, T, h, 3)
            q = self.mask_token + self.dec_space[p] + at_day[:, :, None] + self.grid_gap(gaps)
            for g in group:
                q = q + self.decoder_modality[self.grid_names.index(g)]
                if self.grid_prior_names:
                    with torch.no_grad():  # inputs computed from visible values
                        priors[g] = grid_priors(
                            self.grid_prior_names, batch["grids"][g], batch["grid_valid"][g],
                            batch["grid_mask"][g], p, self.patch_rows, self.patch_cols,
                            self._clim(g, batch, doy, p))  # (B, T, h, K, p²)
                    q = q + self.grid_prior_embed[g](priors[g].mean(-1))
            q_grid.append(q)
        q_grid_t = torch.cat(q_grid, 2) if q_grid else at_day.new_zeros(b, t, 0, dd)
        # series queries: every day of every series
        q_series, s_priors = [], {}
        place = catchment_embedding(batch, dd)[:, None] if self.catchment_location else 0.0
        if enc["forcing"] is not None:  # the catchment's forcing of the query's day
            place = place + self.decoder_forcing(enc["forcing"])  # (B, T, Dd)
        if enc["series_forcing"] is not None:  # … and from the forcing series
            place = place + self.decoder_series_forcing(enc["series_forcing"])
        for s in lay.series:
            known = batch["series_valid"][s] & ~batch["series_mask"][s]  # (B, T)
            q = self.mask_token + at_day + place + self.series_gap(gap_features(known[..., None])[:, :, 0]) \
                + self.decoder_modality[len(self.grid_names) + self.series_names.index(s)]
            if self.series_prior_names:
                with torch.no_grad():
                    s_priors[s] = series_priors(self.series_prior_names, batch["series"][s],
                                                batch["series_valid"][s], batch["series_mask"][s],
                                                self._clim(s, batch, doy),
                                                batch.get("regression_prior", {}).get(s))  # (B, T, K)
                q = q + self.series_prior_embed[s](s_priors[s])
            q_series.append(q)
        q_series_t = torch.stack(q_series, 2) if q_series else at_day.new_zeros(b, t, 0, dd)
        keys = self.decoder_keys(enc, query_tracks)
        for block in self.decoder:
            q_grid_t, q_series_t = block(q_grid_t, q_series_t, keys)
        q_grid_t, q_series_t = self.decoder_norm(q_grid_t), self.decoder_norm(q_series_t)
        for j, group in enumerate(lay.groups):
            q = q_grid_t[:, :, j * h:(j + 1) * h]  # (B, T, h, Dd) the group's queries
            for g in group:
                y = self.grid_head[g](q).float()  # (B, T, h, p² + K)
                out["grids"][g] = self._combine(y, priors.get(g))  # (B, T, h, p²)
                out["grid_slots"][g] = slots[:, :, j]
                out["grid_hidden"][g] = targets[g]
        for j, s in enumerate(lay.series):
            y = self.series_head[s](q_series_t[:, :, j]).float()  # (B, T, 1 + K)
            pri = s_priors[s][..., None] if s in s_priors else None  # (B, T, K, 1)
            out["series"][s] = self._combine(y, pri)[..., 0]
            out["series_hidden"][s] = batch["series_mask"][s]
        return out

    @staticmethod
    def _combine(y: torch.Tensor, priors: torch.Tensor | None) -> torch.Tensor:
        """Head output y (…, V + K) and priors (…, K, V) → Σ_k w_k prior_k + correction (…, V)."""
        if priors is None:
            return y
        k = priors.shape[-2]
        w, corr = y[..., -k:], y[..., :-k]
        return (w[..., None] * priors.float()).sum(-2) + corr

    def forward(self, batch: Mapping[str, Any], decode: Mapping[str, torch.Tensor] | None = None
                ) -> dict[str, dict[str, torch.Tensor]]:
        """Batch (HydroDataModule format with masks) → {"grids": {g: (B, T, h, p²)} the
        predictions of the decoded tokens, "grid_slots": {g: (B, T, h)} their patches,
        "grid_hidden": {g: (B, T, P)} the decoded tokens as a mask (`decode`, or the whole grid
        mask: h hidden patches a day), "series": {s: (B, T)}, "series_hidden": {s: (B, T)}} in
        model units. `expand_grids` puts the grid predictions on the (B, T, P, p²) layout."""
        return self.decode(batch, self.encode(batch), decode)


def expand_grids(out: Mapping[str, Any], n_patches: int) -> dict[str, Any]:
    """`out` with its decoded grid predictions (B, T, h, p²) placed on the full (B, T, P, p²)
    patch layout (0 at the tokens not decoded); outputs without `grid_slots` are full already."""
    if "grid_slots" not in out:
        return dict(out)
    grids = {}
    for g, pred in out["grids"].items():
        b, t, _, pp = pred.shape
        full = pred.new_zeros(b, t, n_patches, pp)
        grids[g] = full.scatter(2, out["grid_slots"][g][..., None].expand(-1, -1, -1, pp), pred)
    return {k: v for k, v in out.items() if k != "grid_slots"} | {"grids": grids}
