"""How many units a mask hides (no torch: configs check counts with it before any work)."""

from __future__ import annotations

from maelab.core.errors import ConfigError


def hidden_count(ratio: float, units: int, key: str = "masking_ratio", what: str = "units") -> int:
    """round(ratio × units), checked to hide at least one and not every unit (`what` the units
    are, for the message)."""
    if not 0.0 < float(ratio) < 1.0:
        raise ConfigError(key, ratio, "a value strictly between 0 and 1")
    n = round(float(ratio) * units)
    if n < 1 or n > units - 1:
        raise ConfigError(
            key, ratio, f"a ratio hiding between 1 and {units - 1} of {units} {what} "
            f"(round({ratio} × {units}) = {n})"
        )
    return n
