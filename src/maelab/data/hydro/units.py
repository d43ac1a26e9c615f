"""Units of hydrology variables: read, checked and converted to the model's units.

The model works in mm/day for water fluxes (precipitation, evaporation, riverflow as specific
discharge), °C for temperature and m³/m³ for soil moisture. A source variable's unit comes from
its CF `units` attribute, or from the `units` map of its source in the config (CSV sources, or
to correct a file); the common ones are converted (kg m-2 s-1 → mm/day, K → °C, …), anything else
is refused naming the variable. On a daily axis a depth (`mm`, `kg m-2`) is the day's total.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from maelab.core.errors import DataError

log = logging.getLogger(__name__)

FLUX, TEMPERATURE, FRACTION = "mm/day", "degC", "m3 m-3"  # the model's units, one per family


@dataclass(frozen=True)
class Conversion:
    """model value = source value × scale + offset, in `unit` (one of the model's units)."""

    unit: str
    scale: float = 1.0
    offset: float = 0.0

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0


_KNOWN: dict[str, Conversion] = {
    # water flux or daily depth → mm/day
    **dict.fromkeys(("mm/day", "mm day-1", "mm d-1", "mm/d", "mm", "kg m-2", "kg m-2 day-1",
                     "kg m-2 d-1", "kg/m2/day", "mm per day"), Conversion(FLUX)),
    **dict.fromkeys(("kg m-2 s-1", "kg/m2/s", "mm s-1", "mm/s"), Conversion(FLUX, 86400.0)),
    **dict.fromkeys(("mm h-1", "mm/h", "mm hr-1", "mm/hr"), Conversion(FLUX, 24.0)),
    **dict.fromkeys(("m", "m day-1", "m d-1", "m/day"), Conversion(FLUX, 1000.0)),
    # temperature → °C
    **dict.fromkeys(("degc", "°c", "c", "deg c", "degree_celsius", "degrees_celsius", "celsius",
                     "degrees c", "deg_c"), Conversion(TEMPERATURE)),
    **dict.fromkeys(("k", "kelvin", "degk", "deg k", "degrees_k"),
                    Conversion(TEMPERATURE, 1.0, -273.15)),
    # volumetric share → m³/m³
    **dict.fromkeys(("m3 m-3", "m3/m3", "m^3 m^-3", "m3.m-3", "1", "fraction", "-"),
                    Conversion(FRACTION)),
    "%": Conversion(FRACTION, 0.01),
}
_CASE_SENSITIVE = {"m", "mm", "%", "1", "-"}  # `m` metres, never `M`
EXPECTED = {  # canonical name → the model's unit it must convert to
    "precipitation": FLUX, "evaporation": FLUX, "riverflow": FLUX,
    "catchment_precipitation": FLUX, "temperature": TEMPERATURE,
    "catchment_temperature": TEMPERATURE, "soil_moisture": FRACTION,
}


def _key(unit: str) -> str:
    u = re.sub(r"\s+", " ", unit.strip()).replace("**", "").replace("^", "")
    return u if u in _CASE_SENSITIVE else u.lower()


def conversion(unit: str | None, name: str, variable: str, where: str) -> Conversion | None:
    """How to bring `variable` (canonical `name`) of `where` into the model's units; None when
    its unit is not stated (taken as the model's unit, with a warning). DataError for a unit
    not known here or one that does not fit `name` (e.g. K for riverflow)."""
    if unit is None or str(unit).strip() == "":
        log.warning("%s: `%s` (%s) states no units; taken as %s (state them with the source's "
                    "`units` map)", where, variable, name, EXPECTED.get(name, "the model's unit"))
        return None
    conv = _KNOWN.get(_key(str(unit)))
    if conv is None:
        raise DataError(f"{where}: `{variable}` ({name}) has units {unit!r}, not known here; "
                        f"known: {', '.join(sorted(set(_KNOWN)))} (or correct them with the "
                        "source's `units` map)")
    want = EXPECTED.get(name)
    if want is not None and conv.unit != want:
        raise DataError(f"{where}: `{variable}` has units {unit!r} ({conv.unit}), but {name} "
                        f"needs a unit convertible to {want}")
    return conv
