"""Real multi-process runs on CPU (gloo): DDP equals one process; DDP under multirun sweeps once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# limits instead of debug=fast so both runs see the same global batches; no labelled anomalies so
# per-rank loss means average exactly to the global mean
COMMON = [
    "logger=csv", "callbacks.progress_bar=null", "data.n_train=256", "data.n_val=128",
    "data.n_test=128", "data.train_labelled_share=0", "model.net.d_model=32",
    "model.net.encoder_depth=1", "model.net.teacher_depth=2", "model.optim.base_batch_size=32",
    "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2", "trainer.accelerator=cpu",
]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLCONFIGDIR": str(ROOT / ".cache" / "matplotlib"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    _run(*COMMON, "data.batch_size=32", f"hydra.run.dir={single}")
    _run(*COMMON, "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
         "data.batch_size=16", f"hydra.run.dir={ddp}")
    a = json.loads((single / "metrics.json").read_text())
    b = json.loads((ddp / "metrics.json").read_text())
    assert a["test"]["discrepancy"]["n"] == b["test"]["discrepancy"]["n"] == 64
    for score, row in a["test"].items():
        for key in ("auroc", "auprc", "f1"):
            assert b["test"][score][key] == pytest.approx(row[key], abs=1e-4), (score, key)
    ckpts = sorted(p.name for p in (ddp / "checkpoints").iterdir())
    assert ckpts == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_ddp_multirun_makes_one_sweep_with_two_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    _run("-m", *COMMON, "trainer=ddp", "trainer.devices=2", "data.batch_size=16",
         "masking=patch,token", f"hydra.sweep.dir={sweep}", f"paths.log_dir={tmp_path / 'logs'}")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    assert all((sweep / j / "metrics.json").exists() for j in jobs)
    assert not (tmp_path / "logs").exists(), "a rank started a sweep of its own"


@pytest.mark.slow
def test_submitit_local_multirun_completes(tmp_path):
    sweep = tmp_path / "sweep"
    _run("-m", *COMMON, "data.batch_size=32", "hydra/launcher=submitit_local",
         "hydra.launcher.timeout_min=20", "masking=patch,token", f"hydra.sweep.dir={sweep}")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    for j in jobs:
        metrics = json.loads((sweep / j / "metrics.json").read_text())
        assert 0 <= metrics["primary"]["auroc"] <= 1


def test_slurm_launcher_config_resolves():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == cfg.hydra.launcher.tasks_per_node == 4
    assert cfg.hydra.launcher.partition == "gpu" and cfg.trainer.strategy == "ddp"
