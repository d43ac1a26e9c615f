"""Land mask / patch layout and the synthetic hydrology generator (incl. its CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy.ndimage import label

from maelab.core.errors import ConfigError
from maelab.data.hydro.layout import (
    X_CENTRES,
    Y_CENTRES,
    PatchLayout,
    bng_to_lat_lon,
    check_patch_size,
    default_land_mask,
    load_land_mask,
)
from maelab.data.hydro.sources.synthetic import generate_hydrology, main


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    return generate_hydrology("2000-01-01", "2000-09-30", seed=1, n_catchments=8,
                              gap_fraction=0.05, spinup_days=90)


def test_shipped_mask_gives_94_valid_patches() -> None:
    mask = default_land_mask()
    assert mask.shape == (290, 180) and mask.dtype == bool and mask.sum() == 9904
    layout = PatchLayout.build(mask, 10, 0.5)
    assert (layout.n_valid, layout.n_patches, layout.n_rows, layout.n_cols) == (94, 522, 29, 18)
    assert np.array_equal(layout.valid_idx, layout.rows * 18 + layout.cols)
    assert (layout.land_fraction[layout.valid_idx] >= 0.5).all()
    assert PatchLayout.build(mask, 10, 0.9).n_valid < 94


def test_extract_scatter_round_trip_on_land() -> None:
    layout = PatchLayout.build(default_land_mask(), 10, 0.5)
    grid = np.random.default_rng(0).random((2, 290, 180)).astype(np.float32)
    patches = layout.extract(grid)  # (2, 94, 100)
    assert patches.shape == (2, 94, 100)
    back = layout.scatter(patches)
    land = np.isfinite(back[0])
    assert np.array_equal(back[:, land], grid[:, land])
    assert land.sum() == layout.pixel_land.sum()


def test_patch_size_must_divide_the_grid() -> None:
    with pytest.raises(ConfigError, match=r"data\.patch_size.*1, 2, 5, 10"):
        check_patch_size(7)
    assert check_patch_size(5) == 5


def test_land_mask_from_files(tmp_path: Path) -> None:
    mask = default_land_mask()
    np.save(tmp_path / "ok.npy", mask.astype(np.uint8))
    assert np.array_equal(load_land_mask(tmp_path / "ok.npy"), mask)
    np.save(tmp_path / "bad.npy", np.ones((100, 100), dtype=bool))
    with pytest.raises(ConfigError, match=r"data\.land_mask.*\(290, 180\)"):
        load_land_mask(tmp_path / "bad.npy")
    # NetCDF variable stored north → south is flipped back to row 0 = south
    da = xr.DataArray(mask[::-1].astype(np.int8), dims=("y", "x"),
                      coords={"y": Y_CENTRES[::-1], "x": X_CENTRES}, name="lsm")
    da.to_dataset().to_netcdf(tmp_path / "mask.nc")
    assert np.array_equal(load_land_mask(tmp_path / "mask.nc", var="lsm"), mask)
    with pytest.raises(ConfigError, match=r"data\.land_mask_var.*lsm"):
        load_land_mask(tmp_path / "mask.nc", var="land")


def test_grid_lat_lon_on_britain() -> None:
    lat, lon = bng_to_lat_lon(np.array([400_000.0, 325_000.0]), np.array([-100_000.0, 673_000.0]))
    assert lat[0] == pytest.approx(49.0, abs=1e-6) and lon[0] == pytest.approx(-2.0, abs=1e-6)
    assert 55.5 < lat[1] < 56.5 and -3.5 < lon[1] < -2.5  # around Edinburgh


def test_synthetic_format_and_physics(ds: xr.Dataset) -> None:
    land = default_land_mask()
    for g in ("precipitation", "soil_moisture", "temperature"):
        a = ds[g].values
        assert a.shape == (274, 290, 180) and a.dtype == np.float32
        assert np.isfinite(a[:, land]).all() and np.isnan(a[:, ~land]).all()
    p = ds.precipitation.values[:, land]
    assert (p >= 0).all() and 0.2 < (p > 0.1).mean() < 0.8  # dry days exist
    west = X_CENTRES[np.nonzero(land)[1]] < 250_000
    assert p[:, west].mean() > p[:, ~west].mean()  # west wetter
    t = ds.temperature.values[:, land].mean(axis=1)
    assert t[180:220].mean() > t[:40].mean() + 6  # seasonal cycle
    sm = ds.soil_moisture.values[:, land]
    assert 0 < np.nanmin(sm) and np.nanmax(sm) < 0.5
    assert ds.evaporation.dims == ("time", "catchment") and ds.riverflow.sizes["catchment"] == 8
    assert np.isnan(ds.riverflow.values).any()  # gaps
    assert ds.static.dims == ("catchment", "attribute") and "area_km2" in ds.attribute
    lat = ds.static.sel(attribute="centroid_lat").values
    assert ((lat > 49.5) & (lat < 61)).all()


def test_catchments_are_contiguous_land(ds: xr.Dataset) -> None:
    cmap, land = ds.catchment_map.values, default_land_mask()
    for c in range(ds.sizes["catchment"]):
        region = cmap == c
        assert region.any() and land[region].all()
        assert label(region)[1] == 1  # one 4-connected component
    area = ds.static.sel(attribute="area_km2").values
    assert np.allclose(area, [(cmap == c).sum() * 25 for c in range(8)])


def test_riverflow_follows_lagged_catchment_rainfall(ds: xr.Dataset) -> None:
    land = default_land_mask()
    rain = ds.precipitation.values[:, land]  # (T, N)
    cmap = ds.catchment_map.values[land]
    kernel = np.ones(10) / 10
    own, other = [], []
    for c in range(8):
        q = np.log1p(ds.riverflow.values[:, c])
        ok = np.isfinite(q)
        for target, out in ((c, own), ((c + 3) % 8, other)):
            r = rain[:, cmap == target].mean(axis=1)
            lagged = np.convolve(r, kernel)[: len(r)]  # mean of the last 10 days
            out.append(np.corrcoef(q[ok], lagged[ok])[0, 1])
    assert np.median(own) > 0.5
    assert np.median(own) > np.median(other) + 0.15


def test_generator_is_seeded() -> None:
    a = generate_hydrology("2000-01-01", "2000-01-10", seed=5, n_catchments=3, spinup_days=5)
    b = generate_hydrology("2000-01-01", "2000-01-10", seed=5, n_catchments=3, spinup_days=5)
    c = generate_hydrology("2000-01-01", "2000-01-10", seed=6, n_catchments=3, spinup_days=5)
    assert a.identical(b)
    assert not np.allclose(a.precipitation.values, c.precipitation.values, equal_nan=True)


@pytest.mark.parametrize("suffix", [".nc", ".zarr"])
def test_cli_writes_netcdf_or_zarr(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"syn{suffix}"
    main([f"out={out}", "start=2001-03-01", "end=2001-03-05", "n_catchments=4"])
    back = xr.open_zarr(out) if suffix == ".zarr" else xr.open_dataset(out)
    assert back.sizes["time"] == 5 and back.precipitation.shape == (5, 290, 180)
    assert str(back.time.values[0])[:10] == "2001-03-01"
    back.close()


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="out"):
        main([f"out={tmp_path / 'x.csv'}"])
    with pytest.raises(ConfigError, match="colour"):
        main(["colour=red"])
    with pytest.raises(ConfigError, match="end"):
        main([f"out={tmp_path / 'x.nc'}", "start=2001-03-05", "end=2001-03-01"])
