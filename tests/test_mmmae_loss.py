"""MM-MAE loss: hidden & valid positions only, per-modality weights, norm_pix_loss."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from maelab.models.mmmae.loss import mmmae_loss, patch_stats
from tests.test_mmmae_model import GRIDS, SERIES, make_batch, make_model


def _setup(temporal_patch: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    model, batch = make_model(temporal_patch), make_batch()
    with torch.no_grad():
        out = model(batch)
    return out, batch


def _excluded(out: dict, batch: dict) -> dict[str, torch.Tensor]:
    """Per modality: positions the loss must ignore (visible, ocean, invalid)."""
    ex = {n: ~(out["grid_hidden"][n][..., None] & batch["grid_valid"][n]) for n in GRIDS}
    return ex | {n: ~(out["series_hidden"][n] & batch["series_valid"][n]) for n in SERIES}


def _group(name: str) -> str:
    return "grids" if name in GRIDS else "series"


@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("temporal_patch", [1, 3])
def test_loss_ignores_visible_ocean_and_invalid_positions(norm_pix_loss: bool,
                                                          temporal_patch: int) -> None:
    out, batch = _setup(temporal_patch)
    ref = mmmae_loss(out, batch, {}, norm_pix_loss)
    g = torch.Generator().manual_seed(3)
    pert_out = {**out, "grids": dict(out["grids"]), "series": dict(out["series"])}
    pert_batch = {**batch, "grids": dict(batch["grids"]), "series": dict(batch["series"])}
    for name, ex in _excluded(out, batch).items():
        grp = _group(name)
        noise = 1e3 * torch.randn(ex.shape, generator=g)
        pert_out[grp][name] = torch.where(ex, noise, out[grp][name])
        pert_batch[grp][name] = torch.where(ex, noise, batch[grp][name])
    got = mmmae_loss(pert_out, pert_batch, {}, norm_pix_loss)
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value)
    # a hidden, valid position does count
    hidden = ~_excluded(out, batch)["riverflow"]
    pert_out["series"]["riverflow"] = torch.where(hidden, out["series"]["riverflow"] + 5,
                                                  out["series"]["riverflow"])
    assert mmmae_loss(pert_out, batch, {}, norm_pix_loss)["riverflow"] > ref["riverflow"]


def test_ocean_cells_and_missing_days_never_count() -> None:
    out, batch = _setup()
    valid = batch["grid_valid"]["precipitation"]
    assert not valid[..., 0].any() and not valid[:, 4].any()  # ocean cell, missing day
    pred = dict(out["grids"])
    pred["precipitation"] = pred["precipitation"].clone()
    pred["precipitation"][..., 0] = 1e6
    pred["precipitation"][:, 4] = -1e6
    got = mmmae_loss({**out, "grids": pred}, batch, {})
    assert got["precipitation"] == mmmae_loss(out, batch, {})["precipitation"]


def test_loss_is_weighted_mean_of_modality_losses() -> None:
    out, batch = _setup()
    parts = mmmae_loss(out, batch, {"riverflow": 3.0, "temperature": 0.0})
    names = [*GRIDS, *SERIES]
    w = {n: 3.0 if n == "riverflow" else 0.0 if n == "temperature" else 1.0 for n in names}
    want = sum(w[n] * parts[n] for n in names) / sum(w.values())
    torch.testing.assert_close(parts["loss"], want)
    manual = out["series"]["riverflow"] - batch["series"]["riverflow"]
    sel = out["series_hidden"]["riverflow"] & batch["series_valid"]["riverflow"]
    torch.testing.assert_close(parts["riverflow"], (manual[sel] ** 2).mean())


def test_absent_modality_is_skipped_and_loss_backpropagates() -> None:
    model, batch = make_model(), make_batch()
    batch["present"]["soil_moisture"] = torch.zeros(3, dtype=torch.bool)
    out = model(batch)
    parts = mmmae_loss(out, batch, {})
    assert "soil_moisture" not in parts and torch.isfinite(parts["loss"])
    parts["loss"].backward()
    batch["series_valid"] = {n: torch.zeros_like(v) for n, v in batch["series_valid"].items()}
    batch["grid_valid"] = {n: torch.zeros_like(v) for n, v in batch["grid_valid"].items()}
    empty = mmmae_loss(model(batch), batch, {})
    assert set(empty) == {"loss"} and empty["loss"] == 0 and empty["loss"].requires_grad


def test_patch_stats_use_valid_cells_only() -> None:
    x = torch.tensor([[float("nan"), 1.0, 3.0, 5.0]])
    mean, std = patch_stats(x, x.isfinite())
    assert mean.item() == pytest.approx(3.0)
    assert std.item() == pytest.approx((8 / 3 + 1e-6) ** 0.5)


def test_nse_star_scores_physical_values_over_each_catchments_variance() -> None:
    """NSE*: (expm1 of the de-normalised prediction − that of the target)² / (σ_c + ε)², over the
    hidden valid days of the series, replacing its normalised MSE; other modalities unchanged."""
    out, batch = _setup()
    stats = {"mean": 0.5, "std": 2.0, "log": True}
    sigma = torch.tensor([1.0, 3.0, 0.0])[: batch["static"].shape[0]]  # (B,) per window
    name = SERIES[-1]
    plain = mmmae_loss(out, batch, {})
    nse = mmmae_loss(out, batch, {}, nse_star_series={name: (stats, sigma)})
    select = out["series_hidden"][name] & batch["series_valid"][name]
    phys = lambda v: torch.expm1(v.double() * 2.0 + 0.5)  # noqa: E731
    err = (phys(out["series"][name]) - phys(batch["series"][name])) ** 2
    expected = (err / (sigma.double()[:, None] + 0.1) ** 2)[select].mean()
    assert nse[name].item() == pytest.approx(expected.item(), rel=1e-4)
    for other in (*GRIDS, *SERIES[:-1]):
        assert torch.equal(nse[other], plain[other])
    changed = {**batch, "series": {**batch["series"], name: batch["series"][name].clone()}}
    changed["series"][name][~select] = 50.0  # visible or invalid days never count
    again = mmmae_loss(out, changed, {}, nse_star_series={name: (stats, sigma)})
    assert again[name].item() == pytest.approx(nse[name].item())


def test_variability_term_adds_each_windows_spread_error_over_the_catchment_variance() -> None:
    """`variability`: + weight × mean over windows of (std of the prediction − std of the target
    over the window's hidden valid days, physical units)² / (σ_c + ε)²; visible days never count."""
    out, batch = _setup()
    stats = {"mean": 0.5, "std": 2.0, "log": True}
    sigma = torch.tensor([1.0, 3.0, 0.0])[: batch["static"].shape[0]]
    name = SERIES[-1]
    nse = mmmae_loss(out, batch, {}, nse_star_series={name: (stats, sigma)})
    both = mmmae_loss(out, batch, {}, nse_star_series={name: (stats, sigma)},
                      variability={name: 2.0})
    select = out["series_hidden"][name] & batch["series_valid"][name]
    phys = lambda v: torch.expm1(v.double() * 2.0 + 0.5)  # noqa: E731
    spread = []
    for b in range(select.shape[0]):
        if int(select[b].sum()) >= 2:
            p, t = phys(out["series"][name][b][select[b]]), phys(batch["series"][name][b][select[b]])
            spread.append((p.std(unbiased=False) - t.std(unbiased=False)) ** 2
                          / (sigma[b].double() + 0.1) ** 2)
    expected = nse[name].item() + 2.0 * torch.stack(spread).mean().item()
    assert both[name].item() == pytest.approx(expected, rel=1e-3)
    changed = {**batch, "series": {**batch["series"], name: batch["series"][name].clone()}}
    changed["series"][name][~select] = 50.0
    again = mmmae_loss(out, changed, {}, nse_star_series={name: (stats, sigma)},
                       variability={name: 2.0})
    assert again[name].item() == pytest.approx(both[name].item())
