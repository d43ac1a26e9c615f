"""Factorised MM-MAE: per-day masks reach the model unchanged, hidden values stay hidden, the
grouped attention equals attention computed group by group, decoder queries are independent,
a fresh model predicts its first prior (the baseline), and the priors equal the baselines."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from maelab.masking.noise import KeyedNoise
from maelab.models.mmmae.factorised import FactorisedMMMAE, Tracks, expand_grids, visible_slots
from maelab.models.mmmae.masking import decode_subset
from maelab.models.mmmae.priors import grid_priors, normalised_climatology, series_priors
from maelab.nn.transformer import SelfAttention
from maelab.scoring.hydro_metrics import interpolate_days, neighbour_mean
from tests.test_mmmae_model import COLS, GRIDS, ROWS, SERIES, A, B, T, make_batch

P, PP = len(ROWS), 4
N_CATCHMENTS = 5


def make_factorised(**kw: Any) -> FactorisedMMMAE:
    torch.manual_seed(0)
    args = {"n_static": A, "d_model": 16, "depth": 2, "heads": 2, "decoder_dim": 8,
            "decoder_depth": 2, "decoder_heads": 2, "catchment_location": True} | kw
    model = FactorisedMMMAE(GRIDS, SERIES, T, 2, ROWS, COLS, (4, 4), **args).eval()
    g = torch.Generator().manual_seed(5)
    clim = {n: torch.rand(366, P, PP, generator=g) * 5 for n in GRIDS}
    clim |= {n: torch.rand(366, N_CATCHMENTS, generator=g) * 3 for n in SERIES}
    stats = {n: {"mean": 1.0, "std": 2.0, "log": n == "riverflow"} for n in (*GRIDS, *SERIES)}
    model.set_climatology(normalised_climatology(clim, stats))
    return model


def batch_with_location(strategy: str = "unified", seed: int = 0) -> dict[str, Any]:
    batch = make_batch(strategy, seed=seed)
    batch["location"] = torch.tensor([[1.0, 1.0], [3.0, 0.0], [float("nan"), float("nan")]])
    return batch


@pytest.mark.parametrize("strategy", ["unified", "independent"])
def test_per_day_masks_reach_the_model_unchanged(strategy: str) -> None:
    """A grid token is visible exactly when the data's mask leaves that patch visible that day:
    the encoder's tokens, the tracks and the decoded (scored) tokens follow the mask. Grids with
    one mask (`unified`) share their tokens, `independent` grids have their own."""
    model, batch = make_factorised(), batch_with_location(strategy)
    enc = model.encode(batch)
    lay = enc["layout"]
    n = P - round(0.5 * P)
    assert lay.groups == ([list(GRIDS)] if strategy == "unified" else [[g] for g in GRIDS])
    n_groups = len(lay.groups)
    assert enc["grid"].shape == (B, T, n_groups * n, 16)
    for j, group in enumerate(lay.groups):
        seen = torch.zeros(B, T, P, dtype=torch.bool).scatter(2, lay.grid_slots[:, :, j], True)
        for g in group:
            assert torch.equal(seen, ~batch["grid_mask"][g])
    for j, s in enumerate(SERIES):
        days = torch.zeros(B, T, dtype=torch.bool).scatter(1, lay.series_days[j], True)
        assert torch.equal(days, ~batch["series_mask"][s])
    assert enc["catch"].shape[1] == T + sum(int((~batch["series_mask"][s][0]).sum()) for s in SERIES)
    # each (group, patch) track holds exactly its visible days
    tr = lay.grid_tracks
    code = torch.arange(T).view(1, T, 1, 1) * 100 + torch.arange(n_groups).view(1, 1, -1, 1) * 10
    code = (code + lay.grid_slots).float().reshape(B, -1, 1)  # day·100 + group·10 + patch
    tracks = tr.gather(code).reshape(B, n_groups * P, -1)
    for b in range(B):
        for j, group in enumerate(lay.groups):
            for p in range(P):
                days = (~batch["grid_mask"][group[0]][b, :, p]).nonzero().flatten()
                row = tracks[b, j * P + p][tr.mask[b, j * P + p]]
                torch.testing.assert_close(row, (days * 100 + j * 10 + p).float())
    torch.testing.assert_close(tr.scatter(tr.gather(code), B), code)
    out = model(batch)
    for g in GRIDS:
        assert torch.equal(out["grid_hidden"][g], batch["grid_mask"][g])
    for s in SERIES:
        assert torch.equal(out["series_hidden"][s], batch["series_mask"][s])


def _with_other_hidden_values(batch: dict[str, Any], seed: int) -> dict[str, Any]:
    """`batch` with other values (and validity) at every hidden place."""
    other = make_batch(seed=seed)
    changed = {**batch, "grids": {}, "grid_valid": {}, "series": {}, "series_valid": {}}
    for n in GRIDS:
        hid = batch["grid_mask"][n][..., None]
        changed["grids"][n] = torch.where(hid, 1e3 * other["grids"][n], batch["grids"][n])
        changed["grid_valid"][n] = torch.where(hid, other["grid_valid"][n], batch["grid_valid"][n])
    for n in SERIES:
        hid = batch["series_mask"][n]
        changed["series"][n] = torch.where(hid, 1e3 + other["series"][n], batch["series"][n])
        changed["series_valid"][n] = torch.where(hid, other["series_valid"][n],
                                                 batch["series_valid"][n])
    return changed


@pytest.mark.parametrize("strategy", ["unified", "independent"])
def test_hidden_values_cannot_change_the_encoder_output_nor_the_predictions(strategy: str) -> None:
    model, batch = make_factorised(), batch_with_location(strategy)
    ref, ref_out = model.encode(batch), model(batch)
    changed = _with_other_hidden_values(batch, seed=1)
    enc = model.encode(changed)
    for part in ("catch", "grid"):
        torch.testing.assert_close(enc[part], ref[part], rtol=0, atol=0)
    out = model(changed)  # nor the priors or the reconstructions
    for part in ("grids", "series"):
        for n, x in ref_out[part].items():
            torch.testing.assert_close(out[part][n], x, rtol=0, atol=0)
    visible = make_batch(seed=1)  # a visible value changes it
    visible |= {k: batch[k] for k in ("grid_mask", "series_mask", "location")}
    assert not torch.allclose(model.encode(visible)["grid"], ref["grid"])


def test_day_and_track_attention_equal_attention_group_by_group() -> None:
    """The padded, masked grouped attention of a block equals plain full attention run on each
    day's tokens and on each track's tokens separately (the reference computation)."""
    model, batch = make_factorised(), batch_with_location("independent")
    lay = model.layout(batch, list(GRIDS), list(SERIES))
    torch.manual_seed(1)
    n_catch = T + sum(int((~batch["series_mask"][s][0]).sum()) for s in SERIES)
    catch = torch.randn(B, n_catch, 16)
    n_groups = len(lay.groups)
    grid = torch.randn(B, T, n_groups * lay.grid_slots.shape[-1], 16)
    attn = SelfAttention(16, 2).eval()
    # day attention, grouped and masked
    x, mask = lay.day_groups(catch, grid)
    dc, dg = lay.split_days(attn(x, mask), B)
    for b in range(B):
        for t in range(T):
            tokens = [catch[b, t:t + 1], grid[b, t]]
            where = [("catch", t)]  # where each reference token came from
            offset = T
            for j in range(len(SERIES)):
                days = lay.series_days[j][b].tolist()
                if t in days:
                    tokens.append(catch[b, offset + days.index(t)][None])
                    where.append(("catch", offset + days.index(t)))
                offset += len(days)
            ref = attn(torch.cat(tokens)[None])[0]  # full attention over the day's tokens
            torch.testing.assert_close(dc[b, t], ref[0])
            torch.testing.assert_close(dg[b, t], ref[1:1 + grid.shape[2]])
            for k, (_, i) in enumerate(where[1:]):
                torch.testing.assert_close(dc[b, i], ref[1 + grid.shape[2] + k])
    # track attention over each (grid, patch): its visible days only
    tr = lay.grid_tracks
    flat = grid.flatten(1, 2)
    got = tr.scatter(attn(tr.gather(flat), tr.mask.flatten(0, 1)), B).view_as(grid)
    n = lay.grid_slots.shape[-1]
    for b in range(B):
        for j in range(n_groups):
            for p in range(P):
                at = (lay.grid_slots[b, :, j] == p).nonzero()  # (days, slot)
                if not len(at):
                    continue
                tokens = grid[b, at[:, 0], j * n + at[:, 1]]
                torch.testing.assert_close(got[b, at[:, 0], j * n + at[:, 1]], attn(tokens[None])[0])


def test_a_single_day_is_full_attention_over_that_day() -> None:
    """With one day, day attention is full attention over every visible token of the day."""
    model, batch = make_factorised(), batch_with_location()
    one = {**batch, "time": batch["time"][:, :1],
           "grid_mask": {g: m[:, :1] for g, m in batch["grid_mask"].items()},
           "series_mask": {s: torch.zeros(B, 1, dtype=torch.bool) for s in SERIES}}
    lay = model.layout(one, list(GRIDS), list(SERIES))
    catch, grid = torch.randn(B, 1 + len(SERIES), 16), torch.randn(B, 1, 3, 16)  # one group
    attn = SelfAttention(16, 2).eval()
    x, mask = lay.day_groups(catch, grid)
    assert bool(mask.all())
    dc, dg = lay.split_days(attn(x, mask), B)
    full = attn(torch.cat([catch[:, :1], grid[:, 0], catch[:, 1:]], 1))
    torch.testing.assert_close(torch.cat([dc[:, :1], dg[:, 0], dc[:, 1:]], 1), full)


def test_decoding_a_subset_predicts_the_same_as_decoding_everything() -> None:
    """Decoder queries never attend to each other: the training subset's predictions are the
    full reconstruction's at those tokens."""
    model, batch = make_factorised(), batch_with_location("independent")
    full = expand_grids(model(batch), P)
    noise = KeyedNoise(0, torch.arange(B))
    subset = decode_subset(noise, {g: batch["grid_mask"][g] for g in GRIDS}, 0.5)
    part = expand_grids(model(batch, subset), P)
    for g in GRIDS:
        hidden_per_day = int(batch["grid_mask"][g][0, 0].sum())
        assert (subset[g].sum(-1) == round(0.5 * hidden_per_day)).all()
        assert not (subset[g] & ~batch["grid_mask"][g]).any()
        assert torch.equal(part["grid_hidden"][g], subset[g])
        sel = subset[g]
        torch.testing.assert_close(part["grids"][g][sel], full["grids"][g][sel])
    series_only = model(batch, {g: torch.zeros_like(m) for g, m in batch["grid_mask"].items()})
    assert series_only["grids"]["precipitation"].shape == (B, T, 0, PP)
    for s in SERIES:
        torch.testing.assert_close(series_only["series"][s], full["series"][s])
    with pytest.raises(ValueError, match="hidden"):
        model(batch, {g: ~batch["grid_mask"][g] for g in GRIDS})


def test_a_fresh_model_predicts_its_first_prior() -> None:
    """Weights start at the first prior, corrections at 0: grids = the neighbour mean of the
    visible patches, series = the interpolation of the visible days."""
    model, batch = make_factorised(), batch_with_location()
    out = expand_grids(model(batch), P)
    for g in GRIDS:
        x, valid, hidden = batch["grids"][g], batch["grid_valid"][g], batch["grid_mask"][g]
        seen = valid & ~hidden[..., None]
        means = torch.where(seen, x, 0.0).sum(-1) / seen.sum(-1).clamp_min(1)
        near = neighbour_mean(means, seen.any(-1), ROWS, COLS).float()  # the test baseline
        near = near[..., None].expand_as(x)
        known = hidden[..., None] & near.isfinite()  # a day with nothing visible: the fallback
        torch.testing.assert_close(out["grids"][g][known], near[known])
        assert torch.isfinite(out["grids"][g]).all()
    for s in SERIES:
        x, valid, hidden = batch["series"][s], batch["series_valid"][s], batch["series_mask"][s]
        base = interpolate_days(x, valid & ~hidden).float()
        torch.testing.assert_close(out["series"][s], base)
    plain = make_factorised(grid_priors=(), series_priors=())(batch)  # a plain MAE head
    assert not torch.allclose(plain["series"]["riverflow"], out["series"]["riverflow"])


def test_grid_interpolation_prior_is_per_cell_interpolation_across_visible_days() -> None:
    batch = make_batch()
    g = "soil_moisture"  # no missing day
    x, valid, hidden = batch["grids"][g], batch["grid_valid"][g], batch["grid_mask"][g]
    every = torch.arange(P).expand(B, T, P)
    prior = grid_priors(["interpolation"], x, valid, hidden, every, ROWS, COLS)[..., 0, :]
    seen = valid & ~hidden[..., None]
    want = interpolate_days(x.permute(0, 2, 3, 1), seen.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    land = valid.all(1, keepdim=True).expand_as(valid)  # the ocean cell falls back
    torch.testing.assert_close(prior[land], want[land].float())
    assert torch.isfinite(prior).all()


def test_series_priors_fall_back_to_climatology_when_nothing_is_visible() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    hidden = torch.tensor([[False, True, True, False], [True, True, True, True]])
    clim = torch.full((2, 4), -1.0)
    p = series_priors(["interpolation", "climatology"], x, x.isfinite(), hidden, clim)
    torch.testing.assert_close(p[0, :, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(p[1, :, 0], clim[1])  # none visible: climatology
    torch.testing.assert_close(p[..., 1], clim)


def test_regression_prior_falls_back_to_climatology_where_it_is_not_given() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0]])
    hidden, clim = torch.ones(1, 3, dtype=torch.bool), torch.full((1, 3), -1.0)
    given = torch.tensor([[0.5, float("nan"), 0.7]])
    p = series_priors(["regression"], x, x.isfinite(), hidden, clim, given)[..., 0]
    torch.testing.assert_close(p, torch.tensor([[0.5, -1.0, 0.7]]))
    torch.testing.assert_close(series_priors(["regression"], x, x.isfinite(), hidden, clim)[..., 0],
                               clim)  # a series without trees


def test_climatology_prior_needs_the_climatology() -> None:
    torch.manual_seed(0)
    model = FactorisedMMMAE(GRIDS, SERIES, T, 2, ROWS, COLS, (4, 4), n_static=A, d_model=16,
                            depth=1, heads=2, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    with pytest.raises(ValueError, match="set_climatology"):
        model(batch_with_location())


def test_unequal_hidden_counts_raise() -> None:
    model, batch = make_factorised(), batch_with_location()
    batch["grid_mask"] = {g: m.clone() for g, m in batch["grid_mask"].items()}
    batch["grid_mask"]["precipitation"][0, 2, :] = True
    with pytest.raises(ValueError, match="same number of patches"):
        model(batch)


def test_tracks_of_a_patch_never_visible_are_inert() -> None:
    member = torch.zeros(1, 3, 1, 2, dtype=torch.bool)
    member[0, :, 0, 0] = True  # patch 1 never a token
    tr = Tracks.build(member, visible_slots(member, 1))
    assert tr.mask[0, 1].tolist() == [True, False, False]  # slot 0 kept: no empty row
    x = torch.randn(1, 3, 4)
    torch.testing.assert_close(tr.scatter(tr.gather(x), 1), x)


def test_catchment_forcing_is_the_visible_value_at_the_catchment_patch() -> None:
    """Day tokens get each grid's value at the catchment's patch: its visible cells' mean when
    the patch is visible that day, else the visible-neighbour mean; nothing where the place is
    unknown."""
    model, batch = make_factorised(), batch_with_location()
    forcing = model.forcing_at_catchment(batch, list(GRIDS))  # (B, T, 5 · grids)
    assert forcing.shape == (B, T, 5 * len(GRIDS))
    patch = [ROWS.index(1) + COLS[ROWS.index(1):].index(1), ROWS.index(3)]  # (1, 1) and (3, 0)
    for j, g in enumerate(GRIDS):
        x, valid, hidden = batch["grids"][g], batch["grid_valid"][g], batch["grid_mask"][g]
        seen = valid & ~hidden[..., None]
        means = torch.where(seen, x, 0.0).sum(-1) / seen.sum(-1).clamp_min(1)
        near = neighbour_mean(means, seen.any(-1), ROWS, COLS).float()
        for b, p in enumerate(patch):
            own = seen[b, :, p].any(-1)
            want = torch.where(own, means[b, :, p], near[b, :, p].nan_to_num(0.0))
            torch.testing.assert_close(forcing[b, :, 5 * j], want)
            assert torch.equal(forcing[b, :, 5 * j + 1], own.float())
            ema = want.clone()  # the 3-day antecedent mean, as a recursion
            w, total = torch.exp(torch.tensor(-1 / 3.0)), torch.ones(())
            for d in range(1, T):
                total_next = 1 + w * total
                ema[d] = (want[d] + w * total * ema[d - 1]) / total_next
                total = total_next
            torch.testing.assert_close(forcing[b, :, 5 * j + 2], ema)
    assert not forcing[2].any()  # unknown place


def test_forcing_series_are_visible_values_and_their_antecedent_means() -> None:
    """`forcing_series` features: the visible valid value (0 elsewhere), the visibility flag and
    the antecedent means over the visible valid days only; hidden values cannot change them."""
    model, batch = make_factorised(forcing_series=[SERIES[0]]), batch_with_location()
    s = SERIES[0]
    feats = model.forcing_from_series(batch)  # (B, T, 5)
    assert feats.shape == (B, T, 5)
    seen = batch["series_valid"][s] & ~batch["series_mask"][s]
    x = torch.where(seen, batch["series"][s], 0.0)
    torch.testing.assert_close(feats[..., 0], x)
    assert torch.equal(feats[..., 1], seen.float())
    for k, scale in enumerate((3.0, 10.0, 30.0)):
        for b in range(B):
            for t in range(T):
                w = torch.exp(-(t - torch.arange(t + 1)) / scale) * seen[b, :t + 1]
                want = (w * x[b, :t + 1]).sum() / w.sum() if w.sum() > 0 else torch.zeros(())
                torch.testing.assert_close(feats[b, t, 2 + k], want)
    changed = _with_other_hidden_values(batch, seed=1)
    torch.testing.assert_close(model.forcing_from_series(changed), feats, rtol=0, atol=0)
    out, ref = model(changed), model(batch)
    for n in SERIES:
        torch.testing.assert_close(out["series"][n], ref["series"][n], rtol=0, atol=0)
    with pytest.raises(ValueError, match="forcing_series"):
        make_factorised(forcing_series=["snow"])


def test_antecedent_days_set_the_forcing_scales() -> None:
    """`antecedent_days` replaces the 3/10/30-day means: one feature per scale, the same
    exponentially weighted mean as the default's at a shared scale."""
    batch = batch_with_location()
    default = make_factorised(forcing_series=[SERIES[0]]).forcing_from_series(batch)
    longer = make_factorised(forcing_series=[SERIES[0]], antecedent_days=[10, 90])
    feats = longer.forcing_from_series(batch)  # (B, T, 2 + 2)
    assert feats.shape == (B, T, 4)
    torch.testing.assert_close(feats[..., :2], default[..., :2])  # value, visibility
    torch.testing.assert_close(feats[..., 2], default[..., 3])  # the 10-day scale
    assert longer.series_forcing.in_features == 4
