"""Hydrology sources, one module per kind (synthetic, netcdf, zarr, camels_gb), each registering
its `HydroSource` with `@register` (see base.py). Every module of this package is imported here,
so a new kind of source is one new module (and a data yaml naming it in `source:`)."""

import importlib
import pkgutil

from maelab.data.hydro.sources.base import (
    SOURCES,
    HydroSource,
    SourceSpec,
    open_source,
    register,
    source_for,
    static_names,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SOURCES", "HydroSource", "SourceSpec", "open_source", "register", "source_for",
           "static_names"]
