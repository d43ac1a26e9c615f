"""CAMELS-GB source (`data.source=camels_gb`): the CSV release (gauge_id, date, precipitation,
temperature, discharge_spec; gauge names from gauges.csv) as (time, catchment) series."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from maelab.core.errors import ConfigError, DataError
from maelab.data.hydro.sources.base import HydroSource, register

CAMELS_FILE = "camels_gb_60_daily_1989_2015.csv.gz"


def load_camels_gb(root: str | Path) -> xr.Dataset:
    """CAMELS-GB CSV release → Dataset with (time, catchment) variables precipitation,
    temperature, discharge_spec; catchment = gauge_id (gauge_name as a coordinate)."""
    root = Path(root)
    path = root / CAMELS_FILE
    if not path.is_file():
        raise ConfigError("data.root", str(root), f"a directory holding {CAMELS_FILE}")
    df = pd.read_csv(path, parse_dates=["date"])
    expected = {"gauge_id", "date", "precipitation", "temperature", "discharge_spec"}
    if not expected <= set(df.columns):
        raise DataError(f"{path}: columns {sorted(df.columns)}; expected {sorted(expected)}")
    wide = df.pivot(index="date", columns="gauge_id")
    gauges = wide.columns.levels[1]
    data = {v: (("time", "catchment"), wide[v].reindex(columns=gauges).to_numpy(np.float32))
            for v in ("precipitation", "temperature", "discharge_spec")}
    coords: dict[str, Any] = {"time": wide.index.to_numpy(), "catchment": gauges.to_numpy()}
    names_path = root / "gauges.csv"
    if names_path.is_file():
        names = pd.read_csv(names_path).set_index("gauge_id")["gauge_name"]
        coords["gauge_name"] = ("catchment", names.reindex(gauges).fillna("").to_numpy(str))
    return xr.Dataset(data, coords=coords, attrs={"source": str(path)})


@register
class CamelsGBSource(HydroSource):
    kind = "camels_gb"

    def files(self) -> list[Path]:
        root = Path(str(self.spec.root)).expanduser()
        files = [root / CAMELS_FILE] if (root / CAMELS_FILE).is_file() else []
        files += [root / "gauges.csv"] if (root / "gauges.csv").is_file() else []
        if not files:
            raise ConfigError("data.root", str(self.spec.root), f"a directory holding {CAMELS_FILE} "
                              "(and gauges.csv) (override with data.root=...)")
        return files

    def open(self, land_mask: np.ndarray | None) -> xr.Dataset:
        return load_camels_gb(self.spec.root)
