"""Aggregation of a multirun folder (maelab.report.sweep) on synthetic job folders, and the job-status
Hydra callback on hand-made JobReturns."""

from __future__ import annotations

import json
import math
import pickle
import statistics
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from maelab.core.errors import ConfigError
from maelab.report.callbacks import JobStatusCallback, job_status
from maelab.report.sweep import collect_jobs, main, parse_overrides, summarize, write_report

FIXED = ["debug=fast", "trainer.max_epochs=2"]


def make_job(sweep: Path, num: int, overrides: list[str], auroc: float | None = None,
             status: dict | None = None) -> Path:
    """A job folder as Hydra + maelab write it: overrides, and metrics.json / status.json."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    if auroc is not None:
        primary = {"auroc": auroc, "auprc": auroc / 2, "f1": auroc / 4}
        recon = {"auroc": auroc - 0.2, "auprc": 0.1, "f1": 0.1}
        (job / "metrics.json").write_text(json.dumps({
            "model": "sdmae", "score": "discrepancy", "primary": primary,
            "test": {"discrepancy": primary, "reconstruction": recon}, "optimized_metric": auroc - 0.1}))
    if status is not None:
        (job / "status.json").write_text(json.dumps(status))
    return job


@pytest.fixture
def sweep(tmp_path) -> Path:
    """masking ∈ {patch, token} × seed ∈ {0, 1, 2}; token seed 2 failed; one job never finished;
    the sweep (multirun.yaml) had 9 jobs, so two never started."""
    values = {("patch", 0): 0.8, ("patch", 1): 0.9, ("patch", 2): 0.7,
              ("token", 0): 0.6, ("token", 1): 0.5}
    num = 0
    for masking in ("patch", "token"):
        for seed in range(3):
            auroc = values.get((masking, seed))
            status = {"status": "COMPLETED", "wall_time_s": 30.0} if auroc else {
                "status": "FAILED", "error_type": "ConfigError", "error": "invalid config `x=1`",
                "error_location": "validation.py:10 in check", "wall_time_s": 1.0}
            make_job(tmp_path, num, [f"masking={masking}", f"seed={seed}", *FIXED], auroc, status)
            num += 1
    make_job(tmp_path, num, ["masking=temporal", "seed=0", *FIXED])  # killed: no status, no metrics
    (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None},
        "overrides": {"task": ["masking=patch,token,temporal", "seed=0,1,2", *FIXED]}}}))
    return tmp_path


def test_parse_overrides_handles_prefixes():
    assert parse_overrides(["masking=patch", "+x.y=1", "++z=[a,b]", "~w", "k=a=b"]) == {
        "masking": "patch", "x.y": "1", "z": "[a,b]", "w": "(deleted)", "k": "a=b"}


def test_collect_jobs_one_row_per_job_with_status(sweep):
    jobs, keys = collect_jobs(sweep)
    assert keys == ["masking", "seed", "debug", "trainer.max_epochs"]
    assert list(jobs["job"]) == [str(i) for i in range(7)]
    assert list(jobs["status"]) == ["COMPLETED"] * 5 + ["FAILED", "INCOMPLETE"]
    assert jobs.loc[5, "error"] == "ConfigError: invalid config `x=1` (validation.py:10 in check)"
    assert "no status.json" in jobs.loc[6, "error"]
    assert math.isnan(jobs.loc[5, "test_auroc"])
    assert jobs.loc[0, "best_val_metric"] == pytest.approx(0.7)


def test_summary_mean_std_over_seeds_grouped_by_swept_keys(sweep):
    jobs, _ = collect_jobs(sweep)
    summary = summarize(jobs, ["masking"]).set_index("masking")
    assert list(summary.index) == ["patch", "token", "temporal"]  # sweep order kept
    assert summary.loc["patch", "test_auroc_mean"] == pytest.approx(0.8)
    assert summary.loc["patch", "test_auroc_std"] == pytest.approx(statistics.stdev([0.8, 0.9, 0.7]))
    assert summary.loc["patch", "test_auprc_mean"] == pytest.approx(0.4)
    assert summary.loc["token", "test_auroc_std"] == pytest.approx(statistics.stdev([0.6, 0.5]))
    assert summary[["n", "failed"]].to_dict("index") == {
        "patch": {"n": 3, "failed": 0}, "token": {"n": 2, "failed": 1},
        "temporal": {"n": 0, "failed": 1}}
    assert math.isnan(summary.loc["temporal", "test_auroc_mean"])
    assert summary["best"].tolist() == [True, False, False]


def test_single_seed_group_has_no_std_and_no_swept_key_gives_one_group(tmp_path):
    make_job(tmp_path, 0, ["seed=0", *FIXED], 0.8, {"status": "COMPLETED"})
    make_job(tmp_path, 1, ["seed=1", *FIXED], 0.6, {"status": "COMPLETED"})
    jobs, _ = collect_jobs(tmp_path)
    summary = summarize(jobs, [])
    assert len(summary) == 1 and summary.loc[0, "n"] == 2
    assert summary.loc[0, "test_auroc_mean"] == pytest.approx(0.7)
    single = summarize(jobs.iloc[:1], [])
    assert math.isnan(single.loc[0, "test_auroc_std"])


def test_write_report_files_table_and_failures(sweep):
    report = write_report(sweep)
    assert report.group_keys == ["masking"]
    for path in (report.csv_path, report.summary_csv_path, report.markdown_path, report.plot_path):
        assert path.is_file() and path.parent == sweep
    assert report.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pd.read_csv(report.csv_path)) == 7  # every job, failed ones too
    md = report.markdown_path.read_text()
    assert md == report.markdown
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    table = rows[1:4]  # after the header: one row per group
    assert table[0].startswith("| ★ | patch | discrepancy | 3 | 0 | **0.800 ± 0.100** |")
    assert table[1].startswith("|  | token | discrepancy | 2 | 1 | 0.550 ± 0.071 |")
    assert table[2].startswith("|  | temporal |  | 0 | 1 | — |")
    assert "seeds 0, 1, 2" in md and "`debug=fast` `trainer.max_epochs=2`" in md
    assert "### Jobs that did not complete (2)" in md
    assert "**2 of 9 jobs never started**" in md
    assert "| 5 | masking=token seed=2 | FAILED | ConfigError: invalid config `x=1`" in md
    assert "| 6 | masking=temporal seed=0 | INCOMPLETE |" in md


def test_selection_metric_named_and_ranked_by_its_direction(tmp_path):
    """The selection column is the jobs' `optimized_metric` (from .hydra/config.yaml): a val/loss
    is named so and its lowest mean is the bold one."""
    for num, (masking, value) in enumerate([("patch", 0.8), ("token", 0.6)]):
        job = make_job(tmp_path, num, [f"masking={masking}", "seed=0"], value, {"status": "COMPLETED"})
        (job / ".hydra" / "config.yaml").write_text(
            "optimized_metric: val/loss\noptimized_metric_mode: min\n")
    report = write_report(tmp_path)
    assert list(report.jobs["val_metric_name"]) == ["val/loss"] * 2
    header, _, patch, token = [ln for ln in report.markdown.splitlines() if ln.startswith("|")]
    assert header.endswith("| test F1 | best val/loss |")
    assert patch.endswith("| 0.700 |") and token.endswith("| **0.500** |")  # 0.8 − 0.1, 0.6 − 0.1
    assert patch.startswith("| ★ | patch |")  # the ★ still ranks test AUROC
    assert "best val/loss is the checkpoint-selection metric (lower is better)" in report.markdown


def test_columns_without_values_are_left_out(tmp_path):
    """MM-MAE jobs write no anomaly metrics: no empty test AUROC columns, no ★."""
    for num, seed in enumerate((0, 1)):
        job = make_job(tmp_path, num, ["experiment=hydro", f"seed={seed}"], None,
                       {"status": "COMPLETED"})
        (job / "metrics.json").write_text(json.dumps({"model": "mmmae", "optimized_metric": 0.1 + seed}))
        (job / ".hydra" / "config.yaml").write_text(
            "optimized_metric: val/loss\noptimized_metric_mode: min\n")
    report = write_report(tmp_path)
    header, _, row = [ln for ln in report.markdown.splitlines() if ln.startswith("|")]
    assert "AUROC" not in header and "F1" not in header and header.endswith("| best val/loss |")
    assert row.startswith("|  | all |") and row.endswith("| **0.600 ± 0.707** |")
    assert "no job has test AUROC, test AUPRC, test F1: left out" in report.markdown
    assert report.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_another_score_type(sweep):
    report = write_report(sweep, score="reconstruction")
    assert report.markdown_path.name == "ablation_reconstruction.md"
    summary = report.summary.set_index("masking")
    assert summary.loc["patch", "test_auroc_mean"] == pytest.approx(0.6)
    assert summary.loc["patch", "score_type"] == "reconstruction"
    assert not (sweep / "ablation.md").exists()


def test_job_folders_in_numeric_order(tmp_path):
    for num in (10, 2, 1):
        make_job(tmp_path, num, [f"seed={num}"], 0.5, {"status": "COMPLETED"})
    jobs, _ = collect_jobs(tmp_path)
    assert list(jobs["job"]) == ["1", "2", "10"]


def test_cli_prints_table_and_rejects_empty_folder(sweep, tmp_path, capsys):
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "| ★ | patch |" in out and "ablation.png" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exc:
        main([str(empty)])
    assert exc.value.code == 2


def _job_config(out_dir: Path, launcher: str) -> OmegaConf:
    return OmegaConf.create({"hydra": {"runtime": {"output_dir": str(out_dir)}, "job": {"num": 3},
                                       "launcher": {"_target_": launcher}}})


def _failed_return(exc: Exception) -> JobReturn:
    try:
        raise exc
    except Exception as caught:
        ret = JobReturn(overrides=["masking_ratio=1.5"], status=JobStatus.FAILED)
        ret.return_value = caught
    return ret


def test_job_status_of_completed_job():
    ret = JobReturn(overrides=["seed=1"], status=JobStatus.COMPLETED)
    ret.return_value = 0.75
    assert job_status(ret, 2.5) == {"status": "COMPLETED", "overrides": ["seed=1"],
                                    "wall_time_s": 2.5, "return_value": 0.75}


class _Unpicklable(Exception):
    """An error whose constructor takes other arguments than its message: pickling fails."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")


JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@pytest.mark.parametrize("launcher, error, swapped", [
    (BASIC, _Unpicklable(3, "boom"), False),
    (JOBLIB, _Unpicklable(3, "boom"), True),
    (JOBLIB, ConfigError("masking_ratio", 1.5, "a value strictly between 0 and 1"), False),
])
def test_status_callback_writes_failure_and_keeps_job_return_picklable(
    tmp_path, monkeypatch, launcher, error, swapped
):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    config = _job_config(tmp_path, launcher)
    ret = _failed_return(error)
    callback = JobStatusCallback()
    callback.on_job_start(config, task_function=None)
    callback.on_job_end(config, ret)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "FAILED" and status["job_num"] == 3
    assert status["error_type"] == type(error).__name__
    assert status["error"] == str(error)
    assert status["error_location"].startswith("test_report.py:")
    assert "Traceback" in status["traceback"] and status["wall_time_s"] >= 0
    assert isinstance(ret._return_value, RuntimeError) is swapped
    if launcher == JOBLIB:  # a worker process can send the failure back to the launcher
        again = pickle.loads(pickle.dumps(ret))
        assert str(error) in str(again._return_value)


def test_status_callback_silent_in_secondary_ddp_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    ret = JobReturn(overrides=[], status=JobStatus.COMPLETED)
    ret.return_value = 0.5
    JobStatusCallback().on_job_end(_job_config(tmp_path, "BasicLauncher"), ret)
    assert not (tmp_path / "status.json").exists()
