"""Interruption and resume, non-finite losses, atomic writes, safe checkpoint loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from maelab.core.io import _atomic_write, atomic_write_json, safe_torch_load
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
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
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
