"""Hydrology metrics and baselines on hand-built cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maelab.scoring.hydro_metrics import (
    FLOW_SCORES,
    ErrorSums,
    daily_climatology,
    day_of_year,
    denormalise,
    distribution,
    fhv,
    flv,
    interpolate_days,
    kge,
    kge_parts,
    log_nse,
    neighbour_mean,
    nse,
    per_group_scores,
)


def test_perfect_reconstruction_scores() -> None:
    obs = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    assert nse(obs, obs) == 1.0 and kge(obs, obs) == pytest.approx(1.0)
    acc = ErrorSums()
    acc.add(torch.tensor(obs), torch.tensor(obs), torch.ones(5, dtype=torch.bool))
    assert acc.result() == {"rmse": 0.0, "mae": 0.0, "n": 5}


def test_nse_and_kge_known_values() -> None:
    obs = np.array([1.0, 2.0, 3.0, 4.0])
    assert nse(np.full(4, obs.mean()), obs) == pytest.approx(0.0)  # the mean scores 0
    assert nse(obs + 1, obs) == pytest.approx(1 - 4 / 5)
    # scaled by 2: r = 1, α = 2, β = 2 → KGE = 1 − √2
    assert kge(2 * obs, obs) == pytest.approx(1 - math.sqrt(2))
    assert math.isnan(nse(np.ones(3), np.ones(3))) and math.isnan(kge(obs[:1], obs[:1]))


def test_error_sums_use_selected_positions_only() -> None:
    acc = ErrorSums()
    true = torch.tensor([[1.0, float("nan"), 3.0]])
    pred = torch.tensor([[2.0, 100.0, 1.0]])
    acc.add(pred, true, torch.tensor([[True, False, True]]))
    r = acc.result()
    assert r["rmse"] == pytest.approx(math.sqrt(2.5)) and r["mae"] == pytest.approx(1.5)


def test_per_group_scores_pool_windows_of_a_catchment() -> None:
    obs = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1.0, 3.0, 2.0]])
    select = np.array([[True, True, False], [True, True, True], [True, True, True]])
    groups = np.array([7, 7, 2])
    sc = per_group_scores(obs, obs, select, groups)
    assert sc["group"].tolist() == [2, 7] and sc["n"].tolist() == [3, 5]
    assert np.allclose(sc["nse"], 1.0) and np.allclose(sc["kge"], 1.0)
    d = distribution(np.array([0.1, np.nan, 0.5, 0.3]))
    assert d["median"] == pytest.approx(0.3) and d["n"] == 3


def test_denormalise_inverts_log1p_normalisation() -> None:
    q = torch.tensor([0.0, 1.0, 10.0])
    st = {"mean": 0.5, "std": 2.0, "log": True}
    z = (torch.log1p(q) - 0.5) / 2.0
    torch.testing.assert_close(denormalise(z, st), q.double())


def test_daily_climatology_and_day_of_year() -> None:
    days = np.arange(np.datetime64("2001-01-01"), np.datetime64("2003-01-01")).astype(np.int64)
    doy = day_of_year(days)
    assert doy[0] == 0 and doy[364] == 364 and doy[365] == 0
    values = np.stack([np.sin(2 * np.pi * doy / 365), np.full(len(doy), 2.0)], axis=1)  # (D, 2)
    values[10, 1] = np.nan
    clim = daily_climatology(values, doy, window=1)
    assert clim.shape == (366, 2)
    assert np.allclose(clim[:365, 0], np.sin(2 * np.pi * np.arange(365) / 365))
    assert np.allclose(clim[:, 1], 2.0)  # NaN ignored; day 366 (no data) → overall mean
    smooth = daily_climatology(values, doy, window=31)
    assert np.abs(smooth[:, 0]).max() < 1.0 and np.allclose(smooth[:, 1], 2.0)


def test_daily_climatology_by_blocks_matches_one_pass(tmp_path) -> None:
    """Read a memmap a few days at a time (a block that does not divide the days), the result is
    the one-pass climatology; a day of the year with no data anywhere takes the overall mean."""
    days = np.arange(np.datetime64("2001-03-01"), np.datetime64("2003-02-01")).astype(np.int64)
    doy = day_of_year(days)
    rng = np.random.default_rng(0)
    values = rng.gamma(0.8, 3.0, size=(len(days), 4, 3)).astype(np.float32)  # (D, P, p²)
    values[rng.random(values.shape) < 0.1] = np.nan
    values[doy == 40] = np.nan  # 10 Feb: no data in any year
    mm = np.lib.format.open_memmap(tmp_path / "grid.npy", mode="w+", dtype=np.float32,
                                   shape=values.shape)
    mm[:] = values
    by_day = daily_climatology(mm, doy, window=1, block=37)
    for d in (0, 59, 200, 364):  # unsmoothed: the NaN-mean of that day of the year's values
        np.testing.assert_allclose(by_day[d], np.nanmean(values[doy == d].astype(np.float64), 0),
                                   rtol=1e-12)
    for window in (1, 31):
        whole = daily_climatology(values, doy, window=window, block=len(days))
        blocks = daily_climatology(mm, doy, window=window, block=37)
        np.testing.assert_allclose(blocks, whole, rtol=1e-12)
    overall = np.nanmean(values.astype(np.float64), axis=0)
    np.testing.assert_allclose(daily_climatology(mm, doy, window=1, block=37)[40], overall,
                               rtol=1e-12)


def test_interpolate_days() -> None:
    x = torch.tensor([[9.0, 2.0, 9.0, 9.0, 8.0, 9.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    known = torch.tensor([[False, True, False, False, True, False], [False] * 6])
    out = interpolate_days(x, known)
    torch.testing.assert_close(out[0], torch.tensor([2.0, 2.0, 4.0, 6.0, 8.0, 8.0],
                                                    dtype=torch.float64))
    assert out[1].isnan().all()


def test_neighbour_mean_uses_nearest_known_ring() -> None:
    rows, cols = [0, 0, 0, 2, 4], [0, 1, 2, 0, 4]
    values = torch.tensor([[1.0, 3.0, 5.0, 7.0, 100.0]])
    known = torch.tensor([[False, True, True, True, False]])
    out = neighbour_mean(values, known, rows, cols)
    # patch 0: ring 1 holds patch 1 only; patch 4 at (4, 4): patches 1, 2, 3 all at distance 4
    assert out[0, 0].item() == pytest.approx(3.0)
    assert out[0, 4].item() == pytest.approx((3.0 + 5.0 + 7.0) / 3)
    assert out[0, 1].item() == pytest.approx(5.0)  # the patch itself is excluded


def test_kge_components_and_log_nse_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    obs = np.exp(rng.normal(0, 1, 200))  # skewed like flows
    sim = 0.8 * obs + 0.3 + rng.normal(0, 0.2, 200)
    p = kge_parts(sim, obs)
    r = np.corrcoef(sim, obs)[0, 1]
    alpha, beta = sim.std() / obs.std(), sim.mean() / obs.mean()
    assert p["kge_r"] == pytest.approx(r) and p["kge_alpha"] == pytest.approx(alpha)
    assert p["kge_beta"] == pytest.approx(beta)
    assert p["kge"] == pytest.approx(1 - math.sqrt((r - 1) ** 2 + (alpha - 1) ** 2 + (beta - 1) ** 2))
    eps = 0.01 * obs.mean()
    lo, ls = np.log(obs + eps), np.log(np.maximum(sim, 0) + eps)
    assert log_nse(sim, obs) == pytest.approx(1 - ((ls - lo) ** 2).sum() / ((lo - lo.mean()) ** 2).sum())
    assert log_nse(obs, obs) == 1.0 and fhv(obs, obs) == 0.0 and flv(obs, obs) == 0.0


def test_flow_duration_curve_biases() -> None:
    obs = np.arange(1.0, 101.0)  # 100 flows: the top 2 % are 100 and 99
    sim = obs.copy()
    sim[[98, 99]] = [49.5, 50.0]  # peaks halved: the simulated top 2 % are then 98 and 97
    assert fhv(sim, obs) == pytest.approx((98 + 97 - 100 - 99) / (100 + 99) * 100)
    assert fhv(obs * 1.1, obs) == pytest.approx(10.0)  # FDC sorted separately: order ignored
    assert fhv(obs[::-1] * 1.1, obs) == pytest.approx(10.0)
    # FLV: lowest 30 % in log space, relative to the minimum; low flows flattened → positive
    low = np.log(obs[:30])
    want = (low - low.min()).sum()
    flat = obs.copy()
    flat[:30] = np.exp(low.min() + 0.5 * (low - low.min()))  # log range halved
    assert flv(flat, obs) == pytest.approx(-(0.5 * want - want) / want * 100)  # +50 %
    assert math.isnan(fhv(obs[:10], obs[:10]))  # top 2 % of 10 values: none


def test_per_group_scores_hold_every_flow_score() -> None:
    obs = np.abs(np.sin(np.arange(60.0))).reshape(2, 30) + 0.1
    sc = per_group_scores(obs * 1.2, obs, np.ones_like(obs, dtype=bool), np.array([3, 3]))
    assert set(FLOW_SCORES) <= set(sc) and sc["n"].tolist() == [60]
    assert sc["kge_beta"][0] == pytest.approx(1.2) and sc["kge_r"][0] == pytest.approx(1.0)
    assert sc["fhv"][0] == pytest.approx(20.0)
