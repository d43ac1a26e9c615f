"""One run per run directory: a lock file with the pid, and no new run over an earlier run's results.

`claim_run_dir(dir, resume, key)` (a context manager) refuses, with a ConfigError naming `key`:
- a directory another live process holds (`<dir>/.lock`: pid, host, process start time, command);
- a new run (not a resume) in a directory holding an earlier run's results (`metrics.json`,
  `checkpoints/*.ckpt`); `ckpt_path=last|<file>` resumes there instead.
A lock whose process is gone (same host, pid dead or reused) is taken over with a warning.

Only the job's first process claims: the extra ranks of one distributed job (Lightning's per-rank
re-runs of train.py, torchrun and SLURM tasks) share its directory and skip this. Claims nest
within a process (Hydra's callback claims the run directory before Hydra writes `.hydra/`;
`maelab.pipeline.train` claims it again, for callers without Hydra). No torch import.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from maelab.core.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
_YOUNG_S = 10.0  # an unreadable lock younger than this is being written, not abandoned
_held: dict[Path, int] = {}  # locks this process holds → nesting depth


def is_first_rank() -> bool:
    """False in the extra processes of a distributed job (any rank variable set and not 0)."""
    return all(os.environ.get(v, "0") in ("0", "") for v in
               ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), None where /proc cannot tell."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(record: dict[str, Any]) -> bool:
    """Whether the process that wrote lock `record` still runs (a lock of another host: assume so)."""
    if record.get("host") != socket.gethostname():
        return True
    pid = int(record.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    except (OverflowError, ValueError):
        return False
    start = _process_start(pid)
    return record.get("start") is None or start is None or start == record["start"]


def _parse(text: str) -> dict[str, Any] | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "pid" in record else None


def _mine(record: dict[str, Any] | None) -> bool:
    return record is not None and record.get("pid") == os.getpid() and \
        record.get("host") == socket.gethostname()


def earlier_results(run_dir: Path, sweep: bool = False) -> list[str]:
    """Results of an earlier run in `run_dir` (in its job folders when `sweep`)."""
    prefix = "*/" if sweep else ""
    found = [*run_dir.glob(f"{prefix}metrics.json"), *run_dir.glob(f"{prefix}checkpoints/*.ckpt")]
    return sorted(str(p.relative_to(run_dir)) for p in found)


def _in_use(key: str, lock: Path, why: str) -> ConfigError:
    return ConfigError(key, str(lock.parent), f"a run directory no other run is using: {why}")


def _acquire(lock: Path, key: str) -> None:
    """Create `lock` with this process's record; take over a stale one (see the module docstring)."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
              "since": datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                text, age = lock.read_text(), time.time() - lock.stat().st_mtime
            except FileNotFoundError:  # released meanwhile
                continue
            held = _parse(text)
            if held is None and age < _YOUNG_S:
                raise _in_use(key, lock, f"{lock} is being written by another process") from None
            if held is not None and not _mine(held) and _alive(held):
                raise _in_use(key, lock, f"{lock} is held by pid {held['pid']} on "
                              f"{held.get('host')} since {held.get('since')} ({held.get('command')}); "
                              f"if that run is gone, delete {lock}") from None
            if not _mine(held):
                log.warning("taking over the lock of a run that is gone: %s held %s", lock, text)
            try:  # remove only the stale lock read above, not one another process just took
                if lock.read_text() == text:
                    lock.unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh)
        return
    raise _in_use(key, lock, f"{lock} keeps changing (several runs starting there at once)")


def _release(lock: Path) -> None:
    _held[lock] -= 1
    if _held[lock] > 0:
        return
    del _held[lock]
    try:
        if _mine(_parse(lock.read_text())):
            lock.unlink()
    except FileNotFoundError:
        pass


@atexit.register
def _release_all() -> None:
    """Locks of a process leaving without unwinding its claims (e.g. interrupted in Hydra)."""
    for lock in list(_held):
        _held[lock] = 1
        _release(lock)


def claim(run_dir: str | os.PathLike, resume: bool, key: str, sweep: bool = False) -> Path | None:
    """Hold `run_dir` for this run (see the module docstring) until `release(<returned lock>)`;
    None (nothing held) in the extra ranks of a distributed job. `sweep`: a multirun's folder,
    whose earlier results are in its job folders."""
    if not is_first_rank():
        return None
    run_dir = Path(run_dir).resolve()
    lock = run_dir / LOCK_NAME
    if lock not in _held:
        run_dir.mkdir(parents=True, exist_ok=True)
        _acquire(lock, key)
        _held[lock] = 0
        results = [] if resume else earlier_results(run_dir, sweep)
        if results:
            _held[lock] = 1
            _release(lock)
            raise ConfigError(key, str(run_dir), "a new directory, or ckpt_path=last (or a .ckpt "
                              "file) to resume the run there: it holds an earlier run's results ("
                              + ", ".join(results[:4]) + (", …" if len(results) > 4 else "") + ")")
    _held[lock] += 1
    return lock


def release(lock: Path | None) -> None:
    """Undo one `claim` (the lock file goes with the outermost)."""
    if lock is not None and lock in _held:
        _release(lock)


@contextmanager
def claim_run_dir(run_dir: str | os.PathLike, resume: bool, key: str,
                  sweep: bool = False) -> Iterator[None]:
    """`claim` for the duration of a `with` block."""
    lock = claim(run_dir, resume, key, sweep)
    try:
        yield
    finally:
        release(lock)
