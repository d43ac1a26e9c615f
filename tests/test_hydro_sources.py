"""Hydrology data as hydrologists have it, on small files the tests write: CAMELS-GB in its official
layout and as a long CSV, several sources in one run, units, calendars, daily axes, grid
coordinates, missing stretches, split checks, and the bad input each of them can bring."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from maelab.core.errors import ConfigError, DataError
from maelab.data.hydro.datamodule import HydroDataModule
from maelab.data.hydro.layout import X_CENTRES, Y_CENTRES, default_land_mask, lat_lon_to_patch
from maelab.data.hydro.units import conversion

DAYS = pd.date_range("2001-01-01", "2001-04-30", freq="D")  # 120 days
SPLITS = {"train": {"start": "2001-01-01", "end": "2001-02-28"},
          "val": {"start": "2001-03-01", "end": "2001-03-31"},
          "test": {"start": "2001-04-01", "end": "2001-04-30"}}
GAUGES = {  # id: (name, lat, lon, area km²) — real CAMELS-GB gauges
    "39001": ("Thames at Kingston", 51.415, -0.308, 9930.0),
    "54001": ("Severn at Bewdley", 52.376, -2.319, 4329.0),
    "27009": ("Ouse at Skelton", 53.992, -1.117, 3315.0),
}
TS_COLUMNS = ["precipitation", "pet", "temperature", "discharge_spec", "discharge_vol", "peti",
              "humidity", "shortwave_rad", "longwave_rad", "windspeed"]


def _flow(i: int, n: int) -> np.ndarray:
    return 1.0 + i + 0.5 * np.sin(np.arange(n) / 7.0)


def write_camels_official(root: Path, days: pd.DatetimeIndex = DAYS, subfolder: bool = False,
                          drop_lat: str | None = None) -> Path:
    """The official CAMELS-GB layout: one hydromet CSV per gauge, topographic and climatic
    attribute CSVs. Values: discharge_spec = 1 + i + 0.5 sin(t/7), pet = 0.1 i + 1, …"""
    ts = root / "timeseries" if subfolder else root
    ts.mkdir(parents=True, exist_ok=True)
    for i, gid in enumerate(GAUGES):
        n = len(days)
        df = pd.DataFrame({c: np.full(n, float(k)) for k, c in enumerate(TS_COLUMNS)})
        df["discharge_spec"] = _flow(i, n)
        df["pet"] = 0.1 * i + 1
        df["temperature"] = 5.0 + i
        df.insert(0, "date", days.strftime("%Y-%m-%d"))
        df.loc[10, "discharge_spec"] = np.nan  # a gap, as "NaN" in the file
        df.to_csv(ts / f"CAMELS_GB_hydromet_timeseries_{gid}_19701001-20150930.csv", index=False)
    topo = pd.DataFrame({
        "gauge_id": list(GAUGES), "gauge_name": [g[0] for g in GAUGES.values()],
        "gauge_lat": [g[1] for g in GAUGES.values()], "gauge_lon": [g[2] for g in GAUGES.values()],
        "area": [g[3] for g in GAUGES.values()], "elev_mean": [80.0, 150.0, 120.0]})
    if drop_lat is not None:
        topo.loc[topo.gauge_id == drop_lat, "gauge_lat"] = np.nan
    topo.to_csv(root / "CAMELS_GB_topographic_attributes.csv", index=False)
    pd.DataFrame({"gauge_id": list(GAUGES), "p_mean": [2.0, 2.5, 1.9],
                  "high_prec_timing": ["son", "djf", "djf"]}).to_csv(
        root / "CAMELS_GB_climatic_attributes.csv", index=False)
    return root


def write_grid(path: Path, days: pd.DatetimeIndex = DAYS, units: str = "mm",
               var: str = "rainfall", scale: float = 1.0, x: np.ndarray = X_CENTRES,
               calendar: str | None = None, times: Any = None) -> Path:
    """A (time, y, x) grid on the HadUK-Grid, y descending (north first), NaN off land; the
    value of day t is (t + 1) · scale everywhere on land."""
    land = default_land_mask()
    vals = np.where(land, 1.0, np.nan)[None] * (np.arange(len(days)) + 1.0)[:, None, None] * scale
    ds = xr.Dataset(
        {var: (("time", "projection_y_coordinate", "projection_x_coordinate"),
               vals[:, ::-1].astype(np.float32), {"units": units})},
        coords={"time": days if times is None else times,
                "projection_y_coordinate": Y_CENTRES[::-1], "projection_x_coordinate": x})
    enc = {"time": {"units": "days since 2000-01-01", "calendar": calendar}} if calendar else {}
    ds.to_netcdf(path, encoding=enc)
    return path


GRID_DIMS = {"y": "projection_y_coordinate", "x": "projection_x_coordinate"}
SERIES = {"riverflow": "discharge_spec", "evaporation": "pet",
          "catchment_temperature": "temperature"}


def _multi(grid: Path, camels: Path, cache: Path, **over: Any) -> dict[str, Any]:
    kw = dict(sources={"grids": "haduk", "series": "camels", "static": "camels"},
              catalog={"haduk": {"source": "netcdf", "root": str(grid), "dims": GRID_DIMS},
                       "camels": {"source": "camels_gb", "root": str(camels)}},
              grids={"precipitation": "rainfall", "soil_moisture": None, "temperature": None},
              series=SERIES, static="static", location=["gauge_lat", "gauge_lon"],
              cache_dir=str(cache), seq_len=20, eval_stride=10, batch_size=4, splits=SPLITS,
              num_workers=0)
    return {**kw, **over}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hydro_files")
    return {"camels": write_camels_official(root / "camels"),
            "grid": write_grid(root / "rain.nc")}


# -- CAMELS-GB ----------------------------------------------------------------------------------

@pytest.mark.parametrize("subfolder", [False, True])
def test_camels_official_layout(tmp_path: Path, subfolder: bool) -> None:
    root = write_camels_official(tmp_path / "camels", subfolder=subfolder)
    dm = HydroDataModule(source="camels_gb", root=str(root), grids={}, series=SERIES,
                         static="static", location=["gauge_lat", "gauge_lon"],
                         cache_dir=str(tmp_path / "c"), seq_len=20, splits=SPLITS)
    dm.setup()
    ids = sorted(GAUGES)  # the files' order
    assert dm.catchment_ids == ids == ["27009", "39001", "54001"]
    assert dm.catchment_names == [GAUGES[g][0] for g in ids]
    # numeric attribute columns of both tables; the text column high_prec_timing is left out
    assert dm.static_names == ["gauge_lat", "gauge_lon", "area", "elev_mean", "p_mean"]
    np.testing.assert_allclose(dm.store.static[:, 2], [GAUGES[g][3] for g in ids])
    q = dm.store.series["riverflow"]  # (C, n_days); 54001 is gauge i = 1 of GAUGES
    np.testing.assert_allclose(q[2, :10], _flow(1, 120)[:10], rtol=1e-6)
    assert np.isnan(q[:, 10]).all()  # NaN in the CSV stays missing
    np.testing.assert_allclose(dm.store.series["evaporation"][:, 0], [1.2, 1.0, 1.1], rtol=1e-6)
    assert dm.units == {"riverflow": "mm/day", "evaporation": "mm/day",
                        "catchment_temperature": "degC"}
    want = lat_lon_to_patch(np.array([GAUGES[g][1] for g in ids]),
                            np.array([GAUGES[g][2] for g in ids]), 10)
    np.testing.assert_allclose(dm.catchment_locations, want)


def test_camels_attribute_selection_and_long_csv(tmp_path: Path) -> None:
    root = write_camels_official(tmp_path / "camels")
    dm = HydroDataModule(source="camels_gb", root=str(root), grids={}, series=SERIES,
                         static="static", options={"attributes": ["area", "gauge_lat"]},
                         cache_dir=str(tmp_path / "c"), seq_len=20, splits=SPLITS)
    assert dm.static_names == ["area", "gauge_lat"]
    with pytest.raises(ConfigError, match=r"data\.options\.attributes.*elev_mean"):
        HydroDataModule(source="camels_gb", root=str(root), grids={}, series=SERIES,
                        static="static", options={"attributes": ["aridity"]},
                        cache_dir=str(tmp_path / "c"), seq_len=20, splits=SPLITS)
    # a long re-packaged CSV (gauge_id, date, …) named as the root, gauges.csv beside it
    long = pd.concat([pd.DataFrame({"gauge_id": int(g), "date": DAYS.strftime("%Y-%m-%d"),
                                    "precipitation": 1.0, "temperature": 4.0 + i,
                                    "discharge_spec": _flow(i, len(DAYS))})
                      for i, g in enumerate(GAUGES)])
    (tmp_path / "long").mkdir()
    long.to_csv(tmp_path / "long" / "camels_v2.csv.gz", index=False)
    pd.DataFrame({"gauge_id": [int(g) for g in GAUGES], "gauge_name": [g[0] for g in GAUGES.values()],
                  "gauge_lat": [g[1] for g in GAUGES.values()],
                  "gauge_lon": [g[2] for g in GAUGES.values()], "area_km2": 1.0,
                  "coordinates_source": "caravan"}).to_csv(tmp_path / "long" / "gauges.csv",
                                                           index=False)
    dm = HydroDataModule(source="camels_gb", root=str(tmp_path / "long" / "camels_v2.csv.gz"),
                         grids={}, series={"riverflow": "discharge_spec"}, static="static",
                         location=["gauge_lat", "gauge_lon"], cache_dir=str(tmp_path / "c"),
                         seq_len=20, splits=SPLITS)
    dm.setup()
    assert dm.catchment_ids == sorted(GAUGES)
    assert dm.static_names == ["gauge_lat", "gauge_lon", "area_km2"]
    np.testing.assert_allclose(dm.store.series["riverflow"][0], _flow(2, 120), rtol=1e-6)
    assert np.isfinite(dm.catchment_locations).all()


def test_camels_missing_column_and_root(tmp_path: Path, files: dict[str, Path]) -> None:
    dm = HydroDataModule(source="camels_gb", root=str(files["camels"]), grids={},
                         series={"riverflow": "discharge"}, static=None,
                         cache_dir=str(tmp_path / "c"), seq_len=20, splits=SPLITS)
    with pytest.raises(DataError, match=r"hydromet_timeseries_27009.*no column \['discharge'\]"):
        dm.prepare_data()
    with pytest.raises(ConfigError, match=r"data\.root.*nowhere"):
        HydroDataModule(source="camels_gb", root=str(tmp_path / "nowhere"), grids={},
                        series=SERIES, static="static", cache_dir=str(tmp_path / "c"),
                        seq_len=20, splits=SPLITS)


# -- several sources in one run -------------------------------------------------------------------

def test_grids_and_series_from_two_sources(files: dict[str, Path], tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    # the grid holds 2001-01-15 … 2001-05-31, the series 2001-01-01 … 2001-04-30
    grid = write_grid(tmp_path / "late.nc", days=pd.date_range("2001-01-15", "2001-05-31"))
    splits = {**SPLITS, "train": {"start": "2001-01-15", "end": "2001-02-28"}}
    with caplog.at_level(logging.INFO, logger="maelab.data.hydro.assemble"):
        dm = HydroDataModule(**_multi(grid, files["camels"], tmp_path / "c", splits=splits))
        dm.setup()
    assert "common dates 2001-01-15 … 2001-04-30" in caplog.text
    store = dm.store
    assert str(store.days[0]) == "2001-01-15" and str(store.days[-1]) == "2001-04-30"
    assert store.grid_names == ["precipitation"]
    assert store.series_names == ["riverflow", "evaporation", "catchment_temperature"]
    p = store.grids["precipitation"]  # day t of the grid file holds t + 1 on land
    assert np.nanmax(p[0]) == 1.0 and np.nanmax(p[-1]) == 106.0  # flipped north-up → south-up
    np.testing.assert_array_equal(np.isfinite(p[0]), dm.layout.extract(
        default_land_mask().astype(np.float32)) == 1)
    np.testing.assert_allclose(store.series["riverflow"][1, 0], _flow(0, 120)[14], rtol=1e-6)
    assert np.isfinite(dm.catchment_locations).all()
    b = next(iter(dm.val_dataloader()))
    assert b["present"]["precipitation"].all() and b["present"]["riverflow"].all()
    assert not b["present"]["soil_moisture"].any() and b["static"].shape == (4, 5)
    assert dm.source is None and len(dm.sources.specs) == 2


def test_sources_without_common_dates_or_catchments(files: dict[str, Path], tmp_path: Path) -> None:
    grid = write_grid(tmp_path / "2005.nc", days=pd.date_range("2005-01-01", "2005-04-30"))
    m = HydroDataModule(**_multi(grid, files["camels"], tmp_path / "c"))
    with pytest.raises(DataError, match=r"share no dates.*2005\.nc: 2005-01-01.*2001-04-30"):
        m.prepare_data()
    assert not list((tmp_path / "c").rglob("meta.json"))
    other = write_camels_official(tmp_path / "other")
    for path in other.glob("CAMELS_GB_*_attributes.csv"):  # attributes of other gauges
        df = pd.read_csv(path)
        df["gauge_id"] = df["gauge_id"] + 1
        df.to_csv(path, index=False)
    catalog = {"haduk": {"source": "netcdf", "root": str(files["grid"]), "dims": GRID_DIMS},
               "camels": {"source": "camels_gb", "root": str(files["camels"])},
               "attrs": {"source": "camels_gb", "root": str(other)}}
    m = HydroDataModule(**_multi(files["grid"], files["camels"], tmp_path / "c", catalog=catalog,
                                 sources={"grids": "haduk", "series": "camels", "static": "attrs"}))
    with pytest.raises(DataError, match=r"share no catchment id.*27009.*27010"):
        m.prepare_data()


def test_catchment_without_coordinates(tmp_path: Path, files: dict[str, Path]) -> None:
    camels = write_camels_official(tmp_path / "camels", drop_lat="54001")
    m = HydroDataModule(**_multi(files["grid"], camels, tmp_path / "c"))
    with pytest.raises(DataError, match=r"catchment\(s\) 54001 have no coordinates.*gauge_lat"):
        m.prepare_data()
    assert not list((tmp_path / "c").rglob("meta.json"))
    m = HydroDataModule(**_multi(files["grid"], camels, tmp_path / "c", location=None))
    m.setup()  # location off: fine
    assert np.isnan(m.catchment_locations).all()


@pytest.mark.parametrize(("over", "key"), [
    ({"sources": {"grids": "era5", "series": "camels", "static": "camels"}}, "data.sources.grids"),
    ({"sources": {"grids": "haduk", "series": "camels", "static": "camels", "soil": "x"}},
     "data.sources.soil"),
    ({"sources": {"grids": "haduk", "static": "camels"}}, "data.sources.series"),
    ({"catalog": {"haduk": {"source": "netcdf", "root": "x", "chunks": 1},
                  "camels": {"source": "camels_gb", "root": "y"}}}, "data.catalog.haduk.chunks"),
    ({"catalog": {"haduk": {"source": "grib", "root": "x"},
                  "camels": {"source": "camels_gb", "root": "y"}}}, "data.catalog.haduk.source"),
    ({"missing": [{"series": "flow", "catchment": "1", "start": "2001-01-01",
                   "end": "2001-01-02"}]}, r"data.missing[0].series"),
])
def test_bad_source_settings_name_the_key(files: dict[str, Path], tmp_path: Path, over: dict,
                                          key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")
                       .replace("]", r"\]")):
        HydroDataModule(**_multi(files["grid"], files["camels"], tmp_path / "c", **over))


def test_missing_stretches_are_nan(files: dict[str, Path], tmp_path: Path) -> None:
    missing = [{"series": "riverflow", "catchment": "54001", "start": "2001-02-01",
                "end": "2001-02-10"}]
    dm = HydroDataModule(**_multi(files["grid"], files["camels"], tmp_path / "c", missing=missing))
    q = dm.store.series["riverflow"]
    lo, hi = dm.store.day_index("2001-02-01"), dm.store.day_index("2001-02-10")
    assert np.isnan(q[2, lo:hi + 1]).all() and np.isfinite(q[2, hi + 1:hi + 20]).all()
    assert np.isfinite(q[:2, lo:hi + 1]).all()
    bad = [{**missing[0], "catchment": "99999"}]
    with pytest.raises(DataError, match=r"data\.missing.*99999"):
        HydroDataModule(**_multi(files["grid"], files["camels"], tmp_path / "c2",
                                 missing=bad)).prepare_data()


# -- units, calendars, time axes, grid coordinates -------------------------------------------

def test_units_converted_to_the_models(tmp_path: Path, files: dict[str, Path]) -> None:
    assert conversion("kg m-2 s-1", "precipitation", "pr", "f").scale == 86400.0
    assert conversion("K", "temperature", "tas", "f").offset == -273.15
    grid = write_grid(tmp_path / "pr.nc", units="kg m-2 s-1", scale=1 / 86400)
    dm = HydroDataModule(**_multi(grid, files["camels"], tmp_path / "c"))
    np.testing.assert_allclose(np.nanmax(dm.store.grids["precipitation"][:3], axis=(1, 2)),
                               [1.0, 2.0, 3.0], rtol=1e-5)
    assert dm.units["precipitation"] == "mm/day" and dm.info().units["riverflow"] == "mm/day"
    kelvin = write_grid(tmp_path / "tas.nc", units="K", var="tas", scale=1.0)
    dm = HydroDataModule(**_multi(kelvin, files["camels"], tmp_path / "c", grids={
        "precipitation": None, "soil_moisture": None, "temperature": "tas"}))
    np.testing.assert_allclose(np.nanmax(dm.store.grids["temperature"][0]), 1 - 273.15, rtol=1e-5)
    # a CSV source states or corrects its units in config: pet given in m/day here
    dm = HydroDataModule(**_multi(files["grid"], files["camels"], tmp_path / "c", catalog={
        "haduk": {"source": "netcdf", "root": str(files["grid"]), "dims": GRID_DIMS},
        "camels": {"source": "camels_gb", "root": str(files["camels"]), "units": {"pet": "m"}}}))
    np.testing.assert_allclose(dm.store.series["evaporation"][:, 0], [1200, 1000, 1100], rtol=1e-5)


@pytest.mark.parametrize(("units", "var", "name", "text"), [
    ("furlongs", "rainfall", "precipitation", r"`rainfall` \(precipitation\) has units 'furlongs'"),
    ("K", "rainfall", "precipitation", r"`rainfall` has units 'K'.*precipitation needs.*mm/day"),
])
def test_unknown_or_unfit_units_name_the_variable(tmp_path: Path, files: dict[str, Path],
                                                  units: str, var: str, name: str,
                                                  text: str) -> None:
    grid = write_grid(tmp_path / "bad.nc", units=units, var=var)
    m = HydroDataModule(**_multi(grid, files["camels"], tmp_path / "c"))
    with pytest.raises(DataError, match=text):
        m.prepare_data()
    assert not list((tmp_path / "c").rglob("meta.json"))


def test_calendars(tmp_path: Path, files: dict[str, Path]) -> None:
    import cftime

    times = [cftime.Datetime360Day(2001, m, d) for m in (1, 2, 3, 4) for d in range(1, 31)]
    grid = write_grid(tmp_path / "ukcp.nc", days=pd.RangeIndex(120), times=times,
                      calendar="360_day")
    m = HydroDataModule(**_multi(grid, files["camels"], tmp_path / "c"))
    with pytest.raises(DataError, match=r"ukcp\.nc.*360_day calendar.*calendar_align"):
        m.prepare_data()
    catalog = {"haduk": {"source": "netcdf", "root": str(grid), "dims": GRID_DIMS,
                         "calendar_align": "year"},
               "camels": {"source": "camels_gb", "root": str(files["camels"])}}
    dm = HydroDataModule(**_multi(grid, files["camels"], tmp_path / "c", catalog=catalog))
    has = np.isfinite(dm.store.grids["precipitation"]).any(axis=(1, 2))
    assert 115 <= has.sum() < 120  # a few days of the 360-day year have no date
    noleap = [cftime.DatetimeNoLeap(2001, 1, 1) + pd.Timedelta(days=i) for i in range(120)]
    grid = write_grid(tmp_path / "noleap.nc", days=pd.RangeIndex(120), times=noleap,
                      calendar="noleap")
    dm = HydroDataModule(**_multi(grid, files["camels"], tmp_path / "c"))
    assert str(dm.store.days[0]) == "2001-01-01" and np.isfinite(
        dm.store.grids["precipitation"]).any(axis=(1, 2)).all()


@pytest.mark.parametrize(("times", "text"), [
    (pd.date_range("2001-01-01", periods=120, freq="6h"), "more than one step per day"),
    (pd.date_range("2001-01-01", periods=120, freq="MS"), "steps of 3[01] days"),
])
def test_non_daily_time_axis(tmp_path: Path, files: dict[str, Path], times: pd.DatetimeIndex,
                             text: str) -> None:
    grid = write_grid(tmp_path / "t.nc", days=times)
    m = HydroDataModule(**_multi(grid, files["camels"], tmp_path / "c"))
    with pytest.raises(DataError, match=rf"t\.nc: time axis `time` is not daily: {text}"):
        m.prepare_data()


def test_grid_coordinates_checked_not_only_shape(tmp_path: Path, files: dict[str, Path]) -> None:
    grid = write_grid(tmp_path / "km.nc", x=X_CENTRES / 1000)  # kilometres: right shape
    m = HydroDataModule(**_multi(grid, files["camels"], tmp_path / "c"))
    with pytest.raises(DataError, match=r"km\.nc.*`projection_x_coordinate` runs -197\.5 … "
                                        r"697\.5.*-197500 … 697500 m"):
        m.prepare_data()


# -- split checks --------------------------------------------------------------------------------

def test_split_warnings_and_real_steps(files: dict[str, Path], tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="maelab.data.hydro.datamodule"):
        dm = HydroDataModule(**_multi(files["grid"], files["camels"], tmp_path / "c"))
        dm.setup()
    text = caplog.text
    assert "hydro val (2001-03-01 … 2001-03-31): 6 windows of 20 days over 3 catchments" in text
    assert "hydro val: only 6 windows" in text and "hydro train: only" not in text
    assert "hydro test: a day lies in" not in text  # stride 10 of 20 days: 2 windows, fine
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maelab.data.hydro.datamodule"):
        HydroDataModule(**_multi(files["grid"], files["camels"], tmp_path / "c",
                                 eval_stride=3)).setup()
    assert ("hydro test: a day lies in up to 7 consecutive windows of a catchment "
            "(data.eval_stride=3, data.seq_len=20)" in caplog.text)
    assert "raise data.eval_stride to at least 7" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maelab.data.hydro.datamodule"):
        HydroDataModule(**_multi(files["grid"], files["camels"], tmp_path / "c",
                                 eval_stride=7)).setup()
    assert "a day lies in" not in caplog.text  # 3 windows: the default's cover (30 of 90 days)
    caplog.clear()
    trainer = L.Trainer(max_epochs=3, limit_train_batches=100, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    dm.trainer = trainer
    with caplog.at_level(logging.WARNING, logger="maelab.data.hydro.datamodule"):
        n = len(dm.train_dataloader())
    assert n < 100
    assert (f"{n} batches of 4 per epoch, fewer than trainer.limit_train_batches=100: {n} steps "
            f"per epoch, {3 * n} in 3 epochs") in caplog.text
