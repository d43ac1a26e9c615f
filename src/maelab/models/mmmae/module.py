"""MMMAEModule: MM-MAE wired to its masks, loss, logging, test-period evaluation and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from maelab.core.errors import ConfigError
from maelab.data.contracts import HydroBatch, HydroInfo
from maelab.lit.base import MaeModule
from maelab.masking.noise import KeyedNoise
from maelab.models.mmmae.config import MaskingConfig
from maelab.models.mmmae.evaluation import TestEvaluation, climatologies
from maelab.models.mmmae.loss import mmmae_loss, selected_mse
from maelab.models.mmmae.masking import MaskedHydroBatch, with_masks
from maelab.models.mmmae.model import MMMAE
from maelab.scoring.hydro_metrics import interpolate_days

_HIDE_SERIES_STREAM = -2  # keys the whole-series hiding noise apart from the masks' streams


class MMMAEModule(MaeModule):
    """Trains MM-MAE on HydroDataModule batches; tests reconstructions beside baselines.

    Each step draws its batch's masks on the batch's device, per window from the shared keyed
    noise: fresh every training epoch, fixed in validation and test (maelab.models.mmmae.masking).
    """

    name = "mmmae"

    def __init__(
        self, net: dict, loss: dict, optim: dict, evaluation: dict, masking: dict, data_info: dict,
        hide_series: float = 0.0, seed: int = 0, run_config: dict | None = None,
    ) -> None:
        super().__init__(optim, data_info, seed, run_config)
        self.info = HydroInfo(**data_info)
        self.masking = MaskingConfig(**masking)
        names = [*self.info.grid_names, *self.info.series_names]
        for key in loss.get("weights") or {}:
            if key not in names:
                raise ConfigError(f"model.loss.weights.{key}", loss["weights"][key],
                                  f"weights keyed by modality: {', '.join(names)}")
        target = evaluation.get("cross_modal")
        if target is not None and target not in self.info.series_names:
            raise ConfigError("model.evaluation.cross_modal", target,
                              f"null or a series: {', '.join(self.info.series_names)}")
        self.net = MMMAE(
            grid_names=self.info.grid_names, series_names=self.info.series_names,
            seq_len=self.info.seq_len, patch_size=self.info.patch_size,
            patch_rows=self.info.valid_patch_rows, patch_cols=self.info.valid_patch_cols,
            patch_grid_shape=self.info.patch_grid_shape, n_static=self.info.n_static, **net,
        )
        self._evaluation: TestEvaluation | None = None
        self._results: dict[str, Any] = {}

    def forward(self, batch: MaskedHydroBatch) -> dict[str, dict[str, torch.Tensor]]:
        """Reconstructions (normalised units); bf16 autocast on GPU."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.net(batch)

    # ---- masks ----------------------------------------------------------------------------------
    def masked(self, batch: HydroBatch, stream: int) -> MaskedHydroBatch:
        """`batch` with the masks of `stream` (the epoch in training, -1 for fixed masks)."""
        return with_masks(batch, self.masking, self.hparams.seed, stream, self.info.n_valid_patches,
                          self.info.grid_names, self.info.series_names)

    # ---- training -----------------------------------------------------------------------------
    def _step(self, batch: MaskedHydroBatch, stage: str) -> torch.Tensor:
        out = self(batch)
        lw = self.hparams.loss
        parts = mmmae_loss(out, batch, lw.get("weights") or {}, bool(lw.get("norm_pix_loss")))
        loss = parts["loss"]
        b = batch["static"].shape[0]
        self.log(f"{stage}/loss", parts.pop("loss"), on_step=stage == "train", on_epoch=True,
                 prog_bar=True, batch_size=b)
        self.log_dict({f"{stage}/loss_{k}": v for k, v in parts.items()}, on_step=False,
                      on_epoch=True, batch_size=b)
        return loss

    def training_step(self, batch: HydroBatch, batch_idx: int) -> torch.Tensor:
        masked = self.masked(batch, self.current_epoch)  # fresh every epoch
        return self._step(self._hide_whole_series(masked, batch_idx), "train")

    def _hide_whole_series(self, batch: MaskedHydroBatch, batch_idx: int) -> MaskedHydroBatch:
        """With probability `hide_series`, one present series is hidden on every day of the
        batch (cross-modal training: it must come from the other modalities). The draw is keyed
        by (epoch, batch, rank): reproducible on resume."""
        names = [s for s in self.net.series_names if bool(batch["present"][s].any())]
        if float(self.hparams.hide_series) <= 0 or not names:
            return batch
        keys = (_HIDE_SERIES_STREAM, self.current_epoch, batch_idx, self.global_rank)
        u = KeyedNoise(self.hparams.seed, *(torch.tensor([k]) for k in keys)).uniform((1, 2))[0]
        if float(u[0]) >= float(self.hparams.hide_series):
            return batch
        s = names[min(int(float(u[1]) * len(names)), len(names) - 1)]
        masks = {**batch["series_mask"], s: torch.ones_like(batch["series_mask"][s])}
        return {**batch, "series_mask": masks}

    def validation_step(self, batch: HydroBatch, batch_idx: int) -> None:
        masked = self.masked(batch, -1)  # fixed per-window masks: comparable across epochs
        self._step(masked, "val")
        self._log_interpolation_loss(masked)

    def _log_interpolation_loss(self, batch: MaskedHydroBatch) -> None:
        """`val/loss_<series>_interpolation`: the loss of linear interpolation across hidden days
        (normalised units, as `val/loss_<series>`), the bar the series reconstruction must beat.
        Windows where a series has no visible valid day are left out."""
        b = batch["static"].shape[0]
        for s in self.net.series_names:
            if not bool(batch["present"][s].any()):
                continue
            x, valid, hidden = batch["series"][s], batch["series_valid"][s], batch["series_mask"][s]
            base = interpolate_days(x, valid & ~hidden).float()  # (B, T), NaN if none visible
            mse = selected_mse(base, x, hidden & valid & base.isfinite())
            if mse is not None:
                self.log(f"val/loss_{s}_interpolation", mse, on_step=False, on_epoch=True,
                         batch_size=b)

    # ---- test: reconstructions, baselines, metrics ----------------------------------------------
    def on_test_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        ev = self.hparams.evaluation
        clim = climatologies(dm.store, dm.splits["train"], int(ev["climatology_window"]))
        self._evaluation = TestEvaluation(self.info, ev, bool(self.hparams.loss.get("norm_pix_loss")),
                                          clim, seed=self.hparams.seed,
                                          catchment_ids=getattr(dm, "catchment_ids", None),
                                          catchment_names=getattr(dm, "catchment_names", None))

    def test_step(self, batch: HydroBatch, batch_idx: int) -> None:
        self._evaluation.add_batch(self.masked(batch, -1), self)

    def on_test_epoch_end(self) -> None:
        ev, lw = self.hparams.evaluation, self.hparams.loss
        norm_pix = bool(lw.get("norm_pix_loss"))
        settings = {"temporal_patch": self.net.k, "masking": dict(self.hparams.masking),
                    "norm_pix_loss": norm_pix,
                    "grid_reconstruction": ("de-normalised with the hidden patches' own mean/std "
                                            "(oracle, norm_pix_loss)") if norm_pix else "direct",
                    "climatology_window": int(ev["climatology_window"]),
                    "cross_modal": ev.get("cross_modal")}
        self._results = self._evaluation.results(settings)
        self._evaluation = None

    # ---- pipeline interface (maelab.lit.base) -------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The `test` table (one row per modality and method), NSE/KGE distributions, settings."""
        return self._results["summary"]

    def write_figures(self, datamodule: L.LightningDataModule, out_dir: str | Path) -> dict:
        """Maps (truth, visible input, reconstruction) per grid and a riverflow hydrograph."""
        from maelab.models.mmmae.figures import write_figures

        ev = self.hparams.evaluation
        labels = [f"{i} {n}".strip() for i, n in zip(datamodule.catchment_ids,
                                                       datamodule.catchment_names, strict=True)]
        return write_figures(self._results, datamodule.layout, Path(out_dir),
                             day=ev.get("figure_day"), series=ev.get("cross_modal") or "riverflow",
                             catchment_labels=labels)

    def write_tables(self, datamodule: L.LightningDataModule, out_dir: str | Path) -> list[Path]:
        """`catchments.csv`: the flow scores of every series row per catchment (gauge id, name)."""
        from maelab.models.mmmae.evaluation import write_catchment_table

        return [write_catchment_table(self._results["catchment_rows"], Path(out_dir))]
