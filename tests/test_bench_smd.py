"""SMD benchmark: baselines on a tiny slice, the one-machine `--fast` run, evaluate.py on its run."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from benchmarks.smd import evaluate_baselines, run, scored_points
from maelab.data.series.long_series import SMDDataModule
from maelab.pipeline import evaluate
from tests.conftest import compose_cfg

SMD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "smd"
needs_smd = pytest.mark.skipif(not SMD.is_dir(), reason="shared SMD data not available")
METHODS = ["SD-MAE discrepancy", "SD-MAE reconstruction", "SD-MAE combined", "PCA",
           "IsolationForest", "ECOD", "COPOD", "KNN", "LOF", "HBOS", "PCA reconstruction", "random"]


@pytest.fixture
def tiny_dm(tmp_path: Path) -> SMDDataModule:
    """A synthetic machine in the `.npy` layout with large spikes in its test split."""
    rng = np.random.default_rng(0)
    t = np.arange(600)[:, None]
    base = np.sin(t / 7 + np.arange(5)) + 0.05 * rng.standard_normal((600, 5))  # (600, 5)
    test = base.copy()
    labels = np.zeros(600, dtype=np.uint8)
    labels[[250, 251, 400, 520]] = 1
    test[labels == 1] += 6.0
    for split, arr in {"train": base, "test": test, "test_label": labels}.items():
        np.save(tmp_path / f"machine-1-1_{split}.npy", arr.astype(np.float32))
    dm = SMDDataModule(root=str(tmp_path), machine="1-1", seq_length=20, train_stride=5,
                       val_fraction=0.2, mask_last_n=5, batch_size=16)
    dm.setup()
    return dm


def test_scored_points_tile_the_series_after_the_first_window(tiny_dm: SMDDataModule) -> None:
    ds = tiny_dm.test_dataloader().dataset
    points = scored_points(ds, tiny_dm.seq_length, tiny_dm.mask_last_n)
    first = int(ds.starts[0]) + tiny_dm.seq_length - tiny_dm.mask_last_n
    np.testing.assert_array_equal(points, np.arange(first, 600))


def test_baselines_on_a_tiny_slice(tiny_dm: SMDDataModule) -> None:
    ds = tiny_dm.test_dataloader().dataset
    n_test = len(scored_points(ds, tiny_dm.seq_length, tiny_dm.mask_last_n))
    names = ["pca", "iforest", "ecod", "copod", "knn", "lof", "hbos", "pca_recon", "random"]
    out = evaluate_baselines(tiny_dm, names, {"method": "percentile", "percentile": 99.0}, n_test)
    assert list(out) == names
    for m in out.values():
        assert (m["n"], m["n_anomalous"]) == (n_test, 4)
        assert m["threshold_rule"] == "percentile"
        assert all(np.isfinite(m[k]) for k in ("auprc", "auroc", "vus_pr", "f1", "best_f1_oracle"))
    assert out["pca_recon"]["auprc"] > 0.9 > out["random"]["auprc"]
    assert min(out[n]["auprc"] for n in names if n != "random") > out["random"]["auprc"]
    with pytest.raises(ValueError, match="test points requested"):
        evaluate_baselines(tiny_dm, ["pca"], {"method": "percentile", "percentile": 99.0},
                           n_test + 1)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, str]:
    """`python -m benchmarks.smd 1-2 --fast` into a temporary folder."""
    out = tmp_path_factory.mktemp("bench_smd")
    console = Console(file=io.StringIO(), width=120)
    table = run(["1-2", "--fast", "--out", str(out)], console)
    return out, table, console.file.getvalue()


@needs_smd
@pytest.mark.slow  # 30 s or more: `make test-slow` (and CI) runs it
def test_benchmark_one_machine_fast(fast_run: tuple[Path, pd.DataFrame, str]) -> None:
    out, table, printed = fast_run
    csv = pd.read_csv(out / "smd_benchmark.csv")
    assert list(csv["machine"].unique()) == ["machine-1-2", "mean"]
    assert csv.loc[csv["machine"] == "mean", "method"].tolist() == METHODS
    per_machine = csv[csv["machine"] == "machine-1-2"]
    assert per_machine["method"].tolist() == METHODS
    # every method on the same points: all test points after the first window, each once
    test_len = len(np.load(SMD / "machine-1-2_test_label.npy"))
    seq_length, n = 100, 10  # conf/data/smd.yaml, conf/experiment/smd.yaml
    first = (test_len - seq_length) % n + seq_length - n
    assert set(per_machine["n"]) == {test_len - first}
    assert per_machine[["auprc", "auroc", "vus_pr", "best_f1_oracle", "f1"]].notna().all().all()
    assert per_machine["threshold_rule"].eq("percentile").all()
    md = (out / "smd_benchmark.md").read_text()
    assert "## Mean over machines" in md and "### machine-1-2" in md and "| PCA |" in md
    assert "## AUC-PR per machine" in md and "SD-MAE reconstruction vs PCA reconstruction" in md
    assert "machine-1-2" in printed and "mean over 1 machines" in printed
    assert (out / "machine-1-2" / "checkpoints" / "best.ckpt").is_file()
    assert len(table) == 2 * len(METHODS)


@needs_smd
@pytest.mark.slow  # 30 s or more: `make test-slow` (and CI) runs it
def test_evaluate_on_a_benchmark_checkpoint(fast_run: tuple[Path, pd.DataFrame, str]) -> None:
    out, table, _ = fast_run
    ckpt = out / "machine-1-2" / "checkpoints" / "best.ckpt"
    metrics = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}"]))
    assert metrics["level"] == "point"
    expected = table[(table["machine"] == "machine-1-2") & (table["method"] == "SD-MAE combined")]
    # the same checkpoint and points; float32 sums may differ with the number of torch threads
    assert metrics["test"]["combined"]["auprc"] == pytest.approx(expected["auprc"].iloc[0], rel=1e-3)
    assert metrics["test"]["combined"]["n"] == expected["n"].iloc[0]
