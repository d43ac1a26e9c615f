"""NetCDF source (`data.source=netcdf`): a file, a directory of *.nc files or a glob; several
files are combined by coordinates (`xarray.open_mfdataset`), reading only the mapped variables."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import xarray as xr

from maelab.core.errors import ConfigError
from maelab.data.hydro.sources.base import HydroSource, check_source, register


@register
class NetCDFSource(HydroSource):
    kind = "netcdf"

    def files(self) -> list[Path]:
        root = Path(str(self.spec.root)).expanduser()
        if root.is_dir():
            files = sorted(root.glob("*.nc"))
        elif any(c in str(root) for c in "*?["):
            files = sorted(Path(p) for p in glob.glob(str(root)))
        else:
            files = [root] if root.is_file() else []
        if not files:
            raise ConfigError("data.root", str(self.spec.root), "a NetCDF file, a directory of "
                              "*.nc files or a glob (override with data.root=...)")
        return files

    def open(self, land_mask: np.ndarray | None) -> xr.Dataset:
        files = self.files()
        with xr.open_dataset(files[0]) as first:  # fail on the first file, before combining
            check_source(first, self.spec, where=str(files[0]))
        if len(files) == 1:
            return xr.open_dataset(files[0], chunks={})
        keep = self.spec.needed()
        return xr.open_mfdataset(
            files, combine="by_coords", data_vars="minimal", coords="minimal",
            compat="override", join="outer",
            preprocess=lambda d: d[[v for v in keep if v in d.variables]],
        )
