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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from maelab.core.errors import ConfigError, DataError
from maelab.data.hydro.layout import GRID_SHAPE

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
    `synthetic` holds the generator settings of the synthetic source (`data.synthetic`).
    """

    kind: str = "synthetic"
    root: str | None = None
    grids: dict[str, str | None] = field(default_factory=dict)
    series: dict[str, str | None] = field(default_factory=dict)
    static: str | None = None
    dims: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DIMS))
    synthetic: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in SOURCES:
            raise ConfigError("data.source", self.kind, sorted(SOURCES))
        if SOURCES[self.kind].needs_root and not self.root:
            raise ConfigError("data.root", self.root,
                              f"a path to the {self.kind} data (override with data.root=...)")
        unknown = set(self.dims) - set(DEFAULT_DIMS)
        if unknown:
            raise ConfigError(f"data.dims.{sorted(unknown)[0]}", None,
                              f"a key among {', '.join(DEFAULT_DIMS)}")

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
    """Open (or generate) the source and check it before any long work."""
    ds = source_for(spec).open(land_mask)
    check_source(ds, spec)
    return ds


def check_source(ds: xr.Dataset, spec: SourceSpec, where: str | None = None) -> None:
    """Raise before any long work: missing variables (listing those present), wrong dims or
    grid shape, a time axis that is not dates."""
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
            if group == "grids" and (da.sizes[y], da.sizes[x]) != GRID_SHAPE:
                raise DataError(
                    f"{where}: grid `{var}` ({key}) has shape {(da.sizes[y], da.sizes[x])} "
                    f"({y}, {x}); expected {GRID_SHAPE} (HadUK-Grid 5 km, y × x)")
    if t not in ds.coords or not np.issubdtype(ds[t].dtype, np.datetime64):
        raise DataError(f"{where}: no datetime coordinate `{t}` (data.dims.time)")


def source_days(ds: xr.Dataset, spec: SourceSpec) -> np.ndarray:
    """(n_source_steps,) datetime64[D] dates of the source, checked strictly increasing."""
    days = ds[spec.dim("time")].values.astype("datetime64[D]")
    if days.size == 0 or (np.diff(days.astype(np.int64)) <= 0).any():
        raise DataError(f"{spec.where}: time axis `{spec.dim('time')}` must hold strictly "
                        "increasing, distinct days")
    return days


def static_names(ds: xr.Dataset, spec: SourceSpec) -> list[str]:
    """Names of the source's static attributes (`attr_<i>` without an attribute coordinate)."""
    if spec.static is None:
        return []
    da, dim = ds[spec.static], spec.dim("attribute")
    return [str(v) for v in da[dim].values] if dim in da.coords else [
        f"attr_{i}" for i in range(da.sizes[dim])]
