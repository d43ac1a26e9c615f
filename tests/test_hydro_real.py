"""Real data through the same DataModule: HadUK-Grid rainfall and CAMELS-GB (skipped without
the shared data folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from maelab.data.hydro.datamodule import HydroDataModule
from maelab.data.hydro.layout import X_CENTRES, Y_CENTRES, default_land_mask
from maelab.models.mmmae.config import MaskingConfig
from maelab.models.mmmae.masking import with_masks
from maelab.scoring.hydro_metrics import denormalise

DATA = (Path(__file__).parents[1] / "../shared/data").resolve()
CONF = Path(__file__).parents[1] / "conf"
HADUK, CAMELS = DATA / "haduk_grid_rainfall", DATA / "camels_gb"


def _dm(data: str, root: Path | None, cache: Path) -> HydroDataModule:
    if not (root or DATA).is_dir():
        pytest.skip(f"{root or DATA} not available")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[
            f"data={data}", "debug=fast", f"data.cache_dir={cache}",
            *([f"data.root={root}"] if root else [])])
    return instantiate(cfg.data)


def test_haduk_rainfall_orientation_and_land_mask(tmp_path: Path) -> None:
    dm = _dm("haduk_rainfall", HADUK, tmp_path)
    dm.prepare_data()
    store = dm.store
    assert store.grid_names == ["precipitation"] and store.series_names == []
    assert store.n_days == 365 and str(store.days[0]) == "2021-01-01"
    with xr.open_dataset(sorted(HADUK.glob("*.nc"))[2]) as src:  # March
        y, x = src.projection_y_coordinate.values, src.projection_x_coordinate.values
        assert np.allclose(y, Y_CENTRES) and np.allclose(x, X_CENTRES)  # row 0 = south
        assert src.latitude.values[0, 90] < src.latitude.values[-1, 90]
        day = src.rainfall.isel(time=4).values.astype(np.float32)  # 2021-03-05
    want = dm.layout.extract(day)
    assert np.array_equal(store.grids["precipitation"][store.day_index("2021-03-05")], want,
                          equal_nan=True)
    land = default_land_mask()
    has_data = np.isfinite(day)
    assert has_data[land].mean() > 0.98  # the mask's land holds rainfall …
    assert land[has_data].mean() > 0.9  # … and rainfall lies on the mask's land
    assert has_data[::-1][land].mean() < 0.6  # flipped north-south it would not
    b = next(iter(dm.train_dataloader()))
    assert b["present"]["precipitation"].all() and not b["present"]["temperature"].any()
    assert not b["present"]["riverflow"].any() and not b["series_valid"]["riverflow"].any()
    valid = b["grid_valid"]["precipitation"]
    assert 0.85 < valid.float().mean() < 1 and torch.equal(valid, ~torch.isnan(
        b["grids"]["precipitation"]))
    m = with_masks(b, MaskingConfig(strategy="unified", ratio=0.75), 0, 0, dm.n_valid_patches,
                   dm.grid_names, dm.series_names)
    assert (m["grid_mask"]["precipitation"].sum(-1) == 70).all()


def test_camels_gb_series(tmp_path: Path) -> None:
    dm = _dm("camels_gb", CAMELS, tmp_path)
    dm.setup()
    assert len(dm.catchment_ids) == 60 and dm.n_static == 0
    assert dm.present["riverflow"] and not dm.present["evaporation"]
    assert not any(dm.present[g] for g in dm.grid_names)
    assert dm.stats["riverflow"]["log"] and not dm.stats["catchment_temperature"]["log"]
    assert str(dm.store.days[0]) == "1989-01-01" and str(dm.store.days[-1]) == "2015-09-30"
    b = next(iter(dm.val_dataloader()))
    assert b["series"]["riverflow"].shape == (8, 90) and b["series_valid"]["riverflow"].all()
    assert torch.isnan(b["series"]["evaporation"]).all() and b["static"].shape == (8, 0)
    assert torch.isnan(b["grids"]["precipitation"]).all()
    q = denormalise(b["series"]["riverflow"], dm.stats["riverflow"])
    assert (q >= 0).all() and q.max() < 200  # mm/day


def test_haduk_grid_with_camels_v2_series(tmp_path: Path) -> None:
    """data=haduk_camels: the 638 common days, 60 catchments placed on the grid by gauges.csv,
    the listed flat stretches missing, units in the model's."""
    dm = _dm("haduk_camels", None, tmp_path)
    dm.setup()
    store = dm.store
    assert str(store.days[0]) == "2021-01-01" and str(store.days[-1]) == "2022-09-30"
    assert store.n_days == 638 and len(dm.catchment_ids) == 60
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [16467, 59, 175]
    assert dm.static_names == ["gauge_lat", "gauge_lon", "area_km2"]
    assert dm.units == {"precipitation": "mm/day", "riverflow": "mm/day",
                        "catchment_precipitation": "mm/day", "catchment_temperature": "degC"}
    q = store.series["riverflow"]
    c = dm.catchment_ids.index("5003")
    assert np.isnan(q[c, store.day_index("2021-09-30"):]).all()
    assert np.isfinite(q[c, :store.day_index("2021-09-30")]).mean() > 0.99
    loc = dm.catchment_locations  # (C, 2) patch units; the gauge's cell rains like its catchment
    rain = store.grids["precipitation"]  # (T, P, p²)
    cell = np.rint(loc * 10 + 4.5).astype(int)  # (C, 2) grid row, col
    idx = (cell[:, 0] // 10) * 18 + cell[:, 1] // 10
    k = np.searchsorted(dm.valid_patch_idx, idx)
    on_land = dm.valid_patch_idx[np.clip(k, 0, len(k) - 1)] == idx
    assert on_land.mean() > 0.5  # gauges sit at outlets, often in coastal patches (not tokens)
    pix = (cell[:, 0] % 10) * 10 + cell[:, 1] % 10
    r = [np.corrcoef(rain[:, k[i], pix[i]], store.series["catchment_precipitation"][i])[0, 1]
         for i in np.flatnonzero(on_land) if np.isfinite(rain[:, k[i], pix[i]]).all()]
    assert np.median(r) > 0.8


def test_camels_experiment_trains_with_the_nse_star_loss(tmp_path: Path) -> None:
    """`experiment=hydro_camels` (NSE* on riverflow, forcing series) on the real series, with
    their missing days: every catchment's training spread is finite and the run trains, fits its
    riverflow stretch and its cross-modal blend with the regression trees on validation and
    tests, beside the regression baseline of the cross-modal tests."""
    from maelab.pipeline import build_datamodule, build_module, train
    from tests.conftest import compose_cfg

    if not CAMELS.is_dir():
        pytest.skip(f"{CAMELS} not available")
    cfg = compose_cfg("train", ["experiment=hydro_camels", "debug=fast",
                                "callbacks.progress_bar=null", f"data.cache_dir={tmp_path / 'cache'}",
                                "model.evaluation.regression_windows=256"],
                      tmp_path / "run")
    assert list(cfg.model.loss.nse_star) == ["riverflow"]
    assert cfg.model.hide_series_others == "mixed"
    assert list(cfg.model.calibration.series_stretch) == ["riverflow"]
    assert cfg.model.calibration.cross_modal_blend == "regression"
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    assert module.net.forcing_series == ["catchment_precipitation", "catchment_temperature"]
    module.use_data(dm)
    std = module._series_std["riverflow"].numpy()
    assert std.shape == (60,) and np.isfinite(std).all() and (std > 0).all()
    metrics, _ = train(cfg)
    assert np.isfinite(metrics["test"]["riverflow / mmmae"]["nse_median"])
    assert 0.5 <= metrics["settings"]["series_stretch_factors"]["fitted"]["riverflow"] <= 2.5
    for test in ("riverflow (all days hidden)", "riverflow (alone, all days hidden)"):
        row = metrics["test"][f"{test} / regression"]
        assert np.isfinite(row["nse_median"]) and row["n"] == metrics["test"][f"{test} / mmmae"]["n"]
    weights = metrics["settings"]["cross_modal_blend_weights"]["fitted"]
    assert all(0.0 <= w <= 1.0 for w in weights.values())
    saved = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert saved["cal_cross_modal_blend"].tolist() == pytest.approx(
        [weights["forcing_masked"], weights["forcing_visible"]], abs=1e-4)
