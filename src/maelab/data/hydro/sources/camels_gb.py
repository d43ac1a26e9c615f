"""CAMELS-GB source (`data.source=camels_gb`), in either layout:

- the official release (Coxon et al. 2020): one `CAMELS_GB_hydromet_timeseries_<id>_<period>.csv`
  per catchment (date, precipitation, pet, temperature, discharge_spec, discharge_vol, peti,
  humidity, shortwave_rad, longwave_rad, windspeed) in `root` or its `timeseries/` folder, and
  the attribute tables `CAMELS_GB_<group>_attributes.csv` (gauge_id, …; the topographic one has
  gauge_name, gauge_lat, gauge_lon, area) in `root`;
- a long re-packaged CSV (gauge_id, date, precipitation, temperature, discharge_spec): `root` is
  the file, or a directory holding `camels_gb_60_daily_1989_2015.csv.gz`; attributes then come
  from `gauges.csv` beside it (gauge_id, gauge_name, gauge_lat, gauge_lon, area_km2).

Series become (time, catchment) variables named as their columns; the numeric attribute columns
become `static` (catchment, attribute) (option `attributes`: the columns to keep, in order) and
`gauge_name` a coordinate. Units are CAMELS-GB's documented ones (`UNITS`); a source's `units`
map overrides them.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from maelab.core.errors import ConfigError, DataError
from maelab.data.hydro.sources.base import HydroSource, register

CAMELS_FILE = "camels_gb_60_daily_1989_2015.csv.gz"
GAUGES_FILE = "gauges.csv"
TIMESERIES_GLOB = "CAMELS_GB_hydromet_timeseries_*.csv"
ATTRIBUTES_GLOB = "CAMELS_GB_*_attributes.csv"
STATIC = "static"  # the variable holding the attribute table
UNITS = {  # CAMELS-GB documentation (Coxon et al. 2020, table of hydrometeorological series)
    "precipitation": "mm/day", "pet": "mm/day", "peti": "mm/day", "temperature": "degC",
    "discharge_spec": "mm/day", "discharge_vol": "m3 s-1", "humidity": "g kg-1",
    "shortwave_rad": "W m-2", "longwave_rad": "W m-2", "windspeed": "m s-1",
}
OPTIONS = ("attributes",)


def _gauge_id(path: Path) -> str:
    """`CAMELS_GB_hydromet_timeseries_<id>_<period>.csv` → `<id>`."""
    return path.stem.split("_")[4]


def _read_attributes(files: list[Path], nrows: int | None = None) -> pd.DataFrame:
    """Attribute tables joined on gauge_id (as strings), in file order."""
    tables = []
    for path in files:
        df = pd.read_csv(path, nrows=nrows)
        if "gauge_id" not in df.columns:
            raise DataError(f"{path}: no `gauge_id` column; columns {list(df.columns)}")
        tables.append(df.assign(gauge_id=df["gauge_id"].astype(str)).set_index("gauge_id"))
    table = tables[0]
    for df in tables[1:]:
        table = table.join(df[[c for c in df.columns if c not in table.columns]], how="outer")
    return table


@register
class CamelsGBSource(HydroSource):
    kind = "camels_gb"

    @property
    def root(self) -> Path:
        return Path(str(self.spec.root)).expanduser()

    @cached_property
    def layout(self) -> dict[str, Any]:
        """{"kind": official|long, "series": [files], "attributes": [files]}; ConfigError
        naming the root key when neither layout is there."""
        root = self.root
        if root.is_dir():
            series = sorted(root.glob(TIMESERIES_GLOB)) or sorted(
                (root / "timeseries").glob(TIMESERIES_GLOB))
            if series:
                tables = sorted(root.glob(ATTRIBUTES_GLOB),  # topographic first: names, places
                                key=lambda p: ("_topographic_" not in p.name, p.name))
                return {"kind": "official", "series": series, "attributes": tables}
            root = root / CAMELS_FILE
        if root.is_file():
            gauges = root.parent / GAUGES_FILE
            return {"kind": "long", "series": [root],
                    "attributes": [gauges] if gauges.is_file() else []}
        raise ConfigError(f"{self.spec.key}.root", str(self.spec.root),
                          f"a CAMELS-GB folder ({TIMESERIES_GLOB} in it or in timeseries/, "
                          f"{ATTRIBUTES_GLOB}), a long CSV file, or a folder holding {CAMELS_FILE}")

    def check_settings(self, splits: Any) -> None:
        for key, value in self.spec.options.items():
            if key not in OPTIONS:
                raise ConfigError(f"{self.spec.key}.options.{key}", value, list(OPTIONS))

    def files(self) -> list[Path]:
        return [*self.layout["series"], *self.layout["attributes"]]

    def known_static_names(self) -> list[str] | None:
        if self.spec.static is None:
            return []
        if not self.layout["attributes"]:
            return None  # open() says what is missing
        return self._static_columns(_read_attributes(self.layout["attributes"], nrows=20))

    def _static_columns(self, table: pd.DataFrame) -> list[str]:
        numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        chosen = self.spec.options.get("attributes")
        if chosen is None:
            return numeric
        for name in chosen:
            if name not in numeric:
                raise ConfigError(f"{self.spec.key}.options.attributes", name,
                                  f"numeric attribute columns: {', '.join(numeric)}")
        return list(chosen)

    def _series(self) -> tuple[pd.DatetimeIndex, list[str], dict[str, np.ndarray]]:
        """Dates, gauge ids and (time, catchment) float32 arrays of the mapped columns."""
        wanted = [v for v in self.spec.series.values() if v is not None]
        if self.layout["kind"] == "long":
            path = self.layout["series"][0]
            df = pd.read_csv(path, parse_dates=["date"], dtype={"gauge_id": str})
            missing = {"gauge_id", "date", *wanted} - set(df.columns)
            if missing:
                raise DataError(f"{path}: no column {sorted(missing)}; columns {list(df.columns)}")
            wide = df.pivot(index="date", columns="gauge_id", values=wanted or None)
            ids = [str(g) for g in wide.columns.get_level_values(-1).unique()]
            return wide.index, ids, {v: wide[v].reindex(columns=ids).to_numpy(np.float32)
                                     for v in wanted}
        frames = {}
        for path in self.layout["series"]:
            df = pd.read_csv(path, parse_dates=["date"], index_col="date")
            missing = set(wanted) - set(df.columns)
            if missing:
                raise DataError(f"{path}: no column {sorted(missing)}; columns {list(df.columns)}")
            frames[_gauge_id(path)] = df[wanted]
        index = frames[next(iter(frames))].index
        for df in frames.values():
            index = index.union(df.index)
        ids = list(frames)
        data = {v: np.stack([frames[g][v].reindex(index).to_numpy(np.float32) for g in ids], axis=1)
                for v in wanted}
        return index, ids, data

    def open(self, land_mask: np.ndarray | None) -> xr.Dataset:
        where = str(self.spec.root)
        variables: dict[str, Any] = {}
        table = _read_attributes(self.layout["attributes"]) if self.layout["attributes"] else None
        if self.spec.timed:
            dates, ids, data = self._series()
            coords: dict[str, Any] = {"time": dates.to_numpy(), "catchment": np.array(ids)}
            units = {**UNITS, **self.spec.units}
            variables |= {v: (("time", "catchment"), a, {"units": units[v]} if v in units else {})
                          for v, a in data.items()}
        else:  # attributes only: their gauges
            ids = [] if table is None else list(table.index)
            coords = {"catchment": np.array(ids)}
        if table is not None:
            table = table.reindex(ids)
            if "gauge_name" in table.columns:
                coords["gauge_name"] = ("catchment", table["gauge_name"].fillna("").to_numpy(str))
            if self.spec.static is not None:
                columns = self._static_columns(table)
                coords["attribute"] = np.array(columns)
                variables[STATIC] = (("catchment", "attribute"),
                                     table[columns].to_numpy(np.float32))
        elif self.spec.static is not None:
            raise DataError(f"{where}: static attributes are asked for (data.static) but no "
                            f"{ATTRIBUTES_GLOB} or {GAUGES_FILE} is there")
        return xr.Dataset(variables, coords=coords, attrs={"source": where})

