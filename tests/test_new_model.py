"""Proof of the architecture: a model defined only under tests/ (its package and its config file)
trains and evaluates through train(cfg) / evaluate(cfg) with real checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from maelab.core.errors import ConfigError
from maelab.pipeline import evaluate, train
from tests.conftest import ROOT, compose_cfg
from tests.tiny_model.module import TinyModule

TINY_MODEL = [
    f"hydra.searchpath=[file://{ROOT / 'tests' / 'tiny_model' / 'conf'}]", "model=tiny",
    "debug=fast", "logger=csv", "callbacks.progress_bar=null", "trainer.max_epochs=2",
    "trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0",
    "data.n_train=256", "data.n_val=128", "data.n_test=256", "data.batch_size=32",
    "optimized_metric=val/loss", "optimized_metric_mode=min",
]


def test_a_model_outside_src_trains_and_evaluates(tmp_path: Path) -> None:
    cfg = compose_cfg("train", TINY_MODEL, tmp_path / "run")
    metrics, objects = train(cfg)
    assert isinstance(objects["module"], TinyModule) and metrics["model"] == "tiny"
    row = metrics["test"]["forecast_error"]
    assert row["n"] == 256 and 0.0 <= row["auroc"] <= 1.0 and math.isfinite(row["mse_normal"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"] == metrics["test"]
    for name in ("best.ckpt", "last.ckpt"):
        assert (tmp_path / "run" / "checkpoints" / name).is_file()
    assert (tmp_path / "run" / "figures" / "roc_pr.png").stat().st_size > 0
    again = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}"]))
    for key, value in row.items():
        assert again["test"]["forecast_error"][key] == pytest.approx(value, rel=1e-9), key
    assert (tmp_path / "run" / "eval" / "figures" / "roc_pr.png").is_file()


@pytest.mark.parametrize(("override", "key"), [("model.hidden=0", "model.hidden"),
                                                ("mask_last_n=100", "mask_last_n"),  # horizon: ${mask_last_n}
                                                ("+model.depth=2", "model.depth")])
def test_its_config_checks_itself_before_any_work(tmp_path: Path, override: str, key: str) -> None:
    cfg = compose_cfg("train", [*TINY_MODEL, override], tmp_path / "run")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_nothing_under_src_names_it() -> None:
    for path in (ROOT / "src").rglob("*.py"):
        assert "tiny" not in path.read_text().lower(), path
