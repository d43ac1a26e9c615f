"""Shared fixtures: compose the real Hydra configs with outputs under tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("MPLCONFIGDIR", str(ROOT / ".cache" / "matplotlib"))
os.environ.setdefault("WANDB_MODE", "offline")

# a small, quick synthetic set-up for integration tests
TINY = [
    "debug=fast", "logger=csv", "data.n_train=256", "data.n_val=128", "data.n_test=128",
    "data.batch_size=32", "model.net.d_model=32", "model.net.encoder_depth=1",
    "model.net.teacher_depth=2", "callbacks.progress_bar=null",
]


def compose_cfg(config_name: str, overrides: list[str], out_dir: Path | None = None) -> DictConfig:
    """Compose conf/<config_name>.yaml with overrides; outputs go to `out_dir`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    if out_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(out_dir)
            cfg.paths.log_dir = str(out_dir)
    return cfg


@pytest.fixture
def tiny_train_cfg(tmp_path):
    """Factory: a tiny SD-MAE training config writing into tmp_path/<name>."""

    def make(*overrides: str, name: str = "run") -> DictConfig:
        return compose_cfg("train", [*TINY, *overrides], tmp_path / name)

    return make
