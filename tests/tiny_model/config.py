"""TinyConfig: the `model` node of the tiny model (found from `_target_` by maelab.core.config)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from maelab.core.checks import positive_int
from maelab.core.config import ModelConfig
from maelab.core.errors import ConfigError


@dataclass
class TinyConfig(ModelConfig):
    hidden: int = 16  # width of the forecaster's hidden layer
    horizon: int = 10  # last steps of a window that are forecast and scored

    def __post_init__(self) -> None:
        positive_int("hidden", self.hidden)
        positive_int("horizon", self.horizon)

    def check_run(self, cfg: DictConfig) -> None:
        if self.horizon >= cfg.data.seq_length:
            raise ConfigError("model.horizon", self.horizon,
                              f"fewer steps than data.seq_length={cfg.data.seq_length}")
