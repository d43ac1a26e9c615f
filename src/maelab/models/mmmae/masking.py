"""MM-MAE masks for hydrology windows (pure functions; bool, True = hidden).

Grids: each day hides round(ratio × P) of the P valid land patches, drawn independently per
day; `unified` shares one mask across the grids, `independent` draws one per grid. Series follow
their mode (`series_modes`, default `random_days`): `random_days` hides round(ratio × T) days
(`shared`: one day mask for every such series, `independent`: one each); `all` hides every day
(the series comes from the other modalities alone); `contiguous` hides one gap of `gap_days`
consecutive days at a random place (one place for every such series when `shared`); `visible`
hides nothing (an input only). Every window hides the same count, as MAE's gather needs.
The noise is the shared keyed noise (`maelab.masking.noise`): `MMMAEModule` keys a window by
(stream, catchment, start), stream = the epoch in training (fresh masks every epoch) and -1 in
validation and test (fixed masks, identical across epochs, batch orders and batch sizes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NotRequired

import torch

from maelab.data.contracts import HydroBatch
from maelab.masking.count import hidden_count
from maelab.masking.noise import KeyedNoise, random_subset_mask
from maelab.models.mmmae.config import MaskingConfig


class MaskedHydroBatch(HydroBatch):
    """A `HydroBatch` with the masks the model trains and is evaluated on."""

    grid_mask: dict[str, torch.Tensor]  # bool (B, T, P) True = hidden; `unified`: one shared tensor
    series_mask: dict[str, torch.Tensor]  # bool (B, T) True = hidden; `shared`: one shared tensor
    donor_mask: NotRequired[dict[str, torch.Tensor]]  # bool (B, K, T) per donor series (`donors`)


def _draw(noise: KeyedNoise, cfg: MaskingConfig, streams: int, days: int, units: int) -> torch.Tensor:
    """(B, S, days, units) masks hiding round(ratio × units) per row; none when disabled."""
    if not cfg.enabled:
        return torch.zeros((noise.batch_size, streams, days, units), dtype=torch.bool,
                           device=noise.device)
    n = hidden_count(cfg.ratio, units, key="masking.ratio")
    return random_subset_mask(noise, (noise.batch_size, streams, days), units, n)


def grid_masks(noise: KeyedNoise, cfg: MaskingConfig, seq_len: int, n_valid: int,
               grid_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per grid bool (B, T, P) masks over the valid patches; `unified` grids share one tensor."""
    unified = cfg.strategy == "unified"
    m = _draw(noise, cfg, 1 if unified else len(grid_names), seq_len, n_valid)  # (B, S, T, P)
    per = [m[:, 0]] * len(grid_names) if unified else list(m.unbind(1))
    return dict(zip(grid_names, per, strict=True))


def gap_mask(noise: KeyedNoise, streams: int, seq_len: int, gap: int) -> torch.Tensor:
    """(B, S, T) bool: one run of `gap` hidden days per row, its start uniform in
    0 … T − gap (one noise draw)."""
    if not 0 < gap < seq_len:
        raise ValueError(f"gap of {gap} days in a {seq_len}-day window")
    u = noise.uniform((noise.batch_size, streams))  # (B, S)
    start = (u * (seq_len - gap + 1)).long().clamp_max(seq_len - gap)[..., None]  # (B, S, 1)
    day = torch.arange(seq_len, device=noise.device)
    return (day >= start) & (day < start + gap)


def series_masks(noise: KeyedNoise, cfg: MaskingConfig, seq_len: int,
                 series_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per series bool (B, T) day masks by `cfg.series_modes` (module docstring); `shared`
    series of one mode share one tensor. The random-day draw comes first, as it always has."""
    shared = cfg.series == "shared"
    m = _draw(noise, cfg, 1 if shared else len(series_names), 1, seq_len)[:, :, 0]  # (B, S, T)
    per = dict(zip(series_names, [m[:, 0]] * len(series_names) if shared else m.unbind(1),
                   strict=True))
    modes = {s: cfg.series_modes.get(s, "random_days") for s in series_names}
    gapped = [s for s in series_names if modes[s] == "contiguous"]
    if gapped and cfg.enabled:
        g = gap_mask(noise, 1 if shared else len(gapped), seq_len, cfg.gap_days)  # (B, S', T)
        per |= dict(zip(gapped, [g[:, 0]] * len(gapped) if shared else g.unbind(1), strict=True))
    for s in series_names:
        if modes[s] in ("all", "visible") and cfg.enabled:
            per[s] = torch.full_like(m[:, 0], modes[s] == "all")
    return per


def decode_subset(noise: KeyedNoise, hidden: Mapping[str, torch.Tensor],
                  fraction: float) -> dict[str, torch.Tensor]:
    """Per grid bool (B, T, P): round(fraction × hidden) (at least 1) of each day's hidden
    patches, the grid tokens a training step decodes and scores (the factorised decoder's
    queries are independent, so this is a subset of the full reconstruction). Grids with equal
    masks (which share their tokens) get the same subset."""
    out: dict[str, torch.Tensor] = {}
    for g, h in hidden.items():
        same = next((k for k in out if hidden[k] is h or torch.equal(hidden[k], h)), None)
        if same is not None:
            out[g] = out[same]
            continue
        n = max(round(fraction * int(h[0, 0].sum())), 1)
        u = torch.where(h, noise.uniform(tuple(h.shape)), 2.0)  # visible ranked last
        out[g] = h & (u.argsort(dim=-1).argsort(dim=-1) < n)
    return out


def window_noise(seed: int, batch: HydroBatch, stream: int) -> KeyedNoise:
    """Keyed noise of the batch's windows: (stream, catchment, start) per window."""
    start = batch["start"]
    return KeyedNoise(seed, torch.full_like(start, stream), batch["catchment"], start)


def donor_masks(batch: HydroBatch, cfg: MaskingConfig, seed: int, stream: int, n_valid: int,
                grid_names: Sequence[str], series_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per donor series (`batch["donors"]`) bool (B, K, T): each donor's days hidden exactly as
    that catchment's own window with the same start and stream hides them (the same keyed
    draws, grids first), so a donor shows only what its own window shows."""
    start, t = batch["start"], batch["time"].shape[1]
    out = {}
    for name, ids in batch["donors"]["catchment"].items():
        b, k = ids.shape
        noise = KeyedNoise(seed, torch.full((b * k,), stream, dtype=torch.int64,
                                            device=start.device),
                           ids.reshape(-1).to(start.device), start.repeat_interleave(k))
        grid_masks(noise, cfg, t, n_valid, grid_names)  # the window's first draws
        out[name] = series_masks(noise, cfg, t, series_names)[name].reshape(b, k, t)
    return out


def visible_donors(batch: MaskedHydroBatch, name: str) -> torch.Tensor:
    """(B, K, T) bool: the donor days of series `name` that are valid, present and not hidden by
    the donors' own masks (what the network and the regression baseline may read)."""
    d = batch["donors"]
    return d["valid"][name] & ~batch["donor_mask"][name] & batch["present"][name].view(-1, 1, 1)


def with_masks(batch: HydroBatch, cfg: MaskingConfig, seed: int, stream: int, n_valid: int,
               grid_names: Sequence[str], series_names: Sequence[str]) -> MaskedHydroBatch:
    """`batch` with grid and series masks drawn for its windows (grids first, then series), and
    its donors' masks when it has donors."""
    noise = window_noise(seed, batch, stream)
    t = batch["time"].shape[1]
    out = {**batch, "grid_mask": grid_masks(noise, cfg, t, n_valid, grid_names),
           "series_mask": series_masks(noise, cfg, t, series_names)}
    if "donors" in batch:
        out["donor_mask"] = donor_masks(batch, cfg, seed, stream, n_valid, grid_names,
                                        series_names)
    return out
