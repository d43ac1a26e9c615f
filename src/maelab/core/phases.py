"""Where a run's time goes: wall-clock and CPU seconds of named phases (no torch import).

`PHASES` is the process's recorder. The entry points time the import of the pipeline, the
pipeline times data, model, fit, calibration, test and figures, and `maelab.lit.phases.FitPhases`
splits the fit into training and validation epochs. `maelab.pipeline.train` writes the records
to `<run>/timings.json`; `benchmarks/phases.py` turns them into the phase profile of `make bench`.
Each record holds its start (seconds since the process started, so the time before the first
phase is the interpreter and Hydra's start-up), this process's CPU seconds at that start, and its
wall-clock and CPU seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc, 10 ms resolution; None elsewhere)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, ticks after boot
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


class PhaseRecorder:
    """Named phases of this process: start (s since process start), wall and CPU seconds."""

    def __init__(self) -> None:
        age = process_age()
        self.age_known = age is not None
        self.origin = time.perf_counter() - (age or 0.0)  # perf_counter at process start
        self.records: list[dict[str, Any]] = []

    def now(self) -> float:
        """Seconds since the process started."""
        return time.perf_counter() - self.origin

    def stamp(self) -> tuple[float, float]:
        """(seconds since the process started, CPU seconds of this process) now."""
        return self.now(), time.process_time()

    def add(self, name: str, start: tuple[float, float], end: tuple[float, float],
            **extra: Any) -> None:
        """Record phase `name` between two `stamp()`s."""
        self.records.append({"phase": name, "start": start[0], "cpu_start": start[1],
                             "wall": end[0] - start[0], "cpu": end[1] - start[1], **extra})

    @contextmanager
    def phase(self, name: str, **extra: Any) -> Iterator[None]:
        """Time the block as phase `name` (recorded even when it raises)."""
        start = self.stamp()
        try:
            yield
        finally:
            self.add(name, start, self.stamp(), **extra)

    @contextmanager
    def run(self) -> Iterator[None]:
        """One run's block (also a decorator): if it raises, what it recorded is forgotten, so the
        next run in this process (a Hydra multirun job, a notebook) writes only its own phases."""
        try:
            yield
        except BaseException:
            self.records = []
            raise

    def take(self) -> dict[str, Any]:
        """The records so far (then forgotten) and the clock they were taken on."""
        records, self.records = self.records, []
        now, cpu = self.stamp()
        return {"records": records, "taken_at": now, "cpu_at_take": cpu,
                "since_process_start": self.age_known}


PHASES = PhaseRecorder()
