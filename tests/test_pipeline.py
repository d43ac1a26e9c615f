"""train(cfg) → checkpoints and metrics.json; evaluate(cfg) reproduces them; bad configs fail early."""

import json
import math
from pathlib import Path

import pytest

from maelab.core.errors import ConfigError
from maelab.models.sdmae.config import STRATEGIES
from maelab.pipeline import evaluate, results_folder, train
from tests.conftest import compose_cfg


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_train_fast_writes_metrics_and_checkpoints(tiny_train_cfg, strategy):
    cfg = tiny_train_cfg(f"masking={strategy}", name=strategy)
    metrics, _ = train(cfg)
    out = cfg.paths.output_dir
    on_disk = json.load(open(f"{out}/metrics.json"))
    assert on_disk["test"] == json.loads(json.dumps(metrics["test"]))
    assert set(on_disk["test"]) == {"discrepancy", "reconstruction", "combined"}
    for name in ("best.ckpt", "last.ckpt"):
        assert Path(out, "checkpoints", name).exists()
    assert 0.0 <= on_disk["primary"]["auroc"] <= 1.0
    assert Path(out, ".hydra", "config.yaml").exists()


@pytest.mark.parametrize("reduce", ["max", "mahalanobis"])
def test_evaluate_reproduces_training_metrics(tiny_train_cfg, tmp_path, reduce):
    cfg = tiny_train_cfg("masking=patch", f"scoring.reduce={reduce}", name="run")
    metrics, _ = train(cfg)
    ckpt = metrics["checkpoint"]
    again = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}"]))
    for score, row in metrics["test"].items():
        for key, value in row.items():
            if isinstance(value, float) and not math.isnan(value):
                assert again["test"][score][key] == pytest.approx(value, abs=1e-6), (score, key)
    assert (tmp_path / "run" / "eval" / "metrics.json").exists()
    assert (tmp_path / "run" / "eval" / "figures" / "roc_pr.png").stat().st_size > 0


@pytest.mark.parametrize("reduce", ["max", "mahalanobis"])
def test_evaluate_split_val_scores_the_validation_windows(tiny_train_cfg, tmp_path, caplog,
                                                          reduce):
    """`split=val` runs the validation windows through the test code: its AUROCs are the ones
    calibration logged for the auto choice (cross-fitted with `mahalanobis`), and it writes to
    <run>/eval_val/."""
    with caplog.at_level("INFO"):  # calibration logs the validation AUROCs
        metrics, _ = train(tiny_train_cfg("masking=patch", f"scoring.reduce={reduce}", name="run"))
    val = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}", "split=val"]))
    assert val["split"] == "val" and metrics["split"] == "test"
    line = next(r.getMessage() for r in caplog.records if "score=auto" in r.getMessage())
    logged = dict(part.rsplit(" ", 1) for part in line.split("validation AUROC: ")[1]
                  .rstrip(")").split(", "))
    for score, auroc in logged.items():
        assert val["test"][score]["auroc"] == pytest.approx(float(auroc), abs=6e-5), score
    assert json.load(open(tmp_path / "run" / "eval_val" / "metrics.json"))["split"] == "val"
    with pytest.raises(ConfigError, match="split"):
        evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}", "split=train"]))


def test_evaluate_overrides_score_and_scored_region(tiny_train_cfg, tmp_path, caplog):
    """Overrides change the evaluation and get their own results folder, which the log names:
    the plain evaluation's eval/ is kept, and the overrides are recorded."""
    metrics, _ = train(tiny_train_cfg("masking=token", name="run"))
    plain = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}"]))
    with caplog.at_level("INFO", logger="maelab.pipeline"):
        again = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}",
                                                  "score=reconstruction", "mask_last_n=20"]))
    assert caplog.messages[-1].endswith("run/eval-mask_last_n=20,score=reconstruction")
    assert again["score"] == "reconstruction" and again["mask_last_n"] == 20
    run = tmp_path / "run"
    assert json.load(open(run / "eval" / "metrics.json")) == json.loads(json.dumps(plain))
    written = json.load(open(run / "eval-mask_last_n=20,score=reconstruction" / "metrics.json"))
    assert written["overrides"] == {"score": "reconstruction", "mask_last_n": 20}
    assert written["mask_last_n"] == 20 and "overrides" not in plain
    last_ckpt = Path(metrics["checkpoint"]).parent / "last.ckpt"
    last = evaluate(compose_cfg("evaluate", [f"ckpt={last_ckpt}"]))
    assert json.load(open(run / "eval-ckpt=last" / "metrics.json"))["checkpoint"] == last["checkpoint"]
    with pytest.raises(ConfigError, match="mask_last_n"):
        evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}", "mask_last_n=100"]))


def test_results_folder_names_the_evaluation():
    """One folder per (split, checkpoint, overrides): plain best.ckpt keeps eval/ | eval_val/;
    overrides are flattened and sorted by key; odd characters are replaced; a long name is
    cut and made unique by a hash."""
    best = Path("/r/checkpoints/best.ckpt")
    assert results_folder("test", best, {}) == "eval"
    assert results_folder("val", best, {}) == "eval_val"
    assert results_folder("val", Path("/r/checkpoints/epoch 3.ckpt"), {}) == "eval_val-ckpt=epoch_3"
    named = results_folder("test", best, {"threshold": {"percentile": 99, "method": "percentile"},
                                          "data": {"root": "/d/x y"}})
    assert named == "eval-data.root=_d_x_y,threshold.method=percentile,threshold.percentile=99"
    long = [results_folder("test", best, {"data": {"root": "/" + c * 120}}) for c in "ab"]
    assert all(len(n) <= 5 + 80 + 11 for n in long) and long[0] != long[1]


def test_evaluate_refuses_a_series_calibration_for_sdmae(tiny_train_cfg, tmp_path):
    metrics, _ = train(tiny_train_cfg("masking=patch", name="run"))
    with pytest.raises(ConfigError, match="calibration.series_shrink.*only MM-MAE"):
        evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}",
                                          "calibration.series_shrink=none"]))


def test_evaluate_refuses_checkpoint_of_another_model(tiny_train_cfg, tmp_path):
    metrics, _ = train(tiny_train_cfg(name="run"))
    run_cfg = tmp_path / "run" / ".hydra" / "config.yaml"
    run_cfg.write_text(run_cfg.read_text().replace("maelab.models.sdmae.module.SDMAEModule",
                                                   "maelab.models.mmmae.module.MMMAEModule"))
    with pytest.raises(ValueError, match="holds a maelab.models.sdmae.module.SDMAEModule"):
        evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}"]))


def test_evaluate_bad_checkpoint_inputs(tmp_path):
    import torch

    with pytest.raises(ConfigError, match="ckpt=.*missing.ckpt.*there is no file"):
        evaluate(compose_cfg("evaluate", [f"ckpt={tmp_path}/missing.ckpt"]))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ConfigError, match="not a maelab checkpoint"):
        evaluate(compose_cfg("evaluate", [f"ckpt={foreign}"]))
    lone = tmp_path / "lone" / "checkpoints" / "best.ckpt"
    lone.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": {}}, lone)
    with pytest.raises(ConfigError, match=r"\.hydra/config\.yaml is missing"):
        evaluate(compose_cfg("evaluate", [f"ckpt={lone}"]))


@pytest.mark.parametrize(("override", "listed"), [
    ("masking=bogus", "feature_wise"), ("logger=bogus", "tensorboard"), ("trainer=bogus", "ddp"),
    ("data=bogus", "synthetic_anomaly"), ("model=bogus", "sdmae"),
])
def test_unknown_group_choice_lists_options(override, listed):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=listed):
        compose_cfg("train", [override])


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_other_loggers_run_offline(tiny_train_cfg, tmp_path, logger):
    metrics, objects = train(tiny_train_cfg(f"logger={logger}"))
    kind = {"tensorboard": "TensorBoardLogger", "wandb": "WandbLogger"}[logger]
    assert type(objects["trainer"].logger).__name__ == kind
    assert 0.0 <= metrics["primary"]["auroc"] <= 1.0
    written = [p.name for p in (tmp_path / "run").rglob("*")]
    marker = {"tensorboard": "events.out.tfevents", "wandb": ".wandb"}[logger]
    assert any(marker in name for name in written), written


def test_mahalanobis_whitening_travels_in_the_checkpoint(tiny_train_cfg, tmp_path):
    """`scoring.reduce=mahalanobis`: calibration stores the whitening of the scored region's
    residuals (mask_last_n × features long) in the checkpoint; a checkpoint evaluated with
    another reduction is recalibrated, and one written before the whitening existed loads,
    reproduces its table and recalibrates for it."""
    import torch

    metrics, _ = train(tiny_train_cfg("masking=patch", "scoring.reduce=mahalanobis", name="run"))
    state = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert state["cal_resid_mean"].shape == (2, 10 * 5)
    assert state["cal_resid_precision"].shape == (2, 50, 50)
    assert torch.isfinite(state["cal_resid_precision"]).all()
    assert not torch.equal(state["cal_resid_precision"][0], state["cal_resid_precision"][1])
    emptied = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)
    for key in ("cal_resid_mean", "cal_resid_precision"):  # calibrated, but its whitening lost
        del emptied["state_dict"][key]
    emptied_path = Path(metrics["checkpoint"]).with_name("emptied.ckpt")
    torch.save(emptied, emptied_path)
    assert evaluate(compose_cfg("evaluate", [f"ckpt={emptied_path}"]))["test"] == metrics["test"]
    as_max = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}",
                                               "scoring.reduce=max"]))
    assert as_max["reduce"] == "max" and as_max["test"] != metrics["test"]
    plain, _ = train(tiny_train_cfg("masking=patch", "scoring.reduce=max", name="plain"))
    # a checkpoint written before the whitening buffers existed still loads and reproduces
    old = torch.load(plain["checkpoint"], map_location="cpu", weights_only=False)
    for key in ("cal_resid_mean", "cal_resid_precision"):
        del old["state_dict"][key]
    old_path = Path(plain["checkpoint"]).with_name("old.ckpt")
    torch.save(old, old_path)
    assert evaluate(compose_cfg("evaluate", [f"ckpt={old_path}"]))["test"] == plain["test"]
    again = evaluate(compose_cfg("evaluate", [f"ckpt={old_path}", "scoring.reduce=mahalanobis"]))
    assert again["reduce"] == "mahalanobis" and 0.0 <= again["primary"]["auroc"] <= 1.0


def test_mahalanobis_with_too_few_normal_windows_names_the_key(tiny_train_cfg):
    """Two validation windows cannot give a covariance in 5 folds: a ConfigError naming
    scoring.reduce, raised by the sanity check before any training."""
    cfg = tiny_train_cfg("masking=patch", "scoring.reduce=mahalanobis", "data.n_val=2",
                         name="few")
    with pytest.raises(ConfigError, match="scoring.reduce") as err:
        train(cfg)
    assert "normal" in str(err.value)
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))  # nothing trained
