"""The sources of a run, opened and assembled into one Dataset in the common format.

Each modality group (grids, series, static attributes) comes from one source: the single source
of `data.source` / `data.root`, or, with `data.sources: {grids: <name>, series: <name>, static:
<name>}`, a named source of `data.catalog` each. A source read by several groups is opened once.

The assembled Dataset (what `maelab.data.hydro.store.write_store` prepares) has canonical names:
grids `<name>` (time, y, x), series `<name>` (time, catchment), `static` (catchment, attribute),
in the model's units (`maelab.data.hydro.units`, the unit in each variable's `units`
attribute), on the days every timed source holds (the common range is logged; DataError when
there is none) and the catchments of the series and static sources together (matched by id as
text; DataError when none is shared). `data.missing` stretches are set to NaN.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import xarray as xr

from maelab.core.errors import ConfigError, DataError
from maelab.data.hydro.sources.base import (
    DEFAULT_DIMS,
    SourceSpec,
    open_source,
    source_for,
    static_names,
)
from maelab.data.hydro.units import conversion

log = logging.getLogger(__name__)

GROUPS = ("grids", "series", "static")
STATIC = "static"
SPEC_KEYS = ("source", "root", "dims", "synthetic", "units", "options", "calendar_align")


@dataclass(frozen=True)
class MissingStretch:
    """Days of one catchment's series to treat as missing (e.g. forward-filled flat stretches)."""

    series: str
    catchment: str
    start: np.datetime64
    end: np.datetime64


def parse_missing(entries: Sequence[Mapping[str, Any]] | None,
                  series: Sequence[str]) -> list[MissingStretch]:
    """`data.missing`: a list of {series, catchment, start, end}, checked (ConfigError naming
    the entry's key)."""
    out = []
    for i, entry in enumerate(entries or []):
        key = f"data.missing[{i}]"
        if not isinstance(entry, Mapping) or set(entry) != {"series", "catchment", "start", "end"}:
            raise ConfigError(key, entry, "a mapping {series, catchment, start, end}")
        if entry["series"] not in series:
            raise ConfigError(f"{key}.series", entry["series"], list(series))
        try:
            lo, hi = (np.datetime64(str(entry[k]), "D") for k in ("start", "end"))
        except ValueError as exc:
            raise ConfigError(key, dict(entry), "ISO dates YYYY-MM-DD") from exc
        if hi < lo:
            raise ConfigError(f"{key}.end", str(entry["end"]), f"a date on or after {lo}")
        out.append(MissingStretch(str(entry["series"]), str(entry["catchment"]), lo, hi))
    return out


class SourceSet:
    """Which source reads which modality group: `specs` {source name: SourceSpec} (each with
    only the variables of its groups) and `groups` {group: source name, None if unused}."""

    def __init__(self, specs: dict[str, SourceSpec], groups: dict[str, str | None]) -> None:
        self.specs, self.groups = specs, groups
        self.sources = {name: source_for(spec) for name, spec in specs.items()}

    @classmethod
    def single(cls, spec: SourceSpec) -> SourceSet:
        """Every group from one source (`data.source`)."""
        return cls({"data": spec}, dict.fromkeys(GROUPS, "data"))

    @classmethod
    def build(cls, single: Mapping[str, Any], sources: Mapping[str, str] | None,
              catalog: Mapping[str, Mapping[str, Any]] | None, grids: dict[str, str | None],
              series: dict[str, str | None], static: str | None) -> SourceSet:
        """From the data config: `single` holds data.{source, root, dims, …} (used when
        `sources` is null); `sources` maps groups to names of `catalog` entries."""
        mapping = {"grids": grids, "series": series, "static": static}
        if sources is None:
            kw = {k: v for k, v in single.items() if k in SPEC_KEYS}
            return cls.single(SourceSpec(kind=kw.pop("source"), **kw, **mapping))
        catalog = dict(catalog or {})
        for group, name in sources.items():
            if group not in GROUPS:
                raise ConfigError(f"data.sources.{group}", name, f"keys among {', '.join(GROUPS)}")
            if name is not None and name not in catalog:
                raise ConfigError(f"data.sources.{group}", name,
                                  f"a source of data.catalog: {', '.join(catalog) or '(none)'}")
        groups = {g: sources.get(g) for g in GROUPS}
        used = {g: m for g, m in mapping.items() if m not in (None, {}) and (
            g == "static" or any(v is not None for v in m.values()))}
        for group in used:
            if groups[group] is None:
                raise ConfigError(f"data.sources.{group}", None,
                                  f"the name of a data.catalog source: data.{group} is set")
        specs = {}
        for name in dict.fromkeys(n for n in groups.values() if n is not None):
            entry = dict(catalog[name])
            key = f"data.catalog.{name}"
            unknown = set(entry) - set(SPEC_KEYS)
            if unknown:
                raise ConfigError(f"{key}.{sorted(unknown)[0]}", None, list(SPEC_KEYS))
            if "source" not in entry:
                raise ConfigError(f"{key}.source", None, "the kind of the source")
            mine = {g: mapping[g] if groups[g] == name else ({} if g != "static" else None)
                    for g in GROUPS}
            specs[name] = SourceSpec(kind=entry.pop("source"), **entry, **mine, key=key)
        return cls(specs, groups)

    def names(self, group: str) -> list[str]:
        """Canonical names read for `group` (grids | series), in config order."""
        return [n for spec in self.specs.values() for n, v in getattr(spec, group).items()
                if v is not None]

    # -- cheap, before anything is opened ----------------------------------------------------------
    def check_settings(self, splits: Mapping[str, tuple[np.datetime64, np.datetime64]]) -> None:
        for name, source in self.sources.items():
            if self.specs[name].timed:
                source.check_settings(splits)
            else:
                source.check_settings({})

    def known_static_names(self) -> list[str] | None:
        name = self.groups["static"]
        if name is None or self.specs[name].static is None:
            return []
        return self.sources[name].known_static_names()

    def fingerprint(self) -> str:
        """Identity of every source and setting (part of the store's cache key)."""
        ident = {name: {"source": src.fingerprint(),
                        "spec": {k: v for k, v in asdict(self.specs[name]).items()
                                 if k not in ("root", "synthetic")}}
                 for name, src in self.sources.items()}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()

    def where(self, group: str = "grids") -> str:
        """The origin of a group (or of everything, with one source), for messages."""
        names = list(self.specs)
        if len(names) == 1:
            return self.specs[names[0]].where
        name = self.groups.get(group)
        return self.specs[name].where if name else " + ".join(s.where for s in self.specs.values())

    @property
    def description(self) -> str:
        return " + ".join(f"{g}: {self.specs[n].where}" for g, n in self.groups.items()
                          if n is not None) if len(self.specs) > 1 else self.where()

    # -- opening --------------------------------------------------------------------------------
    def open(self, land_mask: np.ndarray | None,
             missing: Sequence[MissingStretch] = ()) -> xr.Dataset:
        """Open, check, convert and align every source (module docstring)."""
        opened = {name: _canonical(open_source(spec, land_mask), spec)
                  for name, spec in self.specs.items()}
        timed = {n: ds for n, ds in opened.items() if self.specs[n].timed}
        if not timed:
            raise DataError(f"{self.where()}: no grid and no series is read (data.grids, "
                            "data.series)")
        first = max(ds.time.values[0] for ds in timed.values()).astype("datetime64[D]")
        last = min(ds.time.values[-1] for ds in timed.values()).astype("datetime64[D]")
        if len(timed) > 1:
            ranges = "; ".join(f"{self.specs[n].where}: {str(ds.time.values[0])[:10]} … "
                               f"{str(ds.time.values[-1])[:10]}" for n, ds in timed.items())
            if first > last:
                raise DataError(f"the sources share no dates ({ranges})")
            log.info("sources aligned on their common dates %s … %s (%s)", first, last, ranges)
        parts = [ds.sel(time=slice(first, last)) if n in timed else ds for n, ds in opened.items()]
        with_catchments = [ds for ds in parts if "catchment" in ds.dims]
        if len(with_catchments) > 1:
            shared = set(with_catchments[0].catchment.values)
            for ds in with_catchments[1:]:
                shared &= set(ds.catchment.values)
            if not shared:
                raise DataError("the series and static sources share no catchment id ("
                                + "; ".join(f"{s.where}: {_ids(ds)}" for s, ds in zip(
                                    self.specs.values(), opened.values(), strict=True)
                                    if "catchment" in ds.dims) + ")")
            order = [c for c in with_catchments[0].catchment.values if c in shared]
            dropped = {len(ds.catchment) - len(order) for ds in with_catchments}
            if max(dropped) > 0:
                log.warning("%d catchments of the sources have no counterpart in the other "
                            "source and are left out; %d kept", max(dropped), len(order))
            parts = [ds.sel(catchment=order) if "catchment" in ds.dims else ds for ds in parts]
        ds = xr.merge(parts, join="outer", compat="override", combine_attrs="drop_conflicts")
        return _set_missing(ds, missing)


def _ids(ds: xr.Dataset) -> str:
    ids = [str(c) for c in ds.catchment.values]
    return ", ".join(ids[:5]) + (f", … ({len(ids)})" if len(ids) > 5 else "")


def _canonical(ds: xr.Dataset, spec: SourceSpec) -> xr.Dataset:
    """The spec's variables under canonical names and dims, in the model's units; catchment ids
    as text; y / x ascending."""
    rename = {spec.dim(k): k for k in DEFAULT_DIMS if spec.dim(k) in ds.dims}
    out: dict[str, xr.DataArray] = {}
    for group in ("grids", "series"):
        for name, var in getattr(spec, group).items():
            if var is None:
                continue
            da = ds[var]
            unit = spec.units.get(var, da.attrs.get("units"))
            conv = conversion(unit, name, var, spec.where)
            if conv is not None and not conv.identity:
                da = da * conv.scale + conv.offset
            da = da.rename({k: v for k, v in rename.items() if k in da.dims})
            dims = ("time", "y", "x") if group == "grids" else ("time", "catchment")
            out[name] = da.transpose(*dims).assign_attrs(
                units=conv.unit if conv else str(unit or ""), source_variable=var)
    if spec.static is not None:
        da = ds[spec.static].rename({k: v for k, v in rename.items() if k in ds[spec.static].dims})
        da = da.transpose("catchment", "attribute")
        out[STATIC] = da.assign_coords(attribute=static_names(ds, spec))
    keep = [c for c in ("gauge_name",) if c in ds.coords]
    res = xr.Dataset(out).assign_coords({c: ds[c].rename(
        {k: v for k, v in rename.items() if k in ds[c].dims}) for c in keep})
    for dim in ("y", "x"):  # the land mask's order (south → north, west → east)
        if dim in res.dims and dim in res.coords and res.sizes[dim] > 1 and \
                float(res[dim][0]) > float(res[dim][-1]):
            res = res.isel({dim: slice(None, None, -1)})
    if "catchment" in res.dims:
        res = res.assign_coords(catchment=[str(c) for c in res.catchment.values])
    return res


def _set_missing(ds: xr.Dataset, missing: Sequence[MissingStretch]) -> xr.Dataset:
    """NaN over each stretch of `missing` (DataError naming an unknown catchment)."""
    for m in missing:
        if m.series not in ds:
            continue  # an absent series: nothing to clear
        if m.catchment not in set(ds.catchment.values):
            raise DataError(f"data.missing: catchment {m.catchment!r} ({m.series}) is not in "
                            f"the data: {_ids(ds)}")
        sel = (ds.time >= m.start) & (ds.time <= m.end) & (ds.catchment == m.catchment)
        ds[m.series] = ds[m.series].where(~sel)
        log.info("data.missing: %s of %s set missing %s … %s", m.series, m.catchment, m.start,
                 m.end)
    return ds
