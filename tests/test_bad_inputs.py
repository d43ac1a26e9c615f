"""Bad input, the way a new user (or a crafted file) gives it: every case must fail before any
training (or testing) with a ConfigError / DataError naming the key or the file.

In-process: `Trainer.fit` / `Trainer.test` are replaced by a guard that fails the test, so a case
passes only when its error comes first. A few cases run the real commands.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from maelab.core.errors import ConfigError, DataError
from maelab.pipeline import evaluate, train
from tests.conftest import ROOT, SHARED_DATA, TINY, compose_cfg

SMD = SHARED_DATA / "smd"
needs_smd = pytest.mark.skipif(not SMD.is_dir(), reason="SMD data not in ../shared/data/smd")

HYDRO = ["experiment=hydro", "data.synthetic.end=2000-04-30", "data.seq_len=15",
         "data.splits.train.end=2000-02-29", "data.splits.val.start=2000-03-01",
         "data.splits.val.end=2000-03-31", "data.splits.test.start=2000-04-01",
         "data.splits.test.end=2000-04-30"]

# (overrides, what the message must name)
TRAIN_CASES = [
    (["masking_ratio=abc"], "masking_ratio"),
    (["masking_ratio=1.2"], "masking_ratio"),
    (["masking_ratio=0"], "masking_ratio"),
    (["masking_ratio=0.01"], "masking_ratio"),
    (["masking_ratio=0.99"], "masking_ratio"),
    (["masking.strategy=bogus"], "masking.strategy"),
    (["masking=token", "masking_ratio=0.001"], "masking_ratio"),
    (["patch_size=7"], "patch_size"),
    (["patch_size=100"], "patch_size"),
    (["patch_size=0"], "patch_size"),
    (["mask_last_n=0"], "mask_last_n"),
    (["mask_last_n=15"], "mask_last_n"),
    (["mask_last_n=100"], "mask_last_n"),
    (["score=bogus"], "score"),
    (["model.net.decoders=[teacher]", "score=discrepancy"], "score"),
    (["scoring.inference=last_n_by_feature"], "scoring.inference"),  # patch masking: no cells
    (["masking=patch_feature", "masking.feature_share=1.5"], "masking.feature_share"),
    (["masking=patch_feature", "patch_size=7"], "patch_size"),
    (["model.loss.recon_mask=bogus"], "model.loss.recon_mask"),
    ([*HYDRO, "model.loss.nse_star=[rainfall]"], "model.loss.nse_star"),
    ([*HYDRO, "model.net.forcing_series=[rainfall]"], "model.net.forcing_series"),
    ([*HYDRO, "model.evaluation.regression=[riverflow]"], "model.evaluation.regression"),
    ([*HYDRO, "model.net.series_priors=[interpolation,regression]"], "model.net.series_priors"),
    ([*HYDRO, "+model.loss.variability.riverflow=1.0"], "model.loss.variability.riverflow"),
    ([*HYDRO, "model.calibration.series_stretch=[rainfall]"], "model.calibration.series_stretch"),
    ([*HYDRO, "model.calibration.series_stretch=riverflow"], "model.calibration.series_stretch"),
    ([*HYDRO, "model.calibration.series_stretch_side=below"], "model.calibration.series_stretch_side"),
    ([*HYDRO, "model.calibration.series_stretch_windows=some"],
     "model.calibration.series_stretch_windows"),
    ([*HYDRO, "data.donors.series=riverflow"], "data.donors.series"),
    ([*HYDRO, "data.donors.series=[rainfall]"], "data.donors.series"),
    ([*HYDRO, "data.donors.series=[evaporation]"], "data.donors.series"),  # not a forcing series
    (["threshold.method=median"], "threshold.method"),
    (["threshold.percentile=100"], "threshold.percentile"),
    (["seed=abc"], "seed"),
    (["seed=1.5"], "seed"),
    (["model.optim.lr=fast"], "model.optim.lr"),
    (["model.optim.lr=-1"], "model.optim.lr"),
    (["model.optim.lr=0"], "model.optim.lr"),
    (["model.optim.weight_decay=-0.1"], "model.optim.weight_decay"),
    (["model.optim.betas=[0.9]"], "model.optim.betas"),
    (["model.optim.warmup_fraction=2"], "model.optim.warmup_fraction"),
    (["model.net.dropout=2"], "model.net.dropout"),
    (["model.net.attn_dropout=-0.1"], "model.net.attn_dropout"),
    (["model.net.heads=3"], "model.net.heads"),
    (["model.net.d_model=30"], "model.net.d_model"),
    (["model.net.d_model=0"], "model.net.d_model"),
    (["model.net.encoder_depth=-1"], "model.net.encoder_depth"),
    (["model.net.decoders=[teacher,bogus]"], "model.net.decoders"),
    (["+model.net.width=3"], "model.net.width"),
    (["model.loss.margin=0"], "model.loss.margin"),
    (["model.loss.lambda_disc=-1"], "model.loss.lambda_disc"),
    (["optimized_metric=val/aurocc"], "optimized_metric"),
    (["optimized_metric_mode=maximum"], "optimized_metric_mode"),
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs"),
    ([*HYDRO, "trainer.check_val_every_n_epoch=2"], "trainer.check_val_every_n_epoch"),  # 1 epoch
    (["+trainer.precision=bogus"], "trainer"),
    (["trainer.accelerator=tpu"], "trainer"),
    (["+callbacks.bogus._target_=lightning.pytorch.callbacks.NoSuchCallback"], "callbacks.bogus"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.n_train=0"], "data.n_train"),
    (["data.val_anomaly_share=2"], "data.val_anomaly_share"),
    (["data.seq_length=0"], "data.seq_length"),
    (["ckpt_path=last"], "ckpt_path"),
    ([*HYDRO, "data.patch_size=7"], "data.patch_size"),
    ([*HYDRO, "model.net.temporal_patch=7"], "model.net.temporal_patch"),  # factorised: 1
    ([*HYDRO, "+hydro_variant=joint_k15", "model.net.temporal_patch=7"], "model.net.temporal_patch"),
    ([*HYDRO, "masking_ratio=0.999"], "masking_ratio"),
    ([*HYDRO, "model.net.heads=3"], "model.net.heads"),
    ([*HYDRO, "optimized_metric=val/auroc"], "optimized_metric"),
    ([*HYDRO, "data.source=bogus"], "data.source"),
    ([*HYDRO, "data.seq_len=0"], "data.seq_len"),
    ([*HYDRO, "data.splits.val.start=someday"], "data.splits.val"),
    ([*HYDRO, "data.land_mask=/nonexistent/mask.npy"], "/nonexistent/mask.npy"),
    (["experiment=hydro", "data=haduk_rainfall", "data.root=/nonexistent/haduk"], "data.root"),
]
SMD_CASES = [
    (["experiment=smd", "data.machine=9-9"], "data.machine"),
    (["experiment=smd", "data.root=/nonexistent/smd"], "/nonexistent/smd"),
    (["experiment=smd", "data.normalization=bogus"], "data.normalization"),
    (["experiment=smd", "data.labelled_slice=/nonexistent/slice.npz"], "/nonexistent/slice.npz"),
]


def _fail(*args, **kwargs):
    raise AssertionError("training or testing started on bad input")


@pytest.fixture
def no_work(monkeypatch):
    """Any training, validation or testing fails the test: errors must come first."""
    for name in ("fit", "validate", "test"):
        monkeypatch.setattr(L.Trainer, name, _fail)


def _train_refused(overrides: list[str], named: str, out: Path) -> None:
    other_data = overrides[0].startswith("experiment=")  # TINY sets synthetic-data sizes
    base = ["debug=fast", "callbacks.progress_bar=null"] if other_data else TINY
    cfg = compose_cfg("train", [*base, *overrides], out)
    with pytest.raises((ConfigError, DataError)) as err:
        train(cfg)
    assert named in str(err.value), str(err.value)
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize(("overrides", "named"), TRAIN_CASES)
def test_bad_training_input_fails_before_training(overrides, named, tmp_path, no_work):
    _train_refused(overrides, named, tmp_path / "run")


@needs_smd
@pytest.mark.parametrize(("overrides", "named"), SMD_CASES)
def test_bad_smd_input_fails_before_training(overrides, named, tmp_path, no_work):
    _train_refused(overrides, named, tmp_path / "run")


def test_resume_from_a_file_that_is_no_checkpoint(tmp_path, no_work):
    text = tmp_path / "notes.ckpt"
    text.write_text("hi\n")
    for bad in (text, tmp_path):
        _train_refused([f"ckpt_path={bad}"], str(bad), tmp_path / "run")


# ---- checkpoints and evaluate.py overrides ------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny trained SD-MAE run directory."""
    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    train(compose_cfg("train", TINY, out))
    return out


def _evaluate_refused(args: list[str], named: str) -> None:
    with pytest.raises((ConfigError, DataError)) as err:
        evaluate(compose_cfg("evaluate", args))
    assert named in str(err.value), str(err.value)


def _crafted(run: Path, tmp: Path, **changes) -> Path:
    """A copy of `run` whose saved config has `changes` (dotted key: value)."""
    crafted = tmp / "crafted"
    (crafted / ".hydra").mkdir(parents=True)
    (crafted / "checkpoints").mkdir()
    (crafted / "checkpoints" / "best.ckpt").write_bytes((run / "checkpoints" / "best.ckpt").read_bytes())
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.save(cfg, crafted / ".hydra" / "config.yaml")
    return crafted / "checkpoints" / "best.ckpt"


class Pickled:
    def __reduce__(self):
        return (print, ("unpickled",))


def _bad_checkpoint(kind: str, run: Path, tmp: Path) -> tuple[Path, str]:
    """A bad `ckpt=` of `kind` and what the message must name."""
    path = tmp / f"{kind}.ckpt"
    if kind == "missing":
        return path, str(path)
    if kind == "directory":
        return run, str(run)
    if kind == "text":
        path.write_text("hi\n")
    elif kind == "truncated":
        path.write_bytes((run / "checkpoints" / "best.ckpt").read_bytes()[:3000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(2)}, path)
    elif kind == "pickled":
        torch.save({"state_dict": {}, "hyper_parameters": {}, "x": Pickled()}, path)
    elif kind == "no_run_config":
        path.write_bytes((run / "checkpoints" / "best.ckpt").read_bytes())
        return path, "config.yaml"
    elif kind == "another_model":
        path = _crafted(run, tmp, **{"model._target_": "maelab.models.mmmae.module.MMMAEModule"})
        return path, "SDMAEModule"
    elif kind == "trainer_target":
        path = _crafted(run, tmp, **{"trainer._target_": "builtins.open"})
        return path, "trainer._target_"
    elif kind == "nested_target":
        path = _crafted(run, tmp, **{"data.sink": {"_target_": "builtins.open", "file": "x"}})
        return path, "data.sink._target_"
    elif kind == "callback_target":
        path = _crafted(run, tmp, **{"callbacks.progress_bar._target_": "subprocess.Popen"})
        return path, "callbacks.progress_bar._target_"
    return path, str(path)


CHECKPOINTS = ["missing", "directory", "text", "truncated", "empty", "foreign", "pickled",
               "no_run_config", "another_model", "trainer_target", "nested_target",
               "callback_target"]


@pytest.mark.parametrize("kind", CHECKPOINTS)
def test_bad_checkpoint_fails_before_testing(kind, run, tmp_path, no_work):
    path, named = _bad_checkpoint(kind, run, tmp_path)
    _evaluate_refused([f"ckpt={path}"], named)


@pytest.mark.parametrize(("args", "named"), [
    (["mask_last_n=100"], "mask_last_n"),
    (["mask_last_n=15"], "mask_last_n"),
    (["score=bogus"], "score"),
    (["threshold.method=median"], "threshold.method"),
    (["+data.num_features=7"], "data.num_features=7"),
    (["+data.seq_length=55"], "data.seq_length=55"),
    (["+data.batch_size=0"], "data.batch_size"),
])
def test_bad_evaluate_override_fails_before_testing(args, named, run, no_work):
    _evaluate_refused([f"ckpt={run / 'checkpoints' / 'best.ckpt'}", *args], named)


@needs_smd
def test_evaluate_on_data_of_another_shape_names_the_setting(run, no_work):
    _evaluate_refused([f"ckpt={run / 'checkpoints' / 'best.ckpt'}", "data=smd"],
                      "data.num_features=")


# ---- the real commands --------------------------------------------------------------------------
def _command(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_train_command_prints_the_message_alone(tmp_path):
    proc = _command("train.py", "model.optim.lr=fast", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 1
    assert "invalid config `model.optim.lr='fast'`: expected a number" in proc.stderr
    assert "Traceback" not in proc.stderr and "full_key" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_evaluate_command_refuses_a_text_file(tmp_path):
    text = tmp_path / "t.ckpt"
    text.write_text("hi\n")
    proc = _command("evaluate.py", f"ckpt={text}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 1
    assert f"{text} is not a maelab checkpoint" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # 30 s or more: `make test-slow` (and CI) runs it
def test_crafted_checkpoint_cannot_write_files(run, tmp_path):
    """A checkpoint whose own saved config builds `builtins.open(<file>, 'w')`: evaluate.py
    never builds anything from it, alone or beside a config file naming the same target."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    evil = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
    state["hyper_parameters"]["run_config"]["trainer"] = evil
    alone = tmp_path / "alone" / "checkpoints" / "best.ckpt"
    alone.parent.mkdir(parents=True)
    torch.save(state, alone)
    beside = _crafted(run, tmp_path, trainer=evil)
    torch.save(state, beside)
    refusals = {}
    for name, ckpt in (("alone", alone), ("beside", beside)):
        proc = _command("evaluate.py", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / f'eval_{name}'}")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert victim.read_text() == "precious\n"
        refusals[name] = proc.stderr
    assert "config.yaml is missing" in refusals["alone"]
    assert "trainer._target_='builtins.open'" in refusals["beside"]
