"""Series calibration (maelab.models.mmmae.calibration): the shrinkage toward interpolation, the
stretch about the climatology and the cross-modal blend with the trees, pure functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from maelab.models.mmmae.calibration import (
    BLEND_GRID,
    DISTANCE_BINS,
    SHRINK_GRID,
    STRETCH_GRID,
    blend_series,
    days_to_visible,
    distance_bin,
    fit_blend,
    fit_shrinkage,
    fit_stretch,
    in_windows_with_visible,
    in_windows_without_visible,
    median_kge,
    median_nse,
    shrink_series,
    stretch_series,
)
from maelab.scoring.hydro_metrics import denormalise, interpolate_days, per_group_scores

LOG = {"mean": 0.3, "std": 0.8, "log": True}


def _windows(n: int = 24, t: int = 30, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, generator=g, dtype=torch.float64).cumsum(1) * 0.3  # normalised
    hidden = torch.rand(n, t, generator=g) < 0.75
    hidden[0] = True  # a window with no visible day
    valid = torch.rand(n, t, generator=g) > 0.05
    return {"x": x, "hidden": hidden, "valid": valid,
            "catchment": torch.arange(n) % 4}


def test_days_to_visible_matches_a_brute_force_count() -> None:
    w = _windows()
    known = w["valid"] & ~w["hidden"]
    got = days_to_visible(known)
    t = known.shape[1]
    for i in range(known.shape[0]):
        days = np.flatnonzero(known[i].numpy())
        for d in range(t):
            want = np.abs(days - d).min() if len(days) else t
            assert int(got[i, d]) == want, (i, d)


def test_distance_bins_are_1_2_3to4_and_5_or_more() -> None:
    assert DISTANCE_BINS == (1, 2, 3, 5)
    got = distance_bin(torch.tensor([0, 1, 2, 3, 4, 5, 9, 90]))
    assert got.tolist() == [0, 0, 1, 2, 2, 3, 3, 3]


def test_shrink_weights_one_keep_the_model_and_zero_give_interpolation() -> None:
    w = _windows()
    pred = w["x"] + torch.randn_like(w["x"])
    known = w["valid"] & ~w["hidden"]
    prior = interpolate_days(w["x"], known)
    keep = shrink_series(pred, w["x"], w["valid"], w["hidden"], torch.ones(4, dtype=torch.float64))
    assert torch.equal(keep, pred)
    flat = shrink_series(pred, w["x"], w["valid"], w["hidden"], torch.zeros(4, dtype=torch.float64))
    some_visible = known.any(1, keepdim=True)
    pulled = w["hidden"] & some_visible
    assert torch.allclose(flat[pulled], prior[pulled])
    assert torch.equal(flat[~pulled], pred[~pulled])  # visible days, windows with none visible
    assert torch.equal(flat[0], pred[0])


def test_shrink_weights_act_by_distance_bin() -> None:
    w = _windows()
    pred = w["x"] + 1.0
    known = w["valid"] & ~w["hidden"]
    prior = interpolate_days(w["x"], known)
    weights = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    out = shrink_series(pred, w["x"], w["valid"], w["hidden"], weights)
    s = weights[distance_bin(days_to_visible(known))]
    pulled = w["hidden"] & known.any(1, keepdim=True)
    assert torch.allclose(out[pulled], torch.lerp(prior, pred, s)[pulled])


@pytest.mark.parametrize("stats", [LOG, {"mean": 1.0, "std": 2.0, "log": False}])
def test_fit_recovers_the_blend_that_reconstructs_the_truth(stats: dict) -> None:
    """pred = prior + 2.5 (x − prior): s = 0.4 rebuilds x exactly in every bin."""
    w = _windows()
    known = w["valid"] & ~w["hidden"]
    prior = interpolate_days(w["x"], known).nan_to_num()
    pred = (prior + 2.5 * (w["x"] - prior)).float()
    got = fit_shrinkage(pred, w["x"], w["valid"], w["hidden"], w["catchment"], stats)
    assert got.tolist() == pytest.approx([0.4] * 4, abs=1e-9)


def test_fit_minimises_the_mean_of_each_catchments_normalised_error() -> None:
    """Against a brute force: for each bin, the grid value minimising Σ_c SSE_c / SST_c with
    the other bins at 1 (SST_c over all of c's scored days, in physical units)."""
    w = _windows(seed=3)
    g = torch.Generator().manual_seed(1)
    pred = (w["x"] + 0.4 * torch.randn(w["x"].shape, generator=g, dtype=torch.float64)).float()
    got = fit_shrinkage(pred, w["x"], w["valid"], w["hidden"], w["catchment"], LOG)
    known = w["valid"] & ~w["hidden"]
    scored = (w["hidden"] & w["valid"] & known.any(1, keepdim=True)).numpy()
    true = denormalise(w["x"], LOG).numpy()
    c = w["catchment"][:, None].expand_as(w["x"]).numpy()

    def objective(weights: torch.Tensor) -> float:
        out = denormalise(shrink_series(pred.double(), w["x"], w["valid"], w["hidden"], weights),
                          LOG).numpy()
        total = 0.0
        for k in np.unique(c[scored]):
            m = scored & (c == k)
            total += ((out[m] - true[m]) ** 2).sum() / ((true[m] - true[m].mean()) ** 2).sum()
        return total

    for b in range(len(DISTANCE_BINS)):
        trials = []
        for s in SHRINK_GRID:
            weights = torch.ones(4, dtype=torch.float64)
            weights[b] = s
            trials.append(objective(weights))
        assert float(got[b]) == pytest.approx(float(SHRINK_GRID[int(np.argmin(trials))])), b
    assert ((got >= 0) & (got <= 1)).all()


def test_fit_keeps_the_model_where_a_bin_or_the_series_has_no_scored_day() -> None:
    w = _windows()
    hidden = torch.zeros_like(w["hidden"])
    hidden[:, 10] = True  # one hidden day between visible ones: only the 1-day bin is scored
    pred = w["x"].float() + 0.5
    got = fit_shrinkage(pred, w["x"], torch.ones_like(hidden), hidden, w["catchment"], LOG)
    assert got.tolist()[1:] == [1.0, 1.0, 1.0] and got[0] < 1.0
    none = fit_shrinkage(pred, w["x"], w["valid"], torch.ones_like(hidden), w["catchment"], LOG)
    assert none.tolist() == [1.0] * 4  # every day hidden: no window to pull toward interpolation


def test_one_weight_set_per_window_matches_each_window_alone():
    """weights (B, bins): each window shrunk by its own set, as if shrunk alone."""
    w = _windows()
    pred = w["x"] + torch.randn_like(w["x"])
    sets = torch.rand(w["x"].shape[0], 4, generator=torch.Generator().manual_seed(3)).double()
    out = shrink_series(pred, w["x"], w["valid"], w["hidden"], sets)
    for i in range(w["x"].shape[0]):
        one = shrink_series(pred[i:i + 1], w["x"][i:i + 1], w["valid"][i:i + 1],
                            w["hidden"][i:i + 1], sets[i])
        assert torch.equal(out[i:i + 1], one)


def _climatology(w: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, T) a smooth seasonal curve per catchment, normalised units."""
    t = torch.arange(w["x"].shape[1], dtype=torch.float64)
    return torch.sin(t / 5)[None] * 0.4 + 0.1 * w["catchment"][:, None].double()


def test_stretch_widens_hidden_days_about_the_climatology_and_keeps_visible_days() -> None:
    w = _windows()
    clim, pred = _climatology(w), w["x"] + 0.2
    out = stretch_series(pred, clim, w["hidden"], 1.5)
    h = w["hidden"]
    assert torch.allclose(out[h], (clim + 1.5 * (pred - clim))[h])
    assert torch.equal(out[~h], pred[~h])
    assert torch.equal(stretch_series(pred, clim, h, 1.0), pred)  # k = 1: the model
    per_window = torch.linspace(0.5, 2.0, w["x"].shape[0], dtype=torch.float64)[:, None]  # (B, 1)
    both = stretch_series(pred, clim, h, per_window)
    for i in (0, 5, 23):
        assert torch.allclose(both[i], stretch_series(pred[i], clim[i], h[i], float(per_window[i])))


def test_stretch_above_only_keeps_the_days_at_or_below_the_climatology() -> None:
    w = _windows()
    clim, pred = _climatology(w), w["x"]
    out = stretch_series(pred, clim, w["hidden"], 2.0, above_only=True)
    up = w["hidden"] & (pred > clim)
    assert up.any() and (w["hidden"] & ~up).any()
    assert torch.allclose(out[up], (clim + 2.0 * (pred - clim))[up])
    assert torch.equal(out[~up], pred[~up])


def test_stretch_with_visible_only_keeps_the_windows_with_no_visible_day() -> None:
    """`series_stretch_windows: with_visible`: windows 0–2 (every day hidden, catchments 0–2)
    keep the model, the others are stretched as before; the fit scores those three unstretched
    for every k, so it no longer finds the k = 2 that restores a model damped by half."""
    w = _windows()
    w["hidden"][:3] = True
    clim, pred = _climatology(w), w["x"] + 0.2
    days = in_windows_with_visible(w["hidden"], w["valid"])
    assert not days[:3].any() and torch.equal(days[3:], w["hidden"][3:])
    out = stretch_series(pred, clim, w["hidden"], 1.5, valid=w["valid"])
    assert torch.equal(out[:3], pred[:3])
    assert torch.equal(out[3:], stretch_series(pred, clim, w["hidden"], 1.5)[3:])
    damped = clim + 0.5 * (w["x"] - clim)
    fit = (w["x"], w["valid"], w["hidden"], w["catchment"], LOG)
    k, _ = fit_stretch(damped, clim, *fit, shrink=False, with_visible_only=True)
    scored = w["hidden"] & w["valid"]
    cat, true = w["catchment"][:, None].expand_as(scored)[scored], denormalise(w["x"][scored], LOG)

    def score(k: float) -> float:  # the median KGE with windows 0–2 unstretched
        stretched = stretch_series(damped, clim, w["hidden"], k, valid=w["valid"])
        return median_kge(denormalise(stretched[scored], LOG), true, cat)

    assert k == max(STRETCH_GRID.tolist(), key=lambda k: (score(k), -k))
    assert fit_stretch(damped, clim, *fit, shrink=False)[0] == 2.0 != k


@pytest.mark.parametrize(("median", "score"), [(median_kge, "kge"), (median_nse, "nse")])
def test_medians_are_the_evaluations_medians_over_catchments(median: Any, score: str) -> None:
    w = _windows()
    pred = w["x"] + 0.3 * torch.randn_like(w["x"])
    scored = w["hidden"] & w["valid"]
    sim, obs = denormalise(pred, LOG), denormalise(w["x"], LOG)
    want = np.nanmedian(per_group_scores(sim.numpy(), obs.numpy(), scored.numpy(),
                                         w["catchment"].numpy())[score])
    days = w["catchment"][:, None].expand_as(scored)[scored]
    assert median(sim[scored], obs[scored], days) == pytest.approx(want, rel=1e-12)
    assert np.isnan(median(sim[:0, 0], obs[:0, 0], days[:0]))


@pytest.mark.parametrize("shrink", [False, True])
def test_fit_stretch_undoes_a_damping_about_the_climatology(shrink: bool) -> None:
    """A model at half the truth's distance from the climatology is restored by k = 2 (the
    truth itself: KGE 1), and the shrinkage then keeps it whole."""
    w = _windows()
    clim = _climatology(w)
    pred = clim + 0.5 * (w["x"] - clim)
    k, weights = fit_stretch(pred, clim, w["x"], w["valid"], w["hidden"], w["catchment"], LOG,
                             shrink=shrink)
    assert k == 2.0 and weights.tolist() == [1.0] * len(DISTANCE_BINS)


def test_fit_stretch_above_only_undoes_a_damping_of_the_peaks() -> None:
    """A model that halves the truth's excess over the climatology and is exact below it is
    restored by k = 2 when only the days above the climatology are stretched."""
    w = _windows()
    clim = _climatology(w)
    pred = torch.where(w["x"] > clim, clim + 0.5 * (w["x"] - clim), w["x"])
    k, _ = fit_stretch(pred, clim, w["x"], w["valid"], w["hidden"], w["catchment"], LOG,
                       shrink=False, above_only=True)
    assert k == 2.0
    both, _ = fit_stretch(pred, clim, w["x"], w["valid"], w["hidden"], w["catchment"], LOG,
                          shrink=False)
    assert both != 2.0  # stretching both sides cannot restore it: another compromise


def test_fit_stretch_takes_the_grid_factor_with_the_best_median_kge() -> None:
    """Against a brute-force search over the grid: the chosen k scores the highest median KGE
    of the calibrated series (stretched, then shrunk by the weights refitted for that k)."""
    w = _windows(n=40, seed=1)
    clim = _climatology(w)
    noise = 0.4 * torch.randn(w["x"].shape, generator=torch.Generator().manual_seed(2),
                              dtype=torch.float64)
    pred = clim + 0.7 * (w["x"] - clim) + noise
    k, weights = fit_stretch(pred, clim, w["x"], w["valid"], w["hidden"], w["catchment"], LOG)
    scored = w["hidden"] & w["valid"]
    obs = denormalise(w["x"], LOG).numpy()

    def score(factor: float) -> tuple[float, torch.Tensor]:
        stretched = clim + factor * (pred - clim)
        stretched = torch.where(w["hidden"], stretched, pred)
        fitted = fit_shrinkage(stretched, w["x"], w["valid"], w["hidden"], w["catchment"], LOG)
        out = shrink_series(stretched, w["x"], w["valid"], w["hidden"], fitted)
        kges = per_group_scores(denormalise(out, LOG).numpy(), obs, scored.numpy(),
                                w["catchment"].numpy())["kge"]
        return float(np.nanmedian(kges)), fitted

    scores = {float(f): score(float(f)) for f in STRETCH_GRID}
    best = max(v[0] for v in scores.values())
    assert scores[k][0] == pytest.approx(best, abs=1e-12)
    assert torch.equal(weights, scores[k][1])
    assert k > 1 and best > scores[1.0][0]  # the damped model gains from a stretch


def test_fit_stretch_keeps_the_model_with_nothing_scored() -> None:
    w = _windows()
    clim = _climatology(w)
    none = torch.zeros_like(w["hidden"])
    k, weights = fit_stretch(w["x"] + 1, clim, w["x"], w["valid"], none, w["catchment"], LOG)
    assert k == 1.0 and weights.tolist() == [1.0] * len(DISTANCE_BINS)


def _cross_modal(n: int = 40, t: int = 30, seed: int = 3) -> dict[str, torch.Tensor]:
    """Windows 0–29 with every day hidden (the cross-modal tests), 30–39 with visible days."""
    w = _windows(n, t, seed)
    w["hidden"][:30] = True
    return w


def test_blend_moves_only_the_hidden_days_of_windows_with_no_visible_day() -> None:
    """w = 0 keeps the model bit for bit; w = 1 gives the trees (physical units) on the hidden
    days of windows with no visible valid day; windows with one keep the model at any w."""
    w = _cross_modal()
    pred = w["x"].abs() + 0.1  # (N, T) normalised: flows > 0, as the blend sees them
    trees = denormalise(w["x"], LOG).clamp_min(0) * 1.3 + 0.1  # (N, T) physical units, flows ≥ 0
    days = in_windows_without_visible(w["hidden"], w["valid"])
    assert days[:30].equal(w["hidden"][:30]) and not days[30:].any()
    assert torch.equal(blend_series(pred, trees, w["hidden"], w["valid"], 0.0, LOG), pred)
    full = blend_series(pred, trees, w["hidden"], w["valid"], 1.0, LOG)
    assert torch.allclose(denormalise(full[:30], LOG), trees[:30], rtol=1e-5)
    assert torch.equal(full[30:], pred[30:])
    half = blend_series(pred, trees, w["hidden"], w["valid"], torch.full((40, 1), 0.25), LOG)
    want = 0.75 * denormalise(pred[:30], LOG) + 0.25 * trees[:30]
    assert torch.allclose(denormalise(half[:30], LOG), want, rtol=1e-5)
    per_window = torch.where(torch.arange(40)[:, None] < 15, 0.0, 1.0)  # (N, 1)
    mixed = blend_series(pred, trees, w["hidden"], w["valid"], per_window, LOG)
    assert torch.equal(mixed[:15], pred[:15]) and torch.allclose(mixed[15:30], full[15:30])


def test_fit_blend_is_the_grid_weight_with_the_best_median_nse() -> None:
    """Against a brute-force search with the evaluation's per-catchment NSE: a model and trees
    with independent errors are best mixed in between; trees equal to the truth get w = 1, a
    model equal to it w = 0; the windows with a visible day never count."""
    w = _cross_modal()
    g = torch.Generator().manual_seed(4)
    obs = denormalise(w["x"], LOG)
    pred = w["x"] + 0.3 * torch.randn(w["x"].shape, generator=g, dtype=torch.float64)
    trees = obs + 0.4 * obs.std() * torch.randn(w["x"].shape, generator=g, dtype=torch.float64)
    fit = (w["x"], w["valid"], w["hidden"], w["catchment"], LOG)
    got = fit_blend(pred, trees, *fit)
    scored = (in_windows_without_visible(w["hidden"], w["valid"]) & w["valid"]).numpy()

    def score(v: float) -> float:
        sim = ((1 - v) * denormalise(pred, LOG) + v * trees).numpy()
        return float(np.nanmedian(per_group_scores(sim, obs.numpy(), scored,
                                                   w["catchment"].numpy())["nse"]))

    assert got == max(BLEND_GRID.tolist(), key=lambda v: (score(v), -v))
    assert 0.0 < got < 1.0
    assert fit_blend(pred, obs, *fit) == 1.0
    assert fit_blend(w["x"], trees, *fit) == 0.0
    ruined = trees.clone()
    ruined[30:] = 1e6  # windows with a visible day: not scored
    assert fit_blend(pred, ruined, *fit) == got
    hidden = w["hidden"].clone()
    hidden[:, 0] = False  # every window shows a day: nothing to fit, the model
    assert fit_blend(pred, trees, w["x"], w["valid"] | ~hidden, hidden, w["catchment"], LOG) == 0.0

