"""The run-directory claim (maelab.core.rundir): a lock file with the pid, stale locks, finished
runs, nesting, distributed ranks."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maelab.core.errors import ConfigError
from maelab.core.rundir import LOCK_NAME, claim_run_dir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock(run: Path, **record) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    lock = run / LOCK_NAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "since": "then", "command": "x",
                                **record}))
    return lock


def test_claim_writes_the_pid_and_releases(tmp_path):
    run = tmp_path / "run"
    with claim_run_dir(run, resume=False, key="hydra.run.dir"):
        record = json.loads((run / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with claim_run_dir(run, resume=False, key="paths.output_dir"):  # the same process again
            pass
        assert (run / LOCK_NAME).exists(), "the outer claim still holds it"
    assert not (run / LOCK_NAME).exists()


def test_a_directory_held_by_a_live_process_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _lock(tmp_path / "run", pid=holder.pid, start=None)
        with pytest.raises(ConfigError, match=rf"hydra\.run\.dir=.*held by pid {holder.pid}"):
            with claim_run_dir(tmp_path / "run", resume=True, key="hydra.run.dir"):
                pass
        assert json.loads(lock.read_text())["pid"] == holder.pid, "the holder's lock is kept"
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_of_another_host_is_respected(tmp_path):
    _lock(tmp_path / "run", pid=_dead_pid(), host="elsewhere-node-7")
    with pytest.raises(ConfigError, match="held by pid .* on elsewhere-node-7.*delete"):
        with claim_run_dir(tmp_path / "run", resume=False, key="k"):
            pass


@pytest.mark.parametrize("stale", ["dead pid", "reused pid"])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, stale):
    # a reused pid: alive, but a process started at another time than the one recorded
    record = {"pid": _dead_pid()} if stale == "dead pid" else {"pid": os.getppid(), "start": "1"}
    _lock(tmp_path / "run", **record)
    with caplog.at_level(logging.WARNING, logger="maelab.core.rundir"):
        with claim_run_dir(tmp_path / "run", resume=False, key="k"):
            assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "taking over the lock of a run that is gone" in caplog.text


def test_an_unreadable_lock_being_written_is_respected_then_taken_over(tmp_path, caplog):
    lock = _lock(tmp_path / "run")
    lock.write_text("")
    with pytest.raises(ConfigError, match="being written"):
        with claim_run_dir(tmp_path / "run", resume=False, key="k"):
            pass
    old = time.time() - 60
    os.utime(lock, (old, old))
    with caplog.at_level(logging.WARNING, logger="maelab.core.rundir"):
        with claim_run_dir(tmp_path / "run", resume=False, key="k"):
            pass
    assert "taking over" in caplog.text


@pytest.mark.parametrize("result", ["metrics.json", "checkpoints/last.ckpt"])
def test_a_finished_run_is_refused_unless_resuming(tmp_path, result):
    run = tmp_path / "run"
    (run / result).parent.mkdir(parents=True, exist_ok=True)
    (run / result).write_text("{}")
    with pytest.raises(ConfigError, match=rf"ckpt_path=last .*earlier run's results \({result}"):
        with claim_run_dir(run, resume=False, key="hydra.run.dir"):
            pass
    assert not (run / LOCK_NAME).exists()
    with claim_run_dir(run, resume=True, key="hydra.run.dir"):
        assert (run / LOCK_NAME).exists()


def test_a_finished_sweep_is_refused_unless_resuming(tmp_path):
    (tmp_path / "sweep" / "1").mkdir(parents=True)
    (tmp_path / "sweep" / "1" / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"1/metrics\.json"):
        with claim_run_dir(tmp_path / "sweep", resume=False, key="hydra.sweep.dir", sweep=True):
            pass
    with claim_run_dir(tmp_path / "sweep", resume=False, key="k"):  # its job folders don't count
        pass


@pytest.mark.parametrize("var", ["LOCAL_RANK", "RANK", "SLURM_PROCID", "NODE_RANK"])
def test_extra_ranks_of_one_job_do_not_claim(tmp_path, monkeypatch, var):
    """Rank 0 holds the lock; the job's other ranks share the directory."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _lock(tmp_path / "run", pid=holder.pid, start=None)
        (tmp_path / "run" / "metrics.json").write_text("{}")
        monkeypatch.setenv(var, "1")
        with claim_run_dir(tmp_path / "run", resume=False, key="k"):
            pass
        assert json.loads(lock.read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("config", ["train", "evaluate"])
def test_runs_started_in_the_same_second_get_their_own_directories(config):
    """`for s in 0 1 2; do python train.py seed=$s & done` starts runs within one second: their
    default run and sweep directories differ (microseconds), so none is refused by the lock."""
    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    overrides = ["ckpt=x.ckpt"] if config == "evaluate" else []
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        dirs = []
        for _ in range(2):
            cfg = compose(config, overrides, return_hydra_config=True)
            dirs.append((cfg.hydra.run.dir, cfg.hydra.sweep.dir))
            time.sleep(0.002)
    (run_a, sweep_a), (run_b, sweep_b) = dirs
    assert run_a != run_b and sweep_a != sweep_b
    assert Path(run_a).parent == Path(run_b).parent  # <log_dir>/<task>/runs/
