"""Where a run's time goes: the phase recorder, timings.json of a real run, and the speed work
that must not change results (batches by index, validation losses logged once per epoch,
splits generated per stage, figures without scikit-learn)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from maelab.core.phases import PhaseRecorder, process_age
from maelab.data.series.synthetic_datamodule import SyntheticAnomalyDataModule
from maelab.data.series.windows import WindowDataset
from maelab.models.sdmae.module import SDMAEModule
from maelab.pipeline import train
from tests.conftest import ROOT


def test_recorder_times_phases_even_when_they_raise():
    rec = PhaseRecorder()
    with rec.phase("sleep", note="x"):
        time.sleep(0.05)
    with pytest.raises(ValueError), rec.phase("fails"):
        raise ValueError("boom")
    taken = rec.take()
    sleep, fails = taken["records"]
    assert sleep["phase"] == "sleep" and sleep["note"] == "x" and 0.04 < sleep["wall"] < 5
    assert sleep["cpu"] < sleep["wall"]  # sleeping costs no CPU
    assert fails["phase"] == "fails" and fails["start"] >= sleep["start"] + sleep["wall"]
    assert taken["taken_at"] >= fails["start"] + fails["wall"]
    assert rec.take()["records"] == []  # taken records are forgotten
    if sys.platform.startswith("linux"):
        assert taken["since_process_start"] and 0 < process_age() < 24 * 3600


def test_run_writes_its_timings(tiny_train_cfg):
    cfg = tiny_train_cfg("trainer.max_epochs=2", "trainer.limit_train_batches=3", name="run")
    train(cfg)
    timings = json.loads((Path(cfg.paths.output_dir) / "timings.json").read_text())
    records = timings["records"]
    names = [r["phase"] for r in records]
    for phase in ("data", "model", "fit", "sanity check", "checkpoint load", "calibration",
                  "test data", "test", "figures"):
        assert phase in names, phase
    epochs = [r for r in records if r["phase"] == "train"]
    assert [r["epoch"] for r in epochs] == [0, 1] and all(r["steps"] == 3 for r in epochs)
    assert all(0 < r["step_wall"] < r["wall"] for r in epochs)
    assert [r["epoch"] for r in records if r["phase"] == "validation"] == [0, 1]
    fit = next(r for r in records if r["phase"] == "fit")
    inside = [r for r in records if r["phase"] in ("sanity check", "train", "validation")]
    assert sum(r["wall"] for r in inside) <= fit["wall"]  # fit's parts lie inside it
    assert all(fit["start"] <= r["start"] <= fit["start"] + fit["wall"] for r in inside)
    for r in records:
        assert r["wall"] >= 0 and r["cpu"] >= 0 and r["start"] <= timings["taken_at"]


def test_a_run_that_raises_leaves_no_phases_to_the_next_run(tiny_train_cfg, monkeypatch):
    """A run that fails after its data phase (the model build raises here) forgets its records:
    the next run in the process (a multirun job) writes only its own phases."""
    import maelab.pipeline as pipeline
    from maelab.core.phases import PHASES

    def fail(*args, **kwargs):
        raise RuntimeError("model build failed")

    monkeypatch.setattr(pipeline, "build_module", fail)
    with pytest.raises(RuntimeError, match="model build failed"):
        train(tiny_train_cfg("trainer.max_epochs=1", name="failed"))
    assert PHASES.records == []
    monkeypatch.undo()
    cfg = tiny_train_cfg("trainer.max_epochs=1", "trainer.limit_train_batches=2", name="next")
    started = PHASES.now()
    train(cfg)
    records = json.loads((Path(cfg.paths.output_dir) / "timings.json").read_text())["records"]
    assert records and all(r["start"] >= started for r in records)  # none from the failed run


def test_window_batches_by_index_equal_collated_windows():
    rng = np.random.default_rng(0)
    ds = WindowDataset(rng.normal(size=(20, 8, 3)), rng.integers(0, 2, (20, 8)),
                       rng.integers(0, 7, 20), rng.random(20) < 0.3, np.arange(20) * 3,
                       np.arange(20) % 2)
    idx = [5, 0, 19, 7]
    collated = torch.utils.data.default_collate([ds[i] for i in idx])
    batch = ds.__getitems__(idx)
    assert batch.keys() == collated.keys()
    for k in batch:
        assert batch[k].dtype == collated[k].dtype and torch.equal(batch[k], collated[k]), k


def test_splits_per_stage_are_the_splits_of_a_full_setup():
    kw = dict(n_train=200, n_val=60, n_test=80, seed=7)
    full = SyntheticAnomalyDataModule(**kw)
    full.setup()
    staged = SyntheticAnomalyDataModule(**kw)
    staged.setup("test")
    assert set(staged.datasets) == {"train", "test"}  # train for its statistics, no validation
    staged.setup("fit")
    for split in ("train", "val", "test"):
        assert torch.equal(staged.dataset(split).x, full.dataset(split).x), split
        assert torch.equal(staged.dataset(split).point_labels, full.dataset(split).point_labels)


class PerStepValidationLogging(SDMAEModule):
    """SD-MAE validating as before issue 19: log_dict with on_epoch and sync_dist per step
    (nothing summed, so the module's own epoch-end logging stays silent)."""

    def validation_step(self, batch, batch_idx):
        parts, _ = self._loss_and_inference(batch, self._noise(batch, -1))
        self.log_dict({f"val/{k}": v for k, v in parts.items()}, on_epoch=True, prog_bar=False,
                      batch_size=batch["x"].shape[0], sync_dist=True)
        self._collect(batch)


def test_validation_losses_logged_once_equal_per_step_logging(tiny_train_cfg):
    """Epoch means summed in the module are Lightning's batch-weighted means bit for bit
    (batches of unequal size: 100 windows in batches of 32)."""
    import lightning as L

    from maelab.pipeline import build_datamodule, build_module

    cfg = tiny_train_cfg("data.n_val=100", name="val")
    dm = build_datamodule(cfg)
    logged = {}
    for name, cls in (("once", SDMAEModule), ("per step", PerStepValidationLogging)):
        torch.manual_seed(0)
        module = build_module(cfg, dm)
        if cls is not SDMAEModule:
            module.__class__ = cls
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                            enable_model_summary=False, accelerator="cpu")
        trainer.validate(module, datamodule=dm, verbose=False)
        logged[name] = {k: v.clone() for k, v in trainer.callback_metrics.items()}
    assert set(logged["once"]) == set(logged["per step"]) >= {"val/loss", "val/recon", "val/auroc"}
    for key, value in logged["once"].items():
        assert value.dtype == logged["per step"][key].dtype
        assert torch.equal(value, logged["per step"][key]), key


def test_figures_do_not_import_sklearn():
    code = ("import sys, maelab.models.sdmae.figures, maelab.viz.scores, maelab.pipeline; "
            "print(sorted(m for m in ('sklearn', 'wandb', 'tensorboard', 'xarray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"
