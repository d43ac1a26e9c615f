"""Hydra callbacks (registered in conf/hydra/default.yaml).

- `RunDirLockCallback` claims the run (or sweep) directory before Hydra writes `.hydra/` into it
  (`maelab.core.rundir`): a second run there is refused instead of overwriting the first's config.
- `JobStatusCallback` writes `<job dir>/status.json` when a job ends, failed or not; it runs
  wherever the job runs (in the worker processes of `hydra/launcher=joblib` too).
- `SweepReportCallback` aggregates a multirun (`maelab.report`) when it ends. Hydra's basic
  sweeper re-raises the first failed job's exception before `on_multirun_end`, so the report is
  also written at interpreter exit when the multirun stopped with an error.
"""

from __future__ import annotations

import atexit
import logging
import pickle
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from maelab.core.errors import ConfigError
from maelab.core.io import atomic_write_json
from maelab.core.rundir import claim, is_first_rank, release

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


def error_summary(exc: BaseException) -> dict[str, Any]:
    """Type, first and last line of the message, innermost frame and full traceback of `exc`."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [""]
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}" if frames else None
    return {
        "error_type": type(exc).__name__, "error": lines[0], "error_last_line": lines[-1],
        "error_location": where,
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def job_status(job_return: JobReturn, wall_time_s: float | None) -> dict[str, Any]:
    """The content of status.json for a finished job."""
    status = job_return.status
    # `JobReturn.return_value` re-raises a failed job's exception; the stored value holds it
    value = job_return._return_value
    record: dict[str, Any] = {
        "status": status.name, "overrides": list(job_return.overrides or []),
        "wall_time_s": wall_time_s, "return_value": None,
    }
    if status == JobStatus.COMPLETED and isinstance(value, (int, float)):
        record["return_value"] = float(value)
    if status == JobStatus.FAILED and isinstance(value, BaseException):
        record |= error_summary(value)
    return record


def make_error_picklable(job_return: JobReturn) -> None:
    """Swap a failed job's exception for a RuntimeError with its message if it cannot be pickled.

    Launchers that run jobs in other processes (joblib/loky, submitit) pickle the JobReturn; an
    exception that does not survive pickling breaks the whole process pool and the other jobs.
    """
    exc = job_return._return_value
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        job_return.return_value = RuntimeError(f"{type(exc).__name__}: {exc}")


class RunDirLockCallback(Callback):
    """Claim `hydra.run.dir` (a run) or `hydra.sweep.dir` (a multirun) until it ends, before
    Hydra writes anything there; `ckpt_path` set means a resume (`maelab.core.rundir`).

    A refusal prints its message and exits with status 1: Hydra turns a callback's exception
    into a warning and would run the job anyway. Picklable (submitit ships callbacks to jobs)."""

    def __init__(self) -> None:
        self._locks: list[Path] = []

    def _claim(self, config: DictConfig, key: str, sweep: bool) -> None:
        resume = OmegaConf.select(config, "ckpt_path", default=None) not in (None, "")
        try:
            lock = claim(str(OmegaConf.select(config, key)), resume, key, sweep=sweep)
        except ConfigError as exc:
            print(exc, file=sys.stderr, flush=True)
            raise SystemExit(1) from exc
        if lock is not None:
            self._locks.append(lock)

    def _release(self) -> None:
        while self._locks:
            release(self._locks.pop())

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.run.dir", sweep=False)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "hydra.sweep.dir", sweep=True)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._release()


class JobStatusCallback(Callback):
    """Write `<job dir>/status.json` (status, overrides, wall time, error) after every job.

    Under a launcher other than Hydra's in-process basic launcher, a failed job's exception is
    also made picklable (`make_error_picklable`). DDP ranks other than 0 write nothing.
    """

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started[str(config.hydra.runtime.output_dir)] = time.perf_counter()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not is_first_rank():  # Lightning re-runs train.py per rank: rank 0 speaks for the job
            return
        out_dir = str(config.hydra.runtime.output_dir)
        start = self._started.pop(out_dir, None)
        wall = None if start is None else round(time.perf_counter() - start, 3)
        record = job_status(job_return, wall)
        record["job_num"] = OmegaConf.select(config, "hydra.job.num", default=None)
        atomic_write_json(Path(out_dir) / STATUS_FILE, record)
        if record["status"] == JobStatus.FAILED.name:
            single_run = OmegaConf.select(config, "hydra.mode", default=None) == RunMode.RUN
            if not single_run:  # Hydra prints a single run's error itself
                log.error("job %s failed: %s: %s", out_dir, record.get("error_type"),
                          record.get("error"))
            launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
            if not launcher.endswith(".BasicLauncher"):
                make_error_picklable(job_return)


class SweepReportCallback(Callback):
    """Aggregate every job of a multirun into ablation.{csv,md,png} in its sweep directory."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._sweep_dir: Path | None = None
        self._mmmae = False  # MM-MAE jobs: their table (maelab.models.mmmae.ablation) as well

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self._mmmae = str(config.get("model", {}).get("_target_", "")).startswith("maelab.models.mmmae.")
        # imported now: at exit (a failed job's error) pandas' import could no longer register
        # its own atexit hook ("can't register atexit after shutdown") and the report would fail
        import maelab.report.sweep  # noqa: F401

        atexit.register(self._report)  # the multirun may end by raising a failed job's error

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._report)
        self._report()

    def _report(self) -> None:
        """Write and print the report once; never raise (a report must not hide a job's error)."""
        sweep_dir, self._sweep_dir = self._sweep_dir, None
        if sweep_dir is None or not sweep_dir.is_dir():
            return
        from maelab.report.sweep import write_report

        try:
            report = write_report(sweep_dir)
        except Exception:
            log.exception("could not aggregate the multirun in %s", sweep_dir)
            return
        print(report.markdown, flush=True)
        print(f"report: {report.markdown_path} {report.csv_path} {report.plot_path}", flush=True)
        if self._mmmae:  # the generic table scores anomalies; MM-MAE's scores reconstructions
            from maelab.models.mmmae.ablation import write

            try:
                print(write(sweep_dir), flush=True)
            except (Exception, SystemExit):
                log.exception("could not write the MM-MAE table of %s", sweep_dir)
                return
            print(f"report: {sweep_dir / 'mmmae_ablation.md'} {sweep_dir / 'mmmae_ablation.csv'}",
                  flush=True)
