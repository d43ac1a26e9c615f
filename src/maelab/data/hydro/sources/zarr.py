"""Zarr source (`data.source=zarr`): one Zarr store directory, opened lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from maelab.core.errors import ConfigError
from maelab.data.hydro.sources.base import HydroSource, register


@register
class ZarrSource(HydroSource):
    kind = "zarr"

    def files(self) -> list[Path]:
        root = Path(str(self.spec.root)).expanduser()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        if not files:
            raise ConfigError("data.root", str(self.spec.root),
                              "a Zarr store directory (override with data.root=...)")
        return files

    def open(self, land_mask: np.ndarray | None) -> xr.Dataset:
        self.files()
        return xr.open_zarr(str(self.spec.root))
