"""Real multiruns of train.py in a subprocess: job folders, status files, the sweep report, failed
jobs, the joblib launcher, the value returned to Hydra, and the ablation experiment configs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from maelab.core.config import validate_config
from tests.conftest import CONF, ROOT, TINY

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("sdmae_ablation_*.yaml"))


def multirun(sweep: Path, *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`python train.py -m <TINY> hydra.sweep.dir=<sweep> <overrides>` from the repository root."""
    env = {**os.environ, "MPLCONFIGDIR": str(ROOT / ".cache" / "matplotlib"), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "train.py", "-m", *TINY, f"hydra.sweep.dir={sweep}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def table_rows(markdown: str) -> list[str]:
    """The rows of the first markdown table (the per-group summary), header excluded."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return rows[2:]


@pytest.mark.slow  # 30 s or more: `make test-slow` (and CI) runs it
def test_multirun_writes_job_folders_and_report(tmp_path):
    proc = multirun(tmp_path, "masking=patch,token")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for num in (0, 1):
        metrics = read_json(tmp_path / f"{num}" / "metrics.json")
        status = read_json(tmp_path / f"{num}" / "status.json")
        assert status["status"] == "COMPLETED" and status["job_num"] == num
        assert status["return_value"] == pytest.approx(metrics["optimized_metric"])  # what Hydra got
    md = (tmp_path / "ablation.md").read_text()
    rows = table_rows(md)
    assert len(rows) == 2 and "| patch |" in rows[0] and "| token |" in rows[1]
    assert sum("★" in r for r in rows) == 1
    assert len(pd.read_csv(tmp_path / "ablation.csv")) == 2
    assert (tmp_path / "ablation.png").stat().st_size > 0
    assert rows[0] in proc.stdout  # printed at the end of the multirun


@pytest.mark.slow  # 30 s or more: `make test-slow` (and CI) runs it
def test_multirun_with_a_failing_job_still_reports(tmp_path):
    proc = multirun(tmp_path, "masking_ratio=0.6,1.5")
    assert proc.returncode != 0  # Hydra re-raises the failed job's error after all jobs ran
    assert read_json(tmp_path / "0" / "status.json")["status"] == "COMPLETED"
    assert (tmp_path / "0" / "metrics.json").is_file()
    failed = read_json(tmp_path / "1" / "status.json")
    assert failed["status"] == "FAILED" and failed["error_type"] == "ConfigError"
    md = (tmp_path / "ablation.md").read_text()
    rows = table_rows(md)
    assert len(rows) == 2 and "| 1.5 |  | 0 | 1 |" in rows[1]
    # score=auto: the primary score is the one with the best validation AUROC
    assert re.search(r"\| 0\.6 \| (discrepancy|reconstruction|combined) \| 1 \| 0 \|", rows[0])
    assert "### Jobs that did not complete (1)" in md
    assert "| 1 | masking_ratio=1.5 | FAILED | ConfigError: invalid config `masking_ratio=1.5`" in md
    jobs = pd.read_csv(tmp_path / "ablation.csv")
    assert jobs["status"].tolist() == ["COMPLETED", "FAILED"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_ablation_experiment_jobs_compose_and_validate(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", [f"experiment={name}"], return_hydra_config=True)
        params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
        (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
        assert len(jobs) >= 6 and {"seed=0", "seed=1", "seed=2"} <= {o for j in jobs for o in j}
        for job in (j for j in jobs if "seed=0" in j):  # the seed does not change validity
            validate_config(compose("train", [f"experiment={name}", *job]))


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_processes_and_reports_failures(tmp_path):
    proc = multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "masking_ratio=0.6,1.5")
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid config `masking_ratio=1.5`" in proc.stderr  # the job's error, not a broken pool
    assert read_json(tmp_path / "0" / "status.json")["status"] == "COMPLETED"
    assert read_json(tmp_path / "1" / "status.json")["error_type"] == "ConfigError"
    md = (tmp_path / "ablation.md").read_text()
    assert len(table_rows(md)) == 2 and "| 1 | masking_ratio=1.5 | FAILED |" in md


@pytest.mark.slow
def test_sweep_returns_best_validation_auroc_not_last(tmp_path):
    proc = multirun(tmp_path, "seed=0,1", "trainer.max_epochs=4", "model.loss.anomaly_warmup_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for num in (0, 1):
        logged = pd.read_csv(tmp_path / f"{num}" / "csv" / "metrics.csv").dropna(subset=["val/auroc"])
        per_epoch = logged[logged["epoch"] < 4]["val/auroc"]  # then the calibration pass on best.ckpt
        assert len(per_epoch) == 4
        status = read_json(tmp_path / f"{num}" / "status.json")
        assert status["return_value"] == pytest.approx(per_epoch.max())
    md = (tmp_path / "ablation.md").read_text()
    # score=auto: the primary score of each seed is the one validation chose
    assert len(table_rows(md)) == 1 and re.search(r"\| all \| [a-z, ]+ \| 2 \| 0 \|", md)


@pytest.mark.slow
def test_decoder_ablation_sweeps_list_values_with_a_score_per_decoder_set(tmp_path):
    proc = multirun(tmp_path, "experiment=sdmae_ablation_decoders", "seed=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = table_rows((tmp_path / "ablation.md").read_text())
    # one decoder: reconstruction only; both: the score validation chose (score=auto)
    assert [r.split(" | ")[1] for r in rows] == ["[teacher,student]", "[teacher]", "[student]"]
    assert [r.split(" | ")[2] for r in rows[1:]] == ["reconstruction", "reconstruction"]
    assert rows[0].split(" | ")[2] in ("discrepancy", "reconstruction", "combined")


@pytest.mark.slow
def test_mmmae_multirun_in_joblib_processes_writes_its_table(tmp_path):
    """An MM-MAE sweep as the README gives it (joblib processes; loader workers inside them)
    ends with the MM-MAE table, a row per variant, beside the generic report."""
    from tests.test_mmmae_pipeline import SMALL

    env = {**os.environ, "MPLCONFIGDIR": str(ROOT / ".cache" / "matplotlib"), "WANDB_MODE": "offline"}
    cmd = [sys.executable, "train.py", "-m", *SMALL, "data.num_workers=1",
           f"data.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "+hydro_variant=default,no_priors"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "sweep" / "mmmae_ablation.md").read_text()
    assert md in proc.stdout
    rows = table_rows(md)
    assert [r.split(" | ")[0] for r in rows[:2]] == ["| hydro_variant=default", "| hydro_variant=no_priors"]
    assert all(" | 1 | " in r for r in rows[:2])  # one seed each
    assert any(r.startswith("| baseline: interpolation_log") for r in rows)
