"""FitPhases: a Lightning callback recording each training and validation epoch as a phase."""

from __future__ import annotations

import statistics

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from maelab.core.phases import PHASES, PhaseRecorder

Stamp = tuple[float, float]  # (seconds since process start, process CPU seconds)


class FitPhases(L.Callback):
    """Per epoch: `train` (first batch fetch to last optimiser step, with the median step time:
    the interval between successive batch starts, i.e. fetch + forward + backward + step) and
    `validation`; `sanity check` for Lightning's pre-fit validation. Checkpointing and loop
    set-up stay outside (the pipeline's `fit` phase holds everything)."""

    def __init__(self, recorder: PhaseRecorder = PHASES) -> None:
        self.recorder = recorder
        self._epoch_start: Stamp | None = None
        self._last_end: Stamp | None = None
        self._prev_batch: Stamp | None = None
        self._steps: list[Stamp] = []
        self._val_start: Stamp = (0.0, 0.0)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._last_end, self._prev_batch = self.recorder.stamp(), None, None
        self._steps = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch,
                             batch_idx: int) -> None:
        now = self.recorder.stamp()
        if self._prev_batch is not None:
            self._steps.append((now[0] - self._prev_batch[0], now[1] - self._prev_batch[1]))
        self._prev_batch = now

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self._last_end = self.recorder.stamp()

    def _close_train_epoch(self, trainer: L.Trainer) -> None:
        if self._epoch_start is None or self._last_end is None:
            return
        steps = self._steps
        self.recorder.add(
            "train", self._epoch_start, self._last_end, epoch=trainer.current_epoch,
            steps=len(steps) + 1,
            step_wall=statistics.median(w for w, _ in steps) if steps else None,
            step_cpu=statistics.median(c for _, c in steps) if steps else None,
        )
        self._epoch_start = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._close_train_epoch(trainer)
        self._val_start = self.recorder.stamp()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # trainer.validate: timed by its caller
            return
        name = "sanity check" if trainer.sanity_checking else "validation"
        self.recorder.add(name, self._val_start, self.recorder.stamp(), epoch=trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_train_epoch(trainer)  # epochs without validation
