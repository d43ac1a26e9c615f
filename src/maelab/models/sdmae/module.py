"""SDMAEModule: SD-MAE wired to its loss, scores, calibration, metrics and figures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics.functional.classification import binary_auroc

from maelab.data.contracts import SeriesBatch, SeriesInfo
from maelab.lit.base import MaeModule
from maelab.masking.noise import KeyedNoise
from maelab.models.sdmae.config import SCORE_TYPES
from maelab.models.sdmae.loss import anomaly_ramp, sdmae_loss
from maelab.models.sdmae.masking import last_steps_mask, random_mask
from maelab.models.sdmae.model import SDMAE
from maelab.scoring import (
    assemble_point_scores,
    detection_metrics,
    fit_normal_stats,
    select_threshold,
    to_unit_interval,
    vus_pr,
)

log = logging.getLogger(__name__)


class SDMAEModule(MaeModule):
    """Trains SD-MAE; scores windows by hiding their last `mask_last_n` steps.

    Calibration (score normalisation on validation normals and thresholds chosen on validation)
    lives in buffers, so it travels inside the checkpoint.
    """

    name = "sdmae"

    def __init__(
        self, net: dict, loss: dict, optim: dict, masking: dict, scoring: dict, data_info: dict,
        seed: int = 0, run_config: dict | None = None, torch_compile: bool = False,
    ) -> None:
        super().__init__(optim, data_info, seed, run_config)
        self.info = SeriesInfo(**data_info)
        self.net = SDMAE(
            seq_length=self.info.seq_length, num_features=self.info.num_features,
            strategy=masking["strategy"], patch_size=masking["patch_size"], **net,
        )
        # compiled in place (state_dict keys unchanged); off by default: on a CPU the minutes of
        # compilation outweigh a ~15 % faster step (docs/performance.md)
        if torch_compile:
            self.net.compile()
        self.available = (
            SCORE_TYPES if set(self.net.decoders) == {"teacher", "student"} else ("reconstruction",)
        )
        self.score = self.available[0] if scoring["score"] == "auto" else scoring["score"]
        self.mask_last_n = int(scoring["mask_last_n"])
        self.register_buffer("cal_mean", torch.zeros(3, dtype=torch.float64))
        self.register_buffer("cal_std", torch.ones(3, dtype=torch.float64))
        self.register_buffer("cal_threshold", torch.full((3,), float("nan"), dtype=torch.float64))
        self.register_buffer("cal_percentile_rule", torch.zeros(3, dtype=torch.bool))
        self.register_buffer("cal_mask_last_n", torch.tensor(-1))
        self._calibrating = False
        self._collected: list[dict[str, torch.Tensor]] = []
        self._train_sums: dict[str, torch.Tensor] = {}  # per-epoch Σ batch × loss part
        self._train_windows = 0
        self._val_sums: dict[str, torch.Tensor] = {}
        self._val_windows = 0
        self.examples: dict[int, dict[str, torch.Tensor]] = {}
        self._results: dict[str, Any] = {}

    # ---- scores -------------------------------------------------------------------------
    @property
    def strategy(self) -> str:
        return self.net.strategy

    def step_scores(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Hide the last n steps; per-step raw scores {name: (B, n)} and the model output."""
        n = self.mask_last_n
        mask = last_steps_mask(self.strategy, x.shape[0], x.shape[1], x.shape[2], n,
                               self.net.patch_size, x.device)
        out = self.net(x, mask)
        recon_source = out["teacher"] if "teacher" in out else out["student"]
        scores = {"reconstruction": ((recon_source - x)[:, -n:] ** 2).mean(-1)}  # (B, n)
        if "discrepancy" in self.available:
            scores["discrepancy"] = ((out["teacher"] - out["student"])[:, -n:] ** 2).mean(-1)
        return scores, out

    # ---- training -----------------------------------------------------------------------
    def _loss(self, batch: SeriesBatch, noise: KeyedNoise) -> dict[str, torch.Tensor]:
        x = batch["x"]  # (B, T, F)
        m = self.hparams.masking
        mask = random_mask(noise, m["strategy"], x.shape[1], x.shape[2], m["ratio"],
                           m["patch_size"], m["num_spans"])
        out = self.net(x, mask)
        anomalous = batch["labelled"] & (batch["label"] > 0)
        lw = self.hparams.loss
        ramp = anomaly_ramp(self.current_epoch, lw["anomaly_warmup_epochs"])
        return sdmae_loss(out, x, anomalous, lw["lambda_disc"], lw["margin"], ramp,
                          lw["discrepancy"])

    def _noise(self, batch: SeriesBatch, stream: int) -> KeyedNoise:
        """Mask noise keyed by sample: the same masks whatever batch, rank or resume draws them."""
        return KeyedNoise(self.hparams.seed, torch.full_like(batch["start"], stream),
                          batch["series"], batch["start"])

    def on_train_epoch_start(self) -> None:
        self._train_sums, self._train_windows = {}, 0

    def training_step(self, batch: SeriesBatch, batch_idx: int) -> torch.Tensor:
        parts = self._loss(batch, self._noise(batch, self.current_epoch))  # fresh every epoch
        # epoch means weighted by batch size, as `log(on_epoch=True, batch_size=b)` gives, without
        # its per-step cost (~3 ms of a 70 ms CPU step): accumulated here, logged once per epoch
        b = batch["x"].shape[0]
        for k, v in parts.items():
            self._train_sums[k] = self._train_sums.get(k, 0.0) + v.detach() * b
        self._train_windows += b
        return parts["loss"]

    def on_train_epoch_end(self) -> None:
        if self._train_windows:
            self.log_dict({f"train/{k}": v / self._train_windows for k, v in self._train_sums.items()},
                          on_step=False, on_epoch=True, prog_bar=False)

    # ---- validation / test: collect scores -------------------------------------------------
    def _collect(self, batch: SeriesBatch) -> dict[str, torch.Tensor]:
        scores, out = self.step_scores(batch["x"])
        n = self.mask_last_n
        item = {f"score/{k}": v.detach() for k, v in scores.items()}
        item |= {"point_labels": batch["point_labels"][:, -n:], "anomaly_type": batch["anomaly_type"],
                 "start": batch["start"], "series": batch["series"]}
        self._collected.append(item)
        return out

    def on_validation_epoch_start(self) -> None:
        self._val_sums, self._val_windows = {}, 0

    def validation_step(self, batch: SeriesBatch, batch_idx: int) -> None:
        parts = self._loss(batch, self._noise(batch, -1))  # fixed masks: comparable across epochs
        # batch-weighted epoch means, logged once in on_validation_epoch_end (as in training)
        b = batch["x"].shape[0]
        for k, v in parts.items():
            self._val_sums[k] = self._val_sums.get(k, 0.0) + v * b
        self._val_windows += b
        self._collect(batch)

    def _log_val_losses(self) -> None:
        """`val/<part>`: Σ batch × loss / Σ batch over all ranks' windows, the value (bit for
        bit) of `log(..., on_epoch=True, batch_size=b, sync_dist=True)` per step."""
        count = torch.tensor(self._val_windows, device=self.device)
        sums = dict(self._val_sums)
        if self.trainer.world_size > 1:
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
            sums = {k: self.trainer.strategy.reduce(v.clone(), reduce_op="sum") for k, v in sums.items()}
        self.log_dict({f"val/{k}": v / count for k, v in sums.items()}, on_epoch=True, prog_bar=False)

    def test_step(self, batch: SeriesBatch, batch_idx: int) -> None:
        out = self._collect(batch)
        # an example per anomaly type whose anomaly lies in the scored region, and a "normal" one
        # without any anomalous step (a window anomalous only outside that region is neither)
        scored = batch["point_labels"][:, -self.mask_last_n:].amax(dim=1) > 0  # (B,)
        clean = batch["point_labels"].amax(dim=1) == 0  # (B,)
        kinds = torch.where(scored, batch["anomaly_type"], torch.where(clean, 0, -1))  # (B,)
        for i, kind in enumerate(kinds.tolist()):
            if kind >= 0 and kind not in self.examples:
                self.examples[kind] = {
                    "x": batch["x"][i].cpu(), "point_labels": batch["point_labels"][i].cpu(),
                    **{k: out[k][i].detach().float().cpu() for k in self.net.decoders},
                }

    def _gathered(self) -> dict[str, torch.Tensor]:
        """Everything collected this epoch, concatenated over batches and gathered over ranks."""
        keys = self._collected[0].keys() if self._collected else []
        data = {k: torch.cat([c[k] for c in self._collected]) for k in keys}
        self._collected.clear()
        if self.trainer.world_size > 1:
            data = {k: self.all_gather(v).flatten(0, 1) for k, v in data.items()}
        # one row per window, ordered by (series, start): drops the copies a distributed sampler
        # pads with, and makes the gathered set identical to a single-process run's
        key = data["series"] * (int(data["start"].max()) + 1) + data["start"]
        _, inverse = torch.unique(key, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(key), device=key.device)
        first = first.scatter_reduce(0, inverse, torch.arange(len(key), device=key.device), "amin")
        return {k: v[first] for k, v in data.items()}

    def level_scores(self, data: dict[str, torch.Tensor]) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Scores and labels at the evaluation level.

        window level: one score per window (mean over the scored steps), label = any anomaly there.
        point level: one score per scored step, in (series, start) order (see `_gathered`).
        """
        raw = {k.split("/", 1)[1]: v.double() for k, v in data.items() if k.startswith("score/")}
        if self.info.eval_level == "window":
            labels = data["point_labels"].amax(dim=1)
            types = torch.where(labels > 0, data["anomaly_type"], 0)
            return {k: v.mean(dim=1) for k, v in raw.items()}, labels, types
        if not self.trainer.testing:  # validation windows may overlap: flat per-step scores
            labels = data["point_labels"].flatten()
            return {k: v.flatten() for k, v in raw.items()}, labels, labels.clone()
        series, start, t = data["series"].cpu(), data["start"].cpu(), self.info.seq_length
        out: dict[str, list] = {k: [] for k in [*raw, "labels"]}
        for sid in series.unique():  # each point after a series' first window scored once
            rows = (series == sid).nonzero().squeeze(1)
            length = int(start[rows].max()) + t
            for k, v in [*raw.items(), ("labels", data["point_labels"].double())]:
                points = assemble_point_scores(v[rows].cpu(), start[rows], t, length)
                out[k].append(points[~points.isnan()])
        labels = torch.cat(out.pop("labels")).long()
        return {k: torch.cat(v) for k, v in out.items()}, labels, labels.clone()

    @staticmethod
    def normal_stats(scores: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(3,) mean and std of each score type on validation normals (0, 1 where absent)."""
        stats = [fit_normal_stats(scores[k].cpu(), labels.cpu()) if k in scores else (0.0, 1.0)
                 for k in SCORE_TYPES]
        return (torch.tensor([m for m, _ in stats], dtype=torch.float64),
                torch.tensor([s for _, s in stats], dtype=torch.float64))

    def with_combined(self, scores: dict, mean: torch.Tensor, std: torch.Tensor) -> dict:
        """Add `combined` = sum of the scores standardised with (mean, std) of validation normals."""
        if "discrepancy" not in scores:
            return scores
        z = [(scores[k] - mean[i]) / std[i] for i, k in enumerate(SCORE_TYPES[:2])]
        return scores | {"combined": z[0] + z[1]}

    def on_validation_epoch_end(self) -> None:
        if self._val_windows:
            self._log_val_losses()
        data = self._gathered()
        if not data:
            return
        scores, labels, _ = self.level_scores(data)
        mean, std = self.normal_stats(scores, labels)
        scores = self.with_combined(scores, mean, std)
        mean, std = self.normal_stats(scores, labels)
        if 0 < int(labels.sum()) < len(labels):  # AUROC needs both classes
            for name in dict.fromkeys([self.score, "discrepancy"]):
                if name in scores:
                    i = SCORE_TYPES.index(name)
                    unit = to_unit_interval(scores[name].cpu(), float(mean[i]), float(std[i]))
                    key = "val/auroc" if name == self.score else f"val/auroc_{name}"
                    self.log(key, binary_auroc(unit, labels.cpu()), prog_bar=key == "val/auroc")
        if self._calibrating:
            self.fit_calibration(scores, labels, mean, std)

    def fit_calibration(self, scores: dict, labels: torch.Tensor, mean: torch.Tensor,
                        std: torch.Tensor) -> None:
        """Store score normalisation and thresholds chosen on validation in the buffers."""
        t = self.hparams.scoring["threshold"]
        self.cal_mean.copy_(mean)
        self.cal_std.copy_(std)
        for i, name in enumerate(SCORE_TYPES):
            if name in scores:
                thr, used = select_threshold(scores[name].cpu(), labels.cpu(), t["method"],
                                             t["percentile"])
                self.cal_threshold[i] = thr
                self.cal_percentile_rule[i] = used == "percentile"
        self.cal_mask_last_n.fill_(self.mask_last_n)
        log.info("calibrated on validation: thresholds %s", ", ".join(
            f"{name} {float(self.cal_threshold[i]):.6g} "
            f"({'percentile' if self.cal_percentile_rule[i] else t['method']})"
            for i, name in enumerate(SCORE_TYPES) if name in scores))

    # ---- pipeline interface (maelab.lit.base) -------------------------------------------------
    @property
    def calibrated(self) -> bool:
        """Calibrated for the current scored region."""
        return int(self.cal_mask_last_n) == self.mask_last_n

    def calibrate(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """One validation pass that stores score normalisation and thresholds (`cal_*` buffers)."""
        self._calibrating = True
        try:
            trainer.validate(self, datamodule=datamodule, verbose=False)
        finally:
            self._calibrating = False

    def calibration_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("cal_")}

    def on_test_epoch_end(self) -> None:
        if not self.calibrated:
            raise RuntimeError("test before calibration: call calibrate(trainer, datamodule) "
                               "first (maelab.pipeline does)")
        data = self._gathered()
        scores, labels, types = self.level_scores(data)
        scores = self.with_combined(scores, self.cal_mean, self.cal_std)
        results: dict[str, Any] = {}
        for i, name in enumerate(SCORE_TYPES):
            if name not in scores:
                continue
            point_level = self.info.eval_level == "point"
            m = detection_metrics(
                scores[name].cpu(), labels.cpu(), float(self.cal_threshold[i]),
                float(self.cal_mean[i]), float(self.cal_std[i]),
                anomaly_types=None if point_level else types.cpu(),
                type_names=None if point_level else self.info.anomaly_types,
                point_adjust=point_level and bool(self.hparams.scoring.get("point_adjust")),
            )
            if point_level:
                m["vus_pr"] = vus_pr(scores[name].cpu(), labels.cpu())
            m["threshold_rule"] = "percentile" if self.cal_percentile_rule[i] else "f1"
            results[name] = m
        self._results = {
            "summary": {"score": self.score, "mask_last_n": self.mask_last_n,
                        "level": self.info.eval_level, "test": results,
                        "primary": results[self.score]},
            "score": self.score, "mask_last_n": self.mask_last_n,
            "scores": {k: v.cpu().numpy() for k, v in scores.items()},
            "labels": labels.cpu().numpy(),
            "thresholds": {n: float(self.cal_threshold[i]) for i, n in enumerate(SCORE_TYPES)},
        }

    def summary(self) -> dict[str, Any]:
        """Score, scored region, level, the `test` table (one row per score) and the primary row."""
        return self._results["summary"]

    def write_figures(self, datamodule: L.LightningDataModule, out_dir: str | Path) -> dict:
        """ROC/PR, score histogram, example windows or series scores (maelab.models.sdmae.figures)."""
        from maelab.models.sdmae.figures import write_figures

        return write_figures(self.info, self.examples, self._results, Path(out_dir))
