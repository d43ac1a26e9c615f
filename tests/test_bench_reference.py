"""The side-by-side row against the design's code, and the GPU script in its dry mode.

The design's code is never part of the project: these tests give the harness a stand-in
checkout (`scripts/run_full_experiments.py` with the names the job driver uses and a tiny
model), so they check the driver and the ratios, not the design's speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.reference import SKIP, run
from tests.conftest import ROOT
from tests.test_mmmae_pipeline import SMALL

STAND_IN = '''
"""Stand-in for the design's scripts/run_full_experiments.py (names used by the job driver)."""
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Config:
    seq_length: int = 20
    num_features: int = 3
    num_train_samples: int = 64
    num_test_samples: int = 32
    train_anomaly_ratio: float = 0.05
    test_anomaly_ratio: float = 0.25
    batch_size: int = 32
    num_epochs: int = 2
    random_seed: int = 42
    mask_last_n: int = 5


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class MultivariateTimeSeriesDataset(torch.utils.data.Dataset):
    def __init__(self, n, seq_length, num_features, anomaly_ratio, is_train=True, seed=None):
        rng = np.random.default_rng(seed)
        self.x = torch.tensor(rng.normal(size=(n, seq_length, num_features)), dtype=torch.float32)
        self.y = torch.tensor(rng.random(n) < max(anomaly_ratio, 0.2)).long()
        self.x[self.y == 1, -5:] += 3.0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], self.y[i].repeat(self.x.shape[1])


class SelfDistilledMAEMultivariate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.net = nn.Linear(config.num_features, config.num_features)

    def forward(self, x):
        return self.net(x)


class Trainer:
    def __init__(self, model, config, train_loader, test_loader, verbose=True):
        self.model, self.config, self.loader = model, config, train_loader
        self.opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def train(self):
        for _ in range(self.config.num_epochs):
            for x, _, _ in self.loader:
                loss = ((self.model(x) - x) ** 2).mean()
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()


class Evaluator:
    def __init__(self, model, config, test_loader):
        self.model, self.loader = model, test_loader

    def compute_anomaly_scores(self):
        scores, labels = [], []
        with torch.no_grad():
            for x, y, _ in self.loader:
                scores.append(((self.model(x) - x) ** 2).mean(dim=(1, 2)))
                labels.append(y)
        s, y = torch.cat(scores).numpy(), torch.cat(labels).numpy()
        return s, y, s, y
'''


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "run_full_experiments.py").write_text(STAND_IN)
    return tmp_path


def test_without_a_checkout_the_row_is_skipped():
    assert run(None) == {"skipped": SKIP}
    assert "--reference" in SKIP


def test_job_driver_runs_the_checkout_and_times_its_steps(stand_in: Path, tmp_path: Path):
    out = tmp_path / "job.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reference_job.py"), str(stand_in),
                    "--epochs", "3", "--train", "96", "--test", "32", "--out", str(out)],
                   check=True, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["steps_per_epoch"] == 3 and result["epochs"] == 3 and result["threads"] == 1
    assert 0 <= result["auroc"] <= 1
    assert result["step"]["wall"] > 0 and result["step"]["cpu"] >= 0
    assert {"import_wall", "data_wall", "train_wall", "test_wall"} <= set(result["phases"])


def test_job_driver_names_a_wrong_checkout(tmp_path: Path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "reference_job.py"),
                           str(tmp_path), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0 and "run_full_experiments.py" in proc.stderr


@pytest.mark.slow
def test_side_by_side_row_on_a_stand_in(stand_in: Path):
    r = run(str(stand_in), runs=1, epochs=2, n_train=128, n_val=64, n_test=64,
            default_batch_epochs=2)
    e = r["end_to_end_wall"]
    assert e["speedup"] == pytest.approx(e["design_s"] / e["maelab_s"])
    for clock in ("wall", "cpu"):
        s = r[f"steady_{clock}"]
        assert s["speedup_same_batch"] == pytest.approx(
            s["maelab_windows_per_s"] / s["design_windows_per_s"])
        assert s["maelab_default_batch_windows_per_s"] > 0
    assert r["maelab_profile"][-1]["phase"] == "total"
    assert len(r["jobs"]["maelab"]) == len(r["jobs"]["design"]) == 1


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path: Path):
    """`GPU_DRY=1 bash benchmarks/gpu.sh`: every part on the CPU at tiny sizes, files in $OUT."""
    env = {**os.environ, "GPU_DRY": "1", "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], env=env, check=True,
                   capture_output=True, cwd=ROOT)
    summary = (tmp_path / "summary.txt").read_text()
    for part in ("bench", "mfu", "hydro"):
        assert f"part {part}: exit 0" in summary, summary
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert set(bench["benchmarks"]) == {"sdmae_throughput", "sdmae_inference", "mmmae_encoder",
                                        "mfu", "hydro_step"}
    assert json.loads((tmp_path / "mfu_batch.json").read_text())["mfu"] > 0
    assert json.loads((tmp_path / "hydro_metrics.json").read_text())["model"] == "mmmae"
    assert (tmp_path / "hydro_timings.json").is_file()


@pytest.mark.slow
def test_gpu_hydro_script_counts_the_batches_it_trained(tmp_path: Path):
    """`benchmarks/gpu_hydro.sh` on the CPU at a small size: its summary gives the batches the run
    trained (5 here: fewer than one logging interval), then the test table."""
    # the small MM-MAE run of the pipeline tests (the script sets experiment, trainer, batch)
    small = ["trainer.accelerator=cpu", "trainer.precision=32-true", "data.num_workers=0",
             "trainer.limit_train_batches=5", "trainer.limit_val_batches=2",
             *(o for o in SMALL if o.startswith(("data.s", "model.")))]
    env = {**os.environ, "OUT": str(tmp_path), "STEPS": "100", "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_hydro.sh"), *small], env=env,
                   check=True, capture_output=True, cwd=ROOT)
    summary = (tmp_path / "summary.txt").read_text()
    assert "checkpoint tested:" in summary and "; 5 training batches run" in summary, summary
    assert "riverflow / mmmae" in summary
