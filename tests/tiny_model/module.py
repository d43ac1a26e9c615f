"""TinyModule: the tiny forecaster wired to the pipeline through maelab.lit.base.MaeModule only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics.functional.classification import binary_auroc

from maelab.data.contracts import SeriesBatch, SeriesInfo
from maelab.lit.base import MaeModule
from maelab.scoring.normalization import to_unit_interval
from maelab.viz.scores import plot_roc_pr
from tests.tiny_model.model import TinyForecaster


class TinyModule(MaeModule):
    """Score of a window: the mean squared error of the forecast of its last `horizon` steps."""

    name = "tiny"

    def __init__(self, hidden: int, horizon: int, optim: dict, data_info: dict, seed: int = 0,
                 run_config: dict | None = None) -> None:
        super().__init__(optim, data_info, seed, run_config)
        info = SeriesInfo(**data_info)
        self.net = TinyForecaster(info.seq_length, info.num_features, horizon, hidden)
        self._test: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._summary: dict[str, Any] = {}

    def _errors(self, batch: SeriesBatch) -> torch.Tensor:
        """(B,) forecast error per window."""
        x = batch["x"]  # (B, T, F)
        return ((self.net(x) - x[:, -self.net.horizon:]) ** 2).mean(dim=(1, 2))

    def training_step(self, batch: SeriesBatch, batch_idx: int) -> torch.Tensor:
        loss = self._errors(batch).mean()
        self.log("train/loss", loss, batch_size=batch["x"].shape[0])
        return loss

    def validation_step(self, batch: SeriesBatch, batch_idx: int) -> None:
        self.log("val/loss", self._errors(batch).mean(), batch_size=batch["x"].shape[0])

    def test_step(self, batch: SeriesBatch, batch_idx: int) -> None:
        labels = batch["point_labels"][:, -self.net.horizon:].amax(dim=1)  # (B,)
        self._test.append((self._errors(batch).double().cpu(), labels.cpu()))

    def on_test_epoch_end(self) -> None:
        scores = torch.cat([s for s, _ in self._test])
        labels = torch.cat([y for _, y in self._test])
        self._test.clear()
        normal = scores[labels == 0]
        auroc = binary_auroc(to_unit_interval(scores, float(normal.mean()), float(normal.std())),
                             labels)
        self._summary = {"test": {"forecast_error": {
            "auroc": float(auroc), "mse_normal": float(normal.mean()),
            "mse_anomalous": float(scores[labels > 0].mean()), "n": float(len(scores))}},
            "scores": scores.tolist(), "labels": labels.tolist()}

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self._summary.items() if k == "test"}

    def write_figures(self, datamodule: L.LightningDataModule, out_dir: str | Path) -> dict:
        s = self._summary
        return {"roc_pr": plot_roc_pr({"forecast_error": (s["scores"], s["labels"])},
                                      Path(out_dir) / "roc_pr.png")}
