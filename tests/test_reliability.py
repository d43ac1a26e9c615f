"""Interruption and resume, non-finite losses, atomic writes, safe checkpoint loading."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from maelab.core.errors import ConfigError
from maelab.core.io import (
    _atomic_write,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    safe_torch_load,
)
from maelab.pipeline import train
from tests.conftest import ROOT, TINY

RESUMABLE = [o for o in TINY if o != "debug=fast"] + [
    "data.n_train=1024", "trainer.max_epochs=3", "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1",
]


def _train_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", *RESUMABLE, f"hydra.run.dir={run_dir}", *extra]


def _env() -> dict:
    return {**os.environ, "MPLCONFIGDIR": str(ROOT / ".cache" / "matplotlib"),
            "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_metrics(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(_train_cmd(full), cwd=ROOT, env=_env(), check=True, capture_output=True)
    proc = subprocess.Popen(_train_cmd(killed), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    epoch_at_kill = safe_torch_load(last)["epoch"]
    assert epoch_at_kill < 2
    subprocess.run(_train_cmd(killed, "ckpt_path=last"), cwd=ROOT, env=_env(), check=True,
                   capture_output=True)
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((killed / "metrics.json").read_text())
    for score, row in a["test"].items():
        for key, value in row.items():
            assert b["test"][score][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    assert b["optimized_metric"] == pytest.approx(a["optimized_metric"], abs=1e-6)


def test_resume_without_checkpoint_is_a_clear_error(tiny_train_cfg):
    with pytest.raises(ConfigError, match="ckpt_path='last'.*no .*last.ckpt"):
        train(tiny_train_cfg("ckpt_path=last"))


class PoisonAtEpoch(L.Callback):
    """Turns the weights into NaN at the start of epoch 1 (a diverged run)."""

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == 1:
            with torch.no_grad():
                for p in module.parameters():
                    p.fill_(float("nan"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_train_cfg, tmp_path):
    poison = f"+callbacks.poison._target_={__name__}.PoisonAtEpoch"
    cfg = tiny_train_cfg("trainer.max_epochs=3", poison)
    with pytest.raises(FloatingPointError, match="non-finite training loss .* epoch 1"):
        train(cfg)
    last = safe_torch_load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0
    weights = {k: v for k, v in last["state_dict"].items() if k.startswith("net.")}
    assert weights and all(torch.isfinite(v).all() for v in weights.values())


def test_atomic_write_crash_keeps_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"auroc": 0.9})

    def crash_midway(fh) -> None:
        fh.write(b'{"auroc": 0.')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic_write(path, crash_midway)
    assert json.loads(path.read_text()) == {"auroc": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "temp file left behind"


def test_checkpoints_load_with_weights_only(tiny_train_cfg, tmp_path):
    metrics, _ = train(tiny_train_cfg())
    state = torch.load(metrics["checkpoint"], weights_only=True)  # raises on pickled objects
    assert "cal_threshold" in state["state_dict"] and "run_config" in state["hyper_parameters"]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "obj": Evil()}, bad)
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        safe_torch_load(bad)


def test_no_unsafe_torch_load_in_the_package():
    for path in (ROOT / "src").rglob("*.py"):
        for line in path.read_text().splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


class EpochSpy(L.Callback):
    """Records the epochs a run trains."""

    epochs: list[int] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        EpochSpy.epochs.append(trainer.current_epoch)


def test_last_checkpoint_is_the_last_epoch_and_resumes_there(tiny_train_cfg, tmp_path):
    # best.ckpt follows the largest validation loss (an early epoch here), last.ckpt every epoch
    three = ["trainer.max_epochs=3", "optimized_metric=val/loss", "optimized_metric_mode=max"]
    train(tiny_train_cfg(*three))
    run = tmp_path / "run"
    best, last = (safe_torch_load(run / "checkpoints" / n) for n in ("best.ckpt", "last.ckpt"))
    assert last["epoch"] == 2 and last["global_step"] == 3 * 2  # epochs 0, 1, 2 of 2 batches
    assert best["epoch"] < last["epoch"], "the test needs a best epoch before the last"
    for name in ("metrics.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / name).stat().st_mode & 0o777 == _umask_mode(), name
    config = (run / ".hydra" / "config.yaml").read_text()

    with pytest.raises(ConfigError, match="holds an earlier run's results"):  # not a resume
        train(tiny_train_cfg(*three, "seed=1"))
    assert (run / ".hydra" / "config.yaml").read_text() == config

    EpochSpy.epochs.clear()
    train(tiny_train_cfg("trainer.max_epochs=4", "optimized_metric=val/loss",
                         "optimized_metric_mode=max", "ckpt_path=last",
                         f"+callbacks.spy._target_={__name__}.EpochSpy"))
    assert EpochSpy.epochs == [3]
    assert safe_torch_load(run / "checkpoints" / "last.ckpt")["epoch"] == 3


def _umask_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_results_are_written_with_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"auroc": 0.5})
        atomic_write_text(tmp_path / "status.txt", "done")
        atomic_torch_save(tmp_path / "best.ckpt", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name


class Crash(Exception):
    pass


class CrashInEpoch(L.Callback):
    """Fails the run at the first training batch of epoch 1, after epoch 0's checkpoints."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == 1:
            raise Crash("killed")


def _csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_resume_keeps_the_csv_history(tiny_train_cfg, tmp_path):
    three = ["trainer.max_epochs=3", "trainer.limit_train_batches=4"]
    train(tiny_train_cfg(*three, name="full"))
    with pytest.raises(Crash):
        train(tiny_train_cfg(*three, f"+callbacks.crash._target_={__name__}.CrashInEpoch",
                             name="resumed"))
    before = _csv_rows(tmp_path / "resumed")
    assert {r["epoch"] for r in before} >= {"0"}
    train(tiny_train_cfg(*three, "ckpt_path=last", name="resumed"))
    full, resumed = _csv_rows(tmp_path / "full"), _csv_rows(tmp_path / "resumed")
    assert [(r["epoch"], r["step"]) for r in resumed] == [(r["epoch"], r["step"]) for r in full]
    for a, b in zip(full, resumed, strict=True):
        assert {k for k, v in a.items() if v} == {k for k, v in b.items() if v}
        for k, v in a.items():
            if v:
                assert float(b[k]) == pytest.approx(float(v), rel=1e-5, abs=1e-7), (a["step"], k)


@pytest.mark.slow  # 30 s or more: `make test-slow` (and CI) runs it
def test_a_second_run_on_a_directory_in_use_is_refused(tmp_path):
    """Two real processes on one run directory: the second stops at once and changes nothing;
    the first finishes; a new run on the finished directory is refused too."""
    run, log = tmp_path / "run", tmp_path / "first.log"
    first = subprocess.Popen(_train_cmd(run), cwd=ROOT, env=_env(), stdout=log.open("w"),
                             stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (run / ".lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run(_train_cmd(run, "seed=1"), cwd=ROOT, env=_env(), capture_output=True,
                            text=True, timeout=300)
    running = first.poll() is None
    assert first.wait(timeout=600) == 0, log.read_text()[-2000:]
    assert running, "the first run ended before the second started"
    assert second.returncode == 1
    assert f"hydra.run.dir='{run}'" in second.stderr and f"held by pid {first.pid}" in second.stderr
    assert "seed: 0" in (run / ".hydra" / "config.yaml").read_text()
    assert json.loads((run / "metrics.json").read_text())["test"]
    assert not (run / ".lock").exists()
    third = subprocess.run(_train_cmd(run), cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 1 and "holds an earlier run's results" in third.stderr
    # the first run's console: each Lightning line once, no advertisement, no bar when
    # callbacks.progress_bar=null, the score of each calibrated threshold named
    printed = log.read_text()
    assert printed.count("GPU available") == 1 and "litlogger" not in printed
    assert "it/s" not in printed and "Epoch " not in printed
    assert re.search(r"thresholds discrepancy \S+ \(f1\), reconstruction \S+ \(f1\), "
                     r"combined \S+ \(f1\)", printed), printed[-2000:]


def _batches_in_a_loky_worker(num_workers: int) -> list[list[int]]:
    """What a DataLoader with worker processes yields inside a joblib/loky process, where
    `hydra/launcher=joblib` runs each job."""
    from torch.utils.data import TensorDataset

    from maelab.data.samplers import sharded_loader

    data = TensorDataset(torch.arange(6))
    loader = sharded_loader(data, 2, shuffle=False, num_workers=num_workers)
    return [batch[0].tolist() for batch in loader]


def test_loader_workers_start_inside_joblib_launcher_jobs():
    """Loky's default start method cannot start plain multiprocessing workers (it failed every
    job of `train.py -m ... hydra/launcher=joblib` whose data used loader workers)."""
    from joblib import Parallel, delayed

    (batches,) = Parallel(n_jobs=2, backend="loky")([delayed(_batches_in_a_loky_worker)(1)])
    assert batches == [[0, 1], [2, 3], [4, 5]]
