"""MaeModule: the base LightningModule, the whole contract between `maelab.pipeline` and a model.

The pipeline calls only what is defined here (besides Lightning's own hooks):

    name                               short model name (class attribute), e.g. "sdmae"
    calibrated                         ready to test? (default True: nothing to calibrate)
    needs_calibration(split)           run `calibrate` before testing `split`? (default: when not
                                       `calibrated`)
    calibrate(trainer, datamodule)     fit what testing needs on validation (default: nothing)
    calibration_state()                state_dict entries `calibrate` set, saved into the checkpoint
    summary()                          after `trainer.test`: JSON-able dict with a `test` table
                                       {row: {metric: value}} (printed and written to metrics.json)
    write_figures(datamodule, out_dir) PNGs of the test results; returns {name: Figure}
    test_split                         "test", or "val" while `evaluate.py split=val` runs the
                                       validation windows through the test code

and it owns what every model shares: the optimiser (`configure_optimizers`: AdamW without decay
on biases, norms and tokens, linear warm-up then cosine decay, lr scaled by the effective batch;
from `hparams.optim` and the data's batch size; the fused kernel except under mixed precision,
where Lightning cannot clip its gradients) and the non-finite-loss guard (a NaN/inf training
loss stops the run before the optimiser step, so checkpoints/last.ckpt keeps the last good
weights). A subclass takes `optim`, `data_info`, `seed` and `run_config` and passes them here;
every `__init__` argument is saved as a hyper-parameter (plain types only).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import torch

from maelab.lit.optim import adamw_warmup_cosine, effective_lr

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class MaeModule(L.LightningModule):
    """Base of the models' LightningModules (see the module docstring)."""

    name: ClassVar[str] = ""
    test_split: str = "test"  # the split `trainer.test` scores (set by the pipeline)

    def __init__(self, optim: Mapping[str, Any], data_info: Mapping[str, Any], seed: int = 0,
                 run_config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()  # the subclass's __init__ arguments too
        self._train_batch_idx = 0
        self._calibrating = False  # True during `calibration_pass`

    # ---- pipeline interface -------------------------------------------------------------------
    @property
    def calibrated(self) -> bool:
        """Ready to test; models that calibrate on validation override this."""
        return True

    def needs_calibration(self, split: str) -> bool:
        """Run `calibrate` before testing `split` ("test" | "val")? By default only when the
        module is not `calibrated` (a checkpoint carries its calibration)."""
        return not self.calibrated

    def calibrate(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """Fit what testing needs on the validation split (nothing by default)."""

    def calibration_state(self) -> dict[str, torch.Tensor]:
        """The state_dict entries `calibrate` set (the pipeline writes them into the checkpoint)."""
        return {}

    def calibration_pass(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """One `trainer.validate` pass over the validation split with `_calibrating` set, for a
        `calibrate` whose validation hooks collect or fit what the test needs."""
        self._calibrating = True
        try:
            trainer.validate(self, datamodule=datamodule, verbose=False)
        finally:
            self._calibrating = False

    def summary(self) -> dict[str, Any]:
        """Results of the last `trainer.test`: JSON-able, with a `test` table."""
        raise NotImplementedError(f"{type(self).__name__} must implement summary()")

    def write_figures(self, datamodule: L.LightningDataModule, out_dir: str | Path) -> dict[str, Figure]:
        """Write PNGs of the last test into `out_dir`; return them by name (none by default)."""
        return {}

    def write_tables(self, datamodule: L.LightningDataModule, out_dir: str | Path) -> list[Path]:
        """Write tables (CSV) of the last test into `out_dir`; return their paths (none by
        default)."""
        return []

    # ---- shared training plumbing -------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        """AdamW + linear warm-up + cosine decay over the run's optimiser steps."""
        o, t = self.hparams.optim, self.trainer
        lr = effective_lr(o["lr"], self.hparams.data_info["batch_size"], t.world_size,
                          t.accumulate_grad_batches, o.get("base_batch_size"))
        return adamw_warmup_cosine(self, int(t.estimated_stepping_batches), lr, o["weight_decay"],
                                   tuple(o["betas"]), o["warmup_fraction"],
                                   fused="mixed" not in str(t.precision))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._train_batch_idx = batch_idx

    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Stop on a non-finite training loss, before it reaches the weights."""
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at epoch {self.current_epoch}, batch "
                f"{self._train_batch_idx}; the last good checkpoint is kept in checkpoints/last.ckpt")
