"""Synthetic hydrology on the real UK land mask: coupled grids and catchment series, seeded.

The Dataset follows the format every hydrology source maps into (CF conventions):

    precipitation, soil_moisture, temperature   (time, y=290, x=180) float32, NaN over sea
    evaporation, riverflow                       (time, catchment) float32 (riverflow has gaps)
    static                                       (catchment, attribute) float32
    land_mask, elevation, catchment_map          (y, x)

Physics, all numpy-vectorised over space (the day loop only runs the two recursions):
precipitation thresholds and scales a spatially correlated, persistent Gaussian field, wetter in
the west, on high ground and in winter; temperature has a seasonal cycle, a latitude gradient,
an elevation lapse rate and correlated anomalies; a soil bucket per cell is filled by rain and
emptied by evaporation (temperature-driven, soil-moisture limited) and drainage; catchment-mean
effective rainfall feeds a fast and a slow linear reservoir, whose sum is the riverflow.

CLI: ``python -m maelab.data.hydro.sources.synthetic out=<path.nc|path.zarr> [start=…] [end=…]
[seed=…] [n_catchments=…]``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time as _time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from scipy.ndimage import distance_transform_edt
from scipy.signal import lfilter

from maelab.core.errors import ConfigError
from maelab.data.hydro.layout import GRID_SHAPE, X_CENTRES, Y_CENTRES, bng_to_lat_lon, load_land_mask
from maelab.data.hydro.sources.base import HydroSource, check_splits_in_range, register

GENERATOR_VERSION = 1
GRIDS = ("precipitation", "soil_moisture", "temperature")
SERIES = ("evaporation", "riverflow")
STATIC_ATTRIBUTES = (
    "area_km2", "mean_elevation_m", "centroid_lat", "centroid_lon",
    "soil_capacity_mm", "baseflow_index", "fast_response_days", "slow_response_days",
)
VARIABLES = (*GRIDS, *SERIES, "static", "land_mask", "elevation", "catchment_map")
DEFAULTS = {"start": "2000-01-01", "end": "2002-12-31", "seed": 0, "n_catchments": 20,
            "gap_fraction": 0.01}

# Upland centres on the British National Grid: (x km, y km, sd_x km, sd_y km, height m).
_UPLANDS = (
    (250, 760, 70, 60, 550), (295, 800, 30, 30, 450), (215, 880, 45, 55, 500),
    (290, 610, 60, 25, 350), (325, 510, 20, 20, 500), (390, 480, 20, 90, 380),
    (265, 355, 20, 20, 550), (280, 270, 30, 40, 380), (300, 220, 30, 15, 350),
    (260, 80, 15, 12, 330), (75, 555, 25, 20, 300), (140, 485, 12, 12, 350),
)


def synthetic_elevation(land: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 elevation (m): upland bumps fading towards the coast, 0 over sea."""
    xk, yk = np.meshgrid(X_CENTRES / 1000, Y_CENTRES / 1000)  # (H, W) km
    relief = np.zeros(land.shape)
    for x0, y0, sx, sy, h in _UPLANDS:
        relief += h * np.exp(-0.5 * (((xk - x0) / sx) ** 2 + ((yk - y0) / sy) ** 2))
    coast_km = distance_transform_edt(land) * 5.0
    rough = np.zeros(land.shape)
    rough[land] = _smooth_field(rng, 1, 25.0, 0.0, land)[0]  # (H, W)
    elev = (relief + 60 + 40 * rough) * (1 - np.exp(-coast_km / 12))
    return np.where(land, np.clip(elev, 0, None), 0).astype(np.float32)


def _kernel(centres_km: np.ndarray, length_km: float, spacing_km: float) -> np.ndarray:
    """(n_cells, n_nodes) Gaussian weights from coarse nodes, rows scaled to unit variance."""
    nodes = np.arange(centres_km.min() - 2 * length_km, centres_km.max() + 2 * length_km,
                      spacing_km)
    w = np.exp(-0.5 * ((centres_km[:, None] - nodes[None, :]) / length_km) ** 2)
    return w / np.sqrt((w**2).sum(axis=1, keepdims=True))


def _smooth_field(rng: np.random.Generator, n_days: int, length_km: float, rho: float,
                  land: np.ndarray) -> np.ndarray:
    """(T, N) float32 unit-variance Gaussian field on the N `land` cells, correlated over
    ~length_km and AR(1) in time with lag-1 correlation `rho`."""
    ky = _kernel(Y_CENTRES / 1000, length_km, 0.75 * length_km).astype(np.float32)  # (H, Ky)
    kx = _kernel(X_CENTRES / 1000, length_km, 0.75 * length_km).astype(np.float32)  # (W, Kx)
    e = rng.standard_normal((n_days, ky.shape[1], kx.shape[1]), dtype=np.float32)  # (T,Ky,Kx)
    if rho > 0:
        s = np.sqrt(1 - rho**2)
        e[0] /= s  # stationary start: z_0 = e_0
        e = lfilter([s], [1.0, -rho], e, axis=0).astype(np.float32)
    n_y = ky.shape[1]
    e = e.reshape(n_days * n_y, -1) @ kx.T  # (T*Ky, W)
    e = e.reshape(n_days, n_y, -1).transpose(1, 0, 2).reshape(n_y, -1)  # (Ky, T*W)
    full = (ky @ e).reshape(len(ky), n_days, -1)  # (H, T, W)
    ys, xs = np.nonzero(land)
    return np.ascontiguousarray(full[ys, :, xs].T)  # (T, N)


def make_catchments(land: np.ndarray, n: int, rng: np.random.Generator,
                    min_radius: int = 3, max_radius: int = 8) -> np.ndarray:
    """(H, W) int16 catchment labels (−1 = none): contiguous land regions grown from seeds.

    Seeds are spread by farthest-point sampling; each region grows through 4-neighbours,
    randomly per step, for up to 2 × its radius steps, so it stays connected.
    """
    ys, xs = np.nonzero(land)
    pts = np.stack([ys, xs], axis=1).astype(np.float64)  # (N, 2)
    seeds = [int(rng.integers(len(pts)))]
    dist = np.full(len(pts), np.inf)
    for _ in range(n - 1):  # n small: farthest-point sampling
        dist = np.minimum(dist, ((pts - pts[seeds[-1]]) ** 2).sum(axis=1))
        seeds.append(int(dist.argmax()))
    labels = np.full(land.shape, -1, dtype=np.int16)
    labels[ys[seeds], xs[seeds]] = np.arange(n)
    steps = 2 * rng.integers(min_radius, max_radius + 1, size=n)  # (n,) growth steps
    h, w = land.shape
    for step in range(1, int(steps.max()) + 1):
        grow = rng.random(land.shape) < 0.7
        padded = np.pad(labels, 1, constant_values=-1)
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nb = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]  # neighbour's label
            ok = (labels < 0) & land & grow & (nb >= 0)
            ok &= steps[np.clip(nb, 0, None)] >= step
            labels[ok] = nb[ok]
    return labels


def _gaps(rng: np.random.Generator, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """(C, T) bool runs of missing days (3–30 days each) covering about `fraction` of days."""
    c, t = shape
    n_runs = rng.poisson(fraction * t / 16.5, size=c)  # (C,)
    row = np.repeat(np.arange(c), n_runs)
    start = rng.integers(0, t, size=row.size)
    stop = np.minimum(start + rng.integers(3, 31, size=row.size), t)
    edges = np.zeros((c, t + 1), dtype=np.int32)
    np.add.at(edges, (row, start), 1)
    np.add.at(edges, (row, stop), -1)
    return np.cumsum(edges[:, :t], axis=1) > 0


def generate_hydrology(
    start: str = DEFAULTS["start"],
    end: str = DEFAULTS["end"],
    seed: int = DEFAULTS["seed"],
    n_catchments: int = DEFAULTS["n_catchments"],
    gap_fraction: float = DEFAULTS["gap_fraction"],
    land_mask: np.ndarray | None = None,
    spinup_days: int = 240,
) -> xr.Dataset:
    """Generate the synthetic hydrology Dataset for the days `start` … `end` (inclusive)."""
    try:
        days = pd.date_range(str(start), str(end), freq="D")
    except ValueError as exc:
        raise ConfigError("start/end", f"{start}…{end}", "ISO dates (YYYY-MM-DD)") from exc
    if len(days) < 1:
        raise ConfigError("end", end, f"a date on or after start={start}")
    if not 1 <= int(n_catchments) <= 500:
        raise ConfigError("n_catchments", n_catchments, "an integer in [1, 500]")
    if not 0.0 <= float(gap_fraction) < 0.5:
        raise ConfigError("gap_fraction", gap_fraction, "a share in [0, 0.5)")
    land = load_land_mask() if land_mask is None else np.asarray(land_mask, dtype=bool)
    rng = np.random.default_rng(int(seed))
    h, w = GRID_SHAPE
    n_days = len(days) + spinup_days
    all_days = pd.date_range(days[0] - pd.Timedelta(days=spinup_days), periods=n_days, freq="D")
    doy = all_days.day_of_year.to_numpy()[:, None].astype(np.float32)  # (T, 1)
    winter = np.cos(2 * np.pi * (doy - 15) / 365.25)  # (T, 1) +1 mid-January, −1 mid-July
    xk, yk = np.meshgrid(X_CENTRES / 1000, Y_CENTRES / 1000)  # (H, W) km
    x_l, y_l = xk[land], yk[land]  # (N,) land cells

    elev = synthetic_elevation(land, rng)
    el = elev[land] / 1000.0  # (N,) km
    west = np.clip((300 - x_l) / 300, -1, 1)  # (N,) +1 far west, −1 far east

    # precipitation: thresholded, persistent, spatially correlated field (T, N)
    z = _smooth_field(rng, n_days, 60.0, 0.55, land)
    thr = 0.0 - 0.35 * west - 0.8 * el - 0.2 * winter  # (T, N)
    scale = (5.0 + 8.0 * el + 2.0 * np.clip(west, 0, None)) * (1 + 0.25 * winter)
    local = np.exp(0.35 * rng.standard_normal(z.shape, dtype=np.float32) - 0.06)
    precip = (scale * np.clip(z - thr, 0, None) ** 1.3 * local).astype(np.float32)
    wet = (precip > 0.1).astype(np.float32)

    # temperature: seasonal cycle, latitude gradient, lapse rate, correlated anomalies (T, N)
    amp = 5.0 + 1.5 * np.clip(x_l / 600, 0, 1)
    anomaly = _smooth_field(rng, n_days, 200.0, 0.8, land)
    temp = (10.5 - 3.0 * y_l / 1000 - 6.5 * el - amp * np.cos(2 * np.pi * (doy - 20) / 365.25)
            + 2.3 * anomaly + 0.8 * wet * winter).astype(np.float32)

    # soil bucket per cell, day loop vectorised over cells
    capacity = (160 - 70 * np.clip(el / 0.8, 0, 1)).astype(np.float32)  # (N,) mm
    pet = (0.15 * np.clip(temp + 2.0, 0, None)).astype(np.float32)  # (T, N) mm/day
    storage = 0.7 * capacity
    soil, aet, runoff = (np.empty_like(precip) for _ in range(3))
    for t in range(n_days):
        storage = storage + precip[t]
        e = np.minimum(pet[t] * np.minimum(1.0, storage / (0.6 * capacity)), storage)
        storage = storage - e
        excess = np.maximum(storage - capacity, 0)
        storage = storage - excess
        drain = 0.04 * storage * (storage / capacity) ** 2
        storage = storage - drain
        soil[t], aet[t], runoff[t] = storage, e, excess + drain
    theta = (0.08 + 0.37 * soil / capacity).astype(np.float32)  # volumetric m3 m-3

    # catchments and routing: fast + slow linear reservoirs of catchment-mean effective rain
    labels = make_catchments(land, int(n_catchments), rng)
    lab_l = labels[land]  # (N,)
    member = (lab_l[None, :] == np.arange(n_catchments)[:, None]).astype(np.float32)  # (C, N)
    cells = member.sum(axis=1)
    member /= cells[:, None]
    eff = runoff @ member.T  # (T, C) mm/day
    area = cells * 25.0
    bfi = rng.uniform(0.25, 0.75, n_catchments)
    k_fast = 1.2 + 1.8 * np.sqrt(area / 1000.0)
    k_slow = rng.uniform(20, 60, n_catchments)
    s_fast, s_slow = np.zeros(n_catchments), np.zeros(n_catchments)
    flow = np.empty_like(eff)
    for t in range(n_days):
        s_fast += (1 - bfi) * eff[t]
        s_slow += bfi * eff[t]
        q_fast, q_slow = s_fast / k_fast, s_slow / k_slow
        s_fast -= q_fast
        s_slow -= q_slow
        flow[t] = q_fast + q_slow
    keep = slice(spinup_days, None)
    flow = flow[keep] * np.exp(0.05 * rng.standard_normal(flow[keep].shape))
    flow[_gaps(rng, (n_catchments, len(days)), gap_fraction).T] = np.nan
    evap = (aet @ member.T)[keep] * np.exp(0.03 * rng.standard_normal(flow.shape))

    lat, lon = bng_to_lat_lon(*np.meshgrid(X_CENTRES, Y_CENTRES))  # (H, W)
    static = np.stack([
        area, member @ elev[land], member @ lat[land], member @ lon[land],
        member @ capacity, bfi, k_fast, k_slow,
    ], axis=1).astype(np.float32)  # (C, A)

    def grid(values: np.ndarray) -> np.ndarray:
        full = np.full((len(days), h, w), np.nan, dtype=np.float32)  # (T, H, W)
        full[:, land] = values[keep]
        return full

    gm = {"grid_mapping": "transverse_mercator", "coordinates": "latitude longitude"}
    dims3 = ("time", "y", "x")
    ds = xr.Dataset(
        {
            "precipitation": (dims3, grid(precip), {
                "standard_name": "lwe_thickness_of_precipitation_amount", "units": "mm",
                "long_name": "daily precipitation", **gm}),
            "soil_moisture": (dims3, grid(theta), {
                "long_name": "volumetric soil moisture", "units": "m3 m-3", **gm}),
            "temperature": (dims3, grid(temp), {
                "standard_name": "air_temperature", "units": "degC",
                "long_name": "daily mean air temperature", **gm}),
            "evaporation": (("time", "catchment"), evap.astype(np.float32), {
                "long_name": "catchment-mean actual evaporation", "units": "mm/day"}),
            "riverflow": (("time", "catchment"), flow.astype(np.float32), {
                "long_name": "specific discharge (riverflow)", "units": "mm/day"}),
            "static": (("catchment", "attribute"), static, {
                "long_name": "static catchment attributes"}),
            "land_mask": (("y", "x"), land.astype(np.int8), {
                "long_name": "land (cell ≥ 50 % land)", "flag_values": np.int8([0, 1]),
                "flag_meanings": "sea land", **gm}),
            "elevation": (("y", "x"), elev, {
                "standard_name": "surface_altitude", "units": "m", **gm}),
            "catchment_map": (("y", "x"), labels, {
                "long_name": "catchment index of each cell (-1 = none)", **gm}),
            "transverse_mercator": ((), np.int32(0), {
                "grid_mapping_name": "transverse_mercator",
                "longitude_of_central_meridian": -2.0, "latitude_of_projection_origin": 49.0,
                "false_easting": 400000.0, "false_northing": -100000.0,
                "scale_factor_at_central_meridian": 0.9996012717,
                "semi_major_axis": 6377563.396, "semi_minor_axis": 6356256.909,
                "crs_wkt": "EPSG:27700"}),
        },
        coords={
            "time": ("time", days.to_numpy(), {"standard_name": "time", "axis": "T"}),
            "y": ("y", Y_CENTRES, {"standard_name": "projection_y_coordinate", "units": "m",
                                   "axis": "Y"}),
            "x": ("x", X_CENTRES, {"standard_name": "projection_x_coordinate", "units": "m",
                                   "axis": "X"}),
            "catchment": ("catchment", np.arange(n_catchments, dtype=np.int32)),
            "attribute": ("attribute", np.array(STATIC_ATTRIBUTES)),
            "latitude": (("y", "x"), lat.astype(np.float32), {
                "standard_name": "latitude", "units": "degrees_north"}),
            "longitude": (("y", "x"), lon.astype(np.float32), {
                "standard_name": "longitude", "units": "degrees_east"}),
        },
        attrs={
            "Conventions": "CF-1.8",
            "title": "maelab synthetic hydrology on the HadUK-Grid 5 km grid",
            "source": f"maelab.data.hydro.sources.synthetic v{GENERATOR_VERSION}",
            "seed": int(seed),
        },
    )
    return ds


@register
class SyntheticSource(HydroSource):
    """`data.source=synthetic`: generated in memory from `data.synthetic` (no files), checked
    without generating anything."""

    kind = "synthetic"
    needs_root = False

    @property
    def settings(self) -> dict[str, object]:
        """Generator settings: `data.synthetic` over the defaults."""
        return {**DEFAULTS, **self.spec.synthetic}

    def check_settings(self, splits: Mapping[str, tuple[np.datetime64, np.datetime64]]) -> None:
        for key, value in self.spec.synthetic.items():
            if key not in DEFAULTS:
                raise ConfigError(f"data.synthetic.{key}", value, list(DEFAULTS))
        spec = self.spec
        named = [(f"data.{group}.{k}", v) for group, m in (("grids", spec.grids),
                                                          ("series", spec.series))
                 for k, v in m.items()] + [("data.static", spec.static)]
        for key, var in named:
            if var is not None and var not in VARIABLES:
                raise ConfigError(key, var, "a variable of the synthetic generator: "
                                  + ", ".join(VARIABLES))
        lo, hi = (np.datetime64(str(self.settings[k]), "D") for k in ("start", "end"))
        check_splits_in_range(splits, lo, hi, "data.synthetic.start … end")

    def known_static_names(self) -> list[str]:
        return list(STATIC_ATTRIBUTES) if self.spec.static == "static" else []

    def files(self) -> list[Path]:
        return []

    def fingerprint(self) -> str:
        ident = {"generator": GENERATOR_VERSION, **self.settings}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()

    def open(self, land_mask: np.ndarray | None) -> xr.Dataset:
        return generate_hydrology(**self.settings, land_mask=land_mask)


def write_dataset(ds: xr.Dataset, path: str | Path) -> Path:
    """Write `ds` as NetCDF (`.nc`, zlib, monthly time chunks) or Zarr (`.zarr`, format 2 with
    consolidated metadata, monthly chunks) by suffix."""
    path = Path(path)
    if path.suffix not in (".nc", ".zarr"):
        raise ConfigError("out", str(path), "a path ending in .nc (NetCDF) or .zarr (Zarr)")
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk_t = min(31, ds.sizes["time"])
    if path.suffix == ".nc":
        enc = {name: {"zlib": True, "complevel": 4, "shuffle": True,
                      "chunksizes": (chunk_t, *GRID_SHAPE)} for name in GRIDS}
        tmp = path.with_name(f".{path.name}.tmp")
        ds.to_netcdf(tmp, encoding=enc)
        tmp.replace(path)
    else:
        chunked = ds.chunk({"time": chunk_t}).drop_encoding()
        chunked.to_zarr(path, mode="w", zarr_format=2, consolidated=True)
    return path


def main(argv: list[str] | None = None) -> Path:
    """CLI entry: parse ``key=value`` arguments, generate, write."""
    args = sys.argv[1:] if argv is None else argv
    kw: dict[str, object] = dict(DEFAULTS)
    out = None
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in (*DEFAULTS, "out"):
            raise ConfigError(key or arg, value, "key=value with key one of out, "
                              + ", ".join(DEFAULTS))
        if key == "out":
            out = value
        elif key in ("seed", "n_catchments"):
            kw[key] = int(value)
        elif key == "gap_fraction":
            kw[key] = float(value)
        else:
            kw[key] = value
    if out is None:
        raise ConfigError("out", None, "an output path ending in .nc or .zarr")
    if Path(out).suffix not in (".nc", ".zarr"):
        raise ConfigError("out", out, "a path ending in .nc (NetCDF) or .zarr (Zarr)")
    t0 = _time.perf_counter()
    ds = generate_hydrology(**kw)
    t1 = _time.perf_counter()
    path = write_dataset(ds, out)
    print(f"wrote {path}: {ds.sizes['time']} days, {ds.sizes['catchment']} catchments "
          f"(generated in {t1 - t0:.1f} s, written in {_time.perf_counter() - t1:.1f} s)")
    return path


if __name__ == "__main__":
    main()
