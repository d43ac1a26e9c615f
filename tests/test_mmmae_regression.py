"""The regression baseline of the cross-modal tests (maelab.models.mmmae.regression)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maelab.models.mmmae.regression import (
    ForcingRegression,
    RegressionPrior,
    trailing_means,
    training_batches,
    year_parity,
)
from maelab.scoring.hydro_metrics import nse

T, C = 60, 4
STATS = {"rain": {"mean": 0.0, "std": 1.0, "log": False},
         "flow": {"mean": 0.0, "std": 1.0, "log": True}}  # log: the flow is non-negative


def windows(n: int, seed: int, hidden_share: float = 0.75) -> dict:
    """n windows of a rain series and a flow that is its 10-day trailing mean (in the window's
    own past, and a catchment factor), rain hidden on a random `hidden_share` of the days. The
    `series` values are the physical ones (STATS: identity, log1p for the flow)."""
    g = np.random.default_rng(seed)
    rain = g.gamma(0.6, 4.0, (n, T))
    catchment = g.integers(0, C, n)
    flow = np.stack([np.convolve(r, np.ones(10) / 10)[:T] for r in rain]) * (1 + catchment[:, None])
    start = g.integers(0, 3000, n)
    return {"series": {"rain": torch.from_numpy(rain).float(),
                       "flow": torch.from_numpy(np.log1p(flow)).float()},
            "series_valid": {"rain": torch.ones(n, T, dtype=torch.bool),
                             "flow": torch.ones(n, T, dtype=torch.bool)},
            "series_mask": {"rain": torch.from_numpy(g.random((n, T)) < hidden_share),
                            "flow": torch.ones(n, T, dtype=torch.bool)},
            "present": {"rain": torch.ones(n, dtype=torch.bool), "flow": torch.ones(n, dtype=torch.bool)},
            "catchment": torch.from_numpy(catchment),
            "time": torch.from_numpy(start[:, None] + np.arange(T))}


def make_regression() -> ForcingRegression:
    clim = torch.ones(366, C)  # a flat climatology of 1 mm/day and a spread of 1
    return ForcingRegression("flow", ["rain"], STATS, clim, torch.ones(C), seed=0)


def test_trailing_means_match_a_loop() -> None:
    g = np.random.default_rng(0)
    x, seen = g.random((3, 20)), g.random((3, 20)) < 0.4
    for k in (1, 3, 7, 30):
        mean, share = trailing_means(x, seen, k)
        for b in range(3):
            for t in range(20):
                days = slice(max(t - k + 1, 0), t + 1)
                s = seen[b, days]
                assert share[b, t] == pytest.approx(s.mean())
                if s.any():
                    assert mean[b, t] == pytest.approx(x[b, days][s].mean())
                else:
                    assert np.isnan(mean[b, t])


def test_features_read_only_the_visible_forcing_and_never_the_target() -> None:
    """Hidden rain values and every flow value can change without changing the features of the
    forcing-masked trees; with the forcing visible, every rain value counts."""
    model, batch = make_regression(), windows(8, seed=1)
    masked, shown = model.features(batch, visible=False), model.features(batch, visible=True)
    hidden = batch["series_mask"]["rain"]
    changed = {**batch, "series": {"rain": torch.where(hidden, 99.0, batch["series"]["rain"]),
                                   "flow": batch["series"]["flow"] * 0 + 5.0}}
    np.testing.assert_array_equal(model.features(changed, visible=False), masked)
    assert not np.array_equal(model.features(changed, visible=True), shown, equal_nan=True)
    assert np.isnan(masked[hidden.reshape(-1).numpy(), 0]).all()  # the day's own value


def test_trees_learn_a_rainfall_runoff_relation_and_keep_flows_non_negative() -> None:
    """On windows they were not fitted on, the trees reproduce a flow that is a trailing mean
    of the rain better with the rain shown than with three quarters of it hidden, and both far
    better than climatology (NSE 0 or less); no predicted flow is negative."""
    model = make_regression().fit(windows(64, seed=s) for s in range(4))
    test = windows(64, seed=10)
    truth = np.expm1(test["series"]["flow"].double().numpy())
    scores = {}
    for visible in (True, False):
        pred = model.predict(test, visible=visible)
        assert pred.shape == (64, T) and (pred >= 0).all()
        scores[visible] = nse(pred.numpy()[:, 10:], truth[:, 10:])
    assert scores[True] > 0.9 and scores[True] > scores[False] > 0.3


def test_no_valid_target_day_fits_nothing() -> None:
    batch = windows(4, seed=2)
    batch["series_valid"]["flow"] = torch.zeros(4, T, dtype=torch.bool)
    assert make_regression().fit([batch]).trees == {}


def test_training_batches_draw_without_replacement_and_mask_each_chunk() -> None:
    data = list(range(10))
    seen_streams = []

    def masked(batch: list, stream: int) -> list:
        seen_streams.append(stream)
        return batch

    out = list(training_batches(data, list, n_windows=7, seed=3, masked=masked, chunk=3))
    assert [len(b) for b in out] == [3, 3, 1] and seen_streams == [0, 1, 2]
    drawn = [w for b in out for w in b]
    assert len(set(drawn)) == 7
    again = list(training_batches(data, list, n_windows=7, seed=3, masked=lambda b, i: b, chunk=3))
    assert [w for b in again for w in b] == drawn  # keyed by the seed
    assert sum(len(b) for b in training_batches(data, list, 50, 0, lambda b, i: b)) == 10


def parity_windows(n: int, seed: int) -> dict:
    """`windows` whose flow is the rain's trailing mean on days of even years and three times it
    on days of odd years (the catchment factor left out)."""
    batch = windows(n, seed)
    rain = batch["series"]["rain"].double().numpy()
    mean = np.stack([np.convolve(r, np.ones(10) / 10)[:T] for r in rain])
    factor = np.where(year_parity(batch["time"]) == 0, 1.0, 3.0)
    batch["series"]["flow"] = torch.from_numpy(np.log1p(mean * factor)).float()
    batch["catchment"] = torch.zeros(n, dtype=torch.long)
    return batch, mean


def test_year_parity_reads_the_calendar_year() -> None:
    days = torch.tensor([[0, 364, 365, 729, 730, 1095, 1096]])  # 1970-01-01 … 1973-01-01
    np.testing.assert_array_equal(year_parity(days), [[0, 0, 1, 1, 0, 0, 1]])  # 1972: leap


def test_the_prior_is_cross_fitted_by_year_in_training_and_averaged_elsewhere() -> None:
    """A day's training prior comes from the trees that never saw a target of its year's parity:
    where odd years' flows are three times even years', even days are predicted about 3× their
    rain's mean and odd days about 1×; outside training both sets are averaged (about 2×)."""
    clim = torch.ones(366, C)
    prior = RegressionPrior("flow", ["rain"], STATS, clim, torch.ones(C), seed=0)
    prior.fit(parity_windows(64, seed=s)[0] for s in range(4))
    test, mean = parity_windows(64, seed=10)
    even = year_parity(test["time"])[:, 10:] == 0
    ratio = {}
    for cross_fitted in (True, False):
        pred = prior.prior(test, cross_fitted=cross_fitted).numpy()[:, 10:]
        ratio[cross_fitted] = [pred[days].sum() / mean[:, 10:][days].sum() for days in (even, ~even)]
    assert 2.4 < ratio[True][0] < 3.6 and 0.6 < ratio[True][1] < 1.4
    assert all(1.5 < r < 2.5 for r in ratio[False])


def test_the_prior_needs_targets_in_years_of_both_parities() -> None:
    batch, _ = parity_windows(8, seed=3)
    batch["series_valid"]["flow"] = torch.from_numpy(year_parity(batch["time"]) == 0)
    clim = torch.ones(366, C)
    assert RegressionPrior("flow", ["rain"], STATS, clim, torch.ones(C)).fit([batch]).trees == {}


ROWS, COLS = [0, 0, 0], [0, 1, 2]  # three valid patches in a row; the catchment is at the middle
CELLS = 4  # cells per patch


def grid_windows(n: int, seed: int) -> tuple[dict, np.ndarray]:
    """`windows` with the rain as a grid (n, T, 3 patches, 4 cells) instead of a series; the
    catchment at patch 1 (`location`), whose cell mean drives the flow (its 10-day trailing
    mean); two of the three patches hidden on each day. The rain is one field over the patches
    with 20 % noise per cell (neighbours correlate, as real rain does). Returns the batch and
    the catchment patch's cell mean."""
    g = np.random.default_rng(seed)
    batch = windows(n, seed)
    rain = g.gamma(0.6, 4.0, (n, T, 1, 1)) * g.uniform(0.8, 1.2, (n, T, 3, CELLS))
    at = rain[:, :, 1].mean(-1)  # (n, T) the catchment patch's mean
    flow = np.stack([np.convolve(r, np.ones(10) / 10)[:T] for r in at])
    shown = g.integers(0, 3, (n, T))  # the one visible patch of each day
    batch["series"] = {"flow": torch.from_numpy(np.log1p(flow)).float()}
    batch["series_valid"] = {"flow": batch["series_valid"]["flow"]}
    batch["series_mask"] = {"flow": batch["series_mask"]["flow"]}
    batch["grids"] = {"rain": torch.from_numpy(rain).float()}
    batch["grid_valid"] = {"rain": torch.ones(n, T, 3, CELLS, dtype=torch.bool)}
    batch["grid_mask"] = {"rain": torch.from_numpy(shown[..., None] != np.arange(3))}
    batch["location"] = torch.tensor([[0.0, 1.2]]).expand(n, 2)  # nearest valid patch: 1
    return batch, at


def grid_regression() -> ForcingRegression:
    return ForcingRegression("flow", ["rain"], STATS, torch.ones(366, C), torch.ones(C), seed=0,
                             patch_rows=ROWS, patch_cols=COLS)


def test_a_forcing_grid_is_read_at_the_catchment_from_visible_patches_only() -> None:
    """The day's value is the catchment patch's cell mean where that patch is visible, else the
    mean of its visible neighbours (`value_at_patch`), with a flag saying which; hidden values
    never change the masked features; shown on every day, the value is the patch's own mean."""
    model, (batch, at) = grid_regression(), grid_windows(8, seed=1)
    masked, shown = model.features(batch, visible=False), model.features(batch, visible=True)
    hidden = batch["grid_mask"]["rain"]  # (n, T, 3)
    own = ~hidden[:, :, 1].reshape(-1).numpy()
    neighbours = batch["grids"]["rain"].mean(-1).numpy()  # (n, T, 3) each patch's mean
    visible_other = np.where(hidden[:, :, 0], neighbours[:, :, 2], neighbours[:, :, 0])
    expected = np.where(own, at.reshape(-1), visible_other.reshape(-1))
    np.testing.assert_allclose(masked[:, 0], expected, rtol=1e-5)
    np.testing.assert_array_equal(masked[:, 26], own.astype(float))  # after the value and 25 means
    np.testing.assert_allclose(shown[:, 0], at.reshape(-1), rtol=1e-5)
    changed = {**batch, "grids": {"rain": torch.where(hidden[..., None], 99.0,
                                                      batch["grids"]["rain"])}}
    np.testing.assert_array_equal(model.features(changed, visible=False), masked)
    unknown = {**batch, "location": torch.full((8, 2), float("nan"))}
    assert np.isnan(model.features(unknown, visible=False)[:, 0]).all()


def test_trees_learn_the_flow_from_a_forcing_grid() -> None:
    """Fitted on windows of a grid whose catchment patch drives the flow, the trees predict
    unseen windows' flow far better than climatology (NSE 0), better with the grid shown on
    every day than with two patches in three hidden."""
    model = grid_regression().fit(grid_windows(64, seed=s)[0] for s in range(4))
    test, _ = grid_windows(64, seed=10)
    truth = np.expm1(test["series"]["flow"].double().numpy())
    scores = {v: nse(model.predict(test, visible=v).numpy()[:, 10:], truth[:, 10:])
              for v in (True, False)}
    assert scores[True] > scores[False] > 0.9
    with pytest.raises(ValueError, match="patch_rows"):
        ForcingRegression("flow", ["rain"], STATS, torch.ones(366, C), torch.ones(C)).features(
            test, visible=False)
