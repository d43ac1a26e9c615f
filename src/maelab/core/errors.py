"""Errors raised for bad user input, each naming the offending key and what is allowed.

Both are Hydra "compact" errors: `train.py` / `evaluate.py` print their message alone (no
traceback; `HYDRA_FULL_ERROR=1` shows it) and exit with status 1, and a multirun records them as
the failed job's error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hydra.errors import CompactHydraException


class ConfigError(ValueError, CompactHydraException):
    """A configuration value is invalid; the message names the key, the value and valid choices."""

    def __init__(self, key: str, value: Any, valid: str | Iterable[Any]) -> None:
        if not isinstance(valid, str):
            valid = "one of " + ", ".join(repr(v) for v in valid)
        self.key, self.value, self.valid = key, value, valid
        super().__init__(f"invalid config `{key}={value!r}`: expected {valid}")

    def __reduce__(self) -> tuple:  # picklable, so process-pool launchers can return it
        return type(self), (self.key, self.value, self.valid)


class DataError(ValueError, CompactHydraException):
    """Input data is unusable (missing file/variable, wrong shape, non-finite values)."""
