"""Small value checks shared by configs and DataModules; each failure names its key."""

from __future__ import annotations

import numbers
from typing import Any

from maelab.core.errors import ConfigError


def positive_int(key: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int, unless it is not an integer ≥ `minimum` (bools are not integers)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(key, value, "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}")
    return int(value)


def in_range(key: str, value: float, low: float, high: float, low_open: bool = False,
             high_open: bool = False) -> float:
    """`value` as a float, unless outside [low, high] (`low_open` / `high_open`: bound excluded)."""
    v = float(value)
    if v < low or v > high or (low_open and v == low) or (high_open and v == high):
        raise ConfigError(key, value, f"a value in {'(' if low_open else '['}{low}, {high}"
                          f"{')' if high_open else ']'}")
    return v


def at_least(key: str, value: float, low: float, strict: bool = False) -> float:
    """`value` as a float, unless below `low` (or equal to it when `strict`)."""
    v = float(value)
    if v < low or (strict and v == low):
        raise ConfigError(key, value, f"a value {'>' if strict else '≥'} {low}")
    return v


def one_of(key: str, value: Any, choices: tuple | list) -> Any:
    """`value`, unless it is not among `choices`."""
    if value not in choices:
        raise ConfigError(key, value, choices)
    return value


def divisors(n: int) -> list[int]:
    """The divisors of `n` in increasing order (listed in errors about sizes that must divide)."""
    return [d for d in range(1, n + 1) if n % d == 0]


def width_and_heads(width_key: str, width: int, heads_key: str, heads: int) -> None:
    """An attention width must split into `heads` heads and be a multiple of 4 (sin-cos
    positional embeddings); the failure names the key that cannot be right."""
    if width % 4:
        raise ConfigError(width_key, width, f"a multiple of {heads_key}={heads} and of 4")
    if width % heads:
        raise ConfigError(heads_key, heads, f"a divisor of {width_key}={width} (each head gets "
                          f"{width_key} / {heads_key} channels): {divisors(width)}")
