"""A CSV logger whose history survives a resume (conf/logger/csv.yaml).

Lightning's CSVLogger deletes `metrics.csv` when it finds one, so `ckpt_path=last` lost every
epoch before the resume. This one keeps the earlier rows up to the step the resumed run starts
logging at: rows a killed run wrote after its last checkpoint are dropped (the resumed run logs
them again), the rest stay, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


class _HistoryWriter(ExperimentWriter):
    """Lightning's metrics.csv writer, merging an existing file's rows at its first save."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._merged = False

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes metrics.csv here; the rows are merged at the first save instead."""

    def save(self) -> None:
        if self.metrics and not self._merged and self._fs.isfile(self.metrics_file_path):
            first = min(int(m["step"]) for m in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                reader = csv.DictReader(file)
                # rows without a step (none written by Lightning) are kept
                kept = [r for r in reader if not _step(r) >= first]
                keys = list(reader.fieldnames or [])
            with self._fs.open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=keys)
                writer.writeheader()
                writer.writerows(kept)
            self.metrics_keys = keys  # Lightning widens the header when new keys come
        self._merged = self._merged or bool(self.metrics)
        super().save()


class ResumableCSVLogger(CSVLogger):
    """`lightning.pytorch.loggers.CSVLogger` keeping `metrics.csv` across a resume."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(log_dir=self.log_dir)
        return self._experiment
