"""Hydrology sources: the registry, the spec every source reads, and the checks they share.

Every source maps onto one format (see `maelab.data.hydro.sources.synthetic`): grids
(time, y, x) on the 290 × 180 HadUK-Grid, catchment series (time, catchment), static attributes
(catchment, attribute), under the variable and dimension names the spec maps. A kind of source is
a `HydroSource` subclass in its own module of this package, registered with `@register`; the
package imports every module in it, so `data.source=<kind>` finds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from maelab.core.errors import ConfigError, DataError
from maelab.data.hydro.layout import GRID_SHAPE, X_CENTRES, Y_CENTRES

log = logging.getLogger(__name__)

CALENDAR_ALIGN = ("year", "date")  # xarray.Dataset.convert_calendar(align_on=...) for 360_day
DEFAULT_DIMS = {"time": "time", "y": "y", "x": "x", "catchment": "catchment",
                "attribute": "attribute"}
SOURCES: dict[str, type[HydroSource]] = {}


def register(cls: type[HydroSource]) -> type[HydroSource]:
    """Class decorator: make `cls` the source of `data.source=<cls.kind>`."""
    SOURCES[cls.kind] = cls
    return cls


@dataclass(frozen=True)
class SourceSpec:
    """Where hydrology data comes from and how its names map onto the canonical ones.

    `grids` / `series` map canonical names to source variables (None = absent modality);
    `synthetic` holds the generator settings of the synthetic source (`data.synthetic`);
    `units` states or corrects the units of source variables ({variable: unit}); `options` are
    settings of the kind (e.g. the CAMELS-GB attribute columns); `calendar_align` converts a
    360-day calendar (`year` | `date`, xarray's `convert_calendar`). `key` is where the spec's
    settings live in the config (`data` for the one source, `data.catalog.<name>` otherwise).
    """

    kind: str = "synthetic"
    root: str | None = None
    grids: dict[str, str | None] = field(default_factory=dict)
    series: dict[str, str | None] = field(default_factory=dict)
    static: str | None = None
    dims: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DIMS))
    synthetic: dict[str, Any] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    calendar_align: str | None = None
    key: str = "data"

    def __post_init__(self) -> None:
        kind_key = "data.source" if self.key == "data" else f"{self.key}.source"
        if self.kind not in SOURCES:
            raise ConfigError(kind_key, self.kind, sorted(SOURCES))
        if SOURCES[self.kind].needs_root and not self.root:
            raise ConfigError(f"{self.key}.root", self.root,
                              f"a path to the {self.kind} data (override with {self.key}.root=...)")
        unknown = set(self.dims) - set(DEFAULT_DIMS)
        if unknown:
            raise ConfigError(f"{self.key}.dims.{sorted(unknown)[0]}", None,
                              f"a key among {', '.join(DEFAULT_DIMS)}")
        if self.calendar_align not in (None, *CALENDAR_ALIGN):
            raise ConfigError(f"{self.key}.calendar_align", self.calendar_align,
                              f"null or one of {', '.join(CALENDAR_ALIGN)}")

    @property
    def where(self) -> str:
        """Human-readable origin for error messages."""
        return "the synthetic generator" if self.kind == "synthetic" else str(self.root)

    def dim(self, name: str) -> str:
        return self.dims.get(name, DEFAULT_DIMS[name])

    def needed(self) -> list[str]:
        """Source variables that are read."""
        names = [*self.grids.values(), *self.series.values(), self.static]
        return [v for v in names if v is not None]

    @property
    def timed(self) -> bool:
        """Whether grids or series are read from it (static attributes need no time axis)."""
        return any(v is not None for v in (*self.grids.values(), *self.series.values()))


class HydroSource:
    """One kind of hydrology source (`kind`); subclasses implement `files` and `open`."""

    kind: ClassVar[str]
    needs_root: ClassVar[bool] = True  # data.root is required

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec

    def check_settings(self, splits: Mapping[str, tuple[np.datetime64, np.datetime64]]) -> None:
        """Cheap checks before anything is opened or generated (none by default)."""

    def known_static_names(self) -> list[str] | None:
        """Static attribute names when known without opening the source (None: not known)."""
        return None

    def files(self) -> list[Path]:
        """The files behind the source, sorted; ConfigError naming `data.root` if none."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identity of the source for the store cache: path, size and mtime of every file."""
        ident = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in self.files()]
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()

    def open(self, land_mask: np.ndarray | None) -> xr.Dataset:
        """The source as a Dataset in the common format (lazily where possible)."""
        raise NotImplementedError


def check_splits_in_range(splits: Mapping[str, tuple[np.datetime64, np.datetime64]],
                          first: np.datetime64, last: np.datetime64, where: str) -> None:
    """Raise naming the split key whose dates fall outside the data's [first, last]."""
    for name, (lo, hi) in splits.items():
        for edge, day in (("start", lo), ("end", hi)):
            if not first <= day <= last:
                raise ConfigError(f"data.splits.{name}.{edge}", str(day),
                                  f"a date within {first} … {last} (the time range of {where})")


def source_for(spec: SourceSpec) -> HydroSource:
    """The registered source of `spec.kind`."""
    return SOURCES[spec.kind](spec)


def open_source(spec: SourceSpec, land_mask: np.ndarray | None = None) -> xr.Dataset:
    """Open (or generate) the source and check it before any long work; its time axis becomes
    whole days on the standard calendar (`daily_time`)."""
    ds = source_for(spec).open(land_mask)
    check_source(ds, spec)
    return daily_time(ds, spec) if spec.timed else ds


def daily_time(ds: xr.Dataset, spec: SourceSpec, where: str | None = None) -> xr.Dataset:
    """`ds` with its time coordinate as whole days (floored, datetime64) on the standard
    calendar. Non-standard calendars (cftime) are converted with xarray's `convert_calendar`:
    noleap / 365_day lose nothing (29 February is missing), all_leap / 366_day drop 29 February
    of common years (logged), 360_day only with `calendar_align` (it has no real dates).
    DataError naming the calendar, or the step, for anything that is not a daily axis."""
    where, t = where or spec.where, spec.dim("time")
    if t not in ds.coords:
        raise DataError(f"{where}: no time coordinate `{t}` (data.dims.time); coordinates: "
                        + ", ".join(sorted(map(str, ds.coords))))
    index = ds.indexes.get(t)
    if isinstance(index, xr.CFTimeIndex):
        ds = _to_standard_calendar(ds, index.calendar, spec, where)
    elif not np.issubdtype(ds[t].dtype, np.datetime64):
        enc = {**ds[t].attrs, **ds[t].encoding}
        raise DataError(
            f"{where}: time coordinate `{t}` holds {ds[t].dtype} values, not dates (units "
            f"{enc.get('units')!r}, calendar {enc.get('calendar')!r}); a calendar xarray/cftime "
            "cannot decode is not supported")
    days = ds[t].values.astype("datetime64[D]")  # floored: HadUK-Grid stamps days at 12:00
    step = np.diff(days.astype(np.int64))
    if (step <= 0).any():
        i = int(np.flatnonzero(step <= 0)[0])
        what = "more than one step per day (sub-daily data)" if step[i] == 0 else "not in order"
        raise DataError(f"{where}: time axis `{t}` is not daily: {what} at {days[i]} "
                        f"({ds[t].values[i]} then {ds[t].values[i + 1]}); daily data is needed")
    if step.size and float(np.median(step)) > 1:
        raise DataError(f"{where}: time axis `{t}` is not daily: steps of {np.median(step):g} "
                        f"days ({days[0]}, {days[1]}, …); daily data is needed")
    return ds.assign_coords({t: days.astype("datetime64[ns]")})


def _to_standard_calendar(ds: xr.Dataset, calendar: str, spec: SourceSpec,
                          where: str) -> xr.Dataset:
    t = spec.dim("time")
    if calendar == "360_day":
        if spec.calendar_align is None:
            raise DataError(
                f"{where}: time axis `{t}` uses the 360_day calendar (UKCP18-style, 30 days a "
                f"month): its days are not dates. Set {spec.key}.calendar_align to `year` or "
                "`date` to convert it (xarray convert_calendar; 5 or 6 days a year are then "
                "missing), or convert the files first")
        return ds.convert_calendar("standard", dim=t, align_on=spec.calendar_align,
                                   use_cftime=False)
    n = ds.sizes[t]
    out = ds.convert_calendar("standard", dim=t, use_cftime=False)
    if out.sizes[t] < n:
        log.warning("%s: calendar %s → standard dropped %d days that are no dates (29 February "
                    "of common years)", where, calendar, n - out.sizes[t])
    return out


def check_source(ds: xr.Dataset, spec: SourceSpec, where: str | None = None) -> None:
    """Raise before any long work: missing variables (listing those present), wrong dims, grid
    shape or grid coordinates."""
    where = where or spec.where
    present = sorted(str(v) for v in ds.data_vars)
    t, y, x = spec.dim("time"), spec.dim("y"), spec.dim("x")
    c, a = spec.dim("catchment"), spec.dim("attribute")
    groups = [("grids", spec.grids, (t, y, x)), ("series", spec.series, (t, c))]
    if spec.static is not None:
        groups.append(("static", {"static": spec.static}, (c, a)))
    for group, mapping, dims in groups:
        for name, var in mapping.items():
            if var is None:
                continue
            key = f"data.{group}.{name}" if group != "static" else "data.static"
            if var not in ds.variables:
                raise ConfigError(key, var, f"a variable of {where}: {', '.join(present)}")
            da = ds[var]
            if set(da.dims) != set(dims):
                raise DataError(
                    f"{where}: variable `{var}` ({key}) has dims {tuple(da.dims)}; expected "
                    f"{dims} (map dimension names with data.dims)")
            if group == "grids":
                check_grid(da, var, key, y, x, where)


def check_grid(da: xr.DataArray, var: str, key: str, y: str, x: str, where: str) -> None:
    """The grid's shape and, where it has them, its y / x coordinates must be the land mask's
    grid (HadUK-Grid 5 km cell centres, either order); DataError naming the mismatch."""
    if (da.sizes[y], da.sizes[x]) != GRID_SHAPE:
        raise DataError(
            f"{where}: grid `{var}` ({key}) has shape {(da.sizes[y], da.sizes[x])} "
            f"({y}, {x}); expected {GRID_SHAPE} (HadUK-Grid 5 km, y × x)")
    for dim, want in ((y, Y_CENTRES), (x, X_CENTRES)):
        if dim not in da.coords:
            continue
        got = np.asarray(da[dim].values, dtype=np.float64)
        got = got[::-1] if got[0] > got[-1] else got
        if not np.allclose(got, want, atol=1.0):
            raise DataError(
                f"{where}: grid `{var}` ({key}): coordinate `{dim}` runs {got[0]:g} … "
                f"{got[-1]:g} (step {np.diff(got).mean():g}); the land mask's grid has cell "
                f"centres {want[0]:g} … {want[-1]:g} m every 5000 m (HadUK-Grid 5 km, "
                "EPSG:27700): regrid the data or fix the coordinates")


def static_names(ds: xr.Dataset, spec: SourceSpec) -> list[str]:
    """Names of the source's static attributes (`attr_<i>` without an attribute coordinate)."""
    if spec.static is None:
        return []
    da, dim = ds[spec.static], spec.dim("attribute")
    return [str(v) for v in da[dim].values] if dim in da.coords else [
        f"attr_{i}" for i in range(da.sizes[dim])]
