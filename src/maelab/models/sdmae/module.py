"""SDMAEModule: SD-MAE wired to its loss, scores, calibration, metrics and figures."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics.functional.classification import binary_auroc

from maelab.core.errors import ConfigError
from maelab.data.contracts import SeriesBatch, SeriesInfo
from maelab.lit.base import MaeModule
from maelab.masking.noise import KeyedNoise
from maelab.models.sdmae.config import SCORE_TYPES, MaskingConfig
from maelab.models.sdmae.loss import anomaly_ramp, anomaly_visible, sdmae_loss
from maelab.models.sdmae.masking import (
    block_masks,
    last_steps_by_feature_masks,
    last_steps_mask,
    random_mask,
)
from maelab.models.sdmae.model import SDMAE
from maelab.scoring import (
    Whitening,
    assemble_point_scores,
    cross_fitted_mahalanobis,
    detection_metrics,
    fit_normal_stats,
    fit_whitening,
    mahalanobis,
    select_threshold,
    to_unit_interval,
    vus_pr,
)

log = logging.getLogger(__name__)

COMBINED_WEIGHTS = torch.linspace(0, 1, 21, dtype=torch.float64)  # grid for the combined score


class SDMAEModule(MaeModule):
    """Trains SD-MAE and scores windows with their scored region hidden.

    Scores, per hidden value of the scored region (`scoring.reduce` makes one number of them per
    window, or per step for point-level data):
        discrepancy     (teacher − student)²
        reconstruction  (teacher − input)²  (the student's, with a student-only decoder)
        combined        w · z(discrepancy) + (1 − w) · z(reconstruction); z-scores on validation
                        normals, w on a grid chosen on validation (best AUROC; 0.5 without labels)
    Inference (`scoring.inference`): `last_n` hides the last `mask_last_n` steps; `all_positions`
    hides every block of `mask_last_n` steps once, in `passes` batched passes, so every step gets
    its scores while hidden; `last_n_by_feature` (cell masks) hides the last steps of one feature
    per batched pass, the others visible, so each feature is scored from its peers.
    `reduce: mahalanobis` scores the signed residuals (teacher − input, teacher − student) of a
    window's scored region (steps × features; of each step at point level) by their squared
    Mahalanobis distance from those of validation normals (Ledoit-Wolf covariance); validation's
    own distances are cross-fitted (`maelab.scoring.mahalanobis`).
    Labels (`scoring.label_scope`): a window is anomalous when an anomaly overlaps its scored
    region (`scored`) or lies anywhere in it (`window`).
    Calibration on validation lives in buffers, so it travels inside the checkpoint: score
    normalisation, the combined weight, thresholds, and with `score: auto` the primary score (the
    type with the best validation AUROC).
    """

    name = "sdmae"

    def __init__(
        self, net: dict, loss: dict, optim: dict, masking: dict, scoring: dict, data_info: dict,
        seed: int = 0, run_config: dict | None = None, torch_compile: bool = False,
    ) -> None:
        super().__init__(optim, data_info, seed, run_config)
        self.info = SeriesInfo(**data_info)
        self.masking = MaskingConfig(**masking)  # the training masks, with the config's defaults
        self.net = SDMAE(
            seq_length=self.info.seq_length, num_features=self.info.num_features,
            strategy=self.masking.strategy, patch_size=self.masking.patch_size, **net,
        )
        # compiled in place (state_dict keys unchanged); off by default: on a CPU the minutes of
        # compilation outweigh a ~15 % faster step (README, Performance)
        if torch_compile:
            self.net.compile()
        self.available = (
            SCORE_TYPES if set(self.net.decoders) == {"teacher", "student"} else ("reconstruction",)
        )
        self.mask_last_n = int(scoring["mask_last_n"])
        self.register_buffer("cal_mean", torch.zeros(3, dtype=torch.float64))
        self.register_buffer("cal_std", torch.ones(3, dtype=torch.float64))
        self.register_buffer("cal_threshold", torch.full((3,), float("nan"), dtype=torch.float64))
        self.register_buffer("cal_percentile_rule", torch.zeros(3, dtype=torch.bool))
        self.register_buffer("cal_weight", torch.tensor(0.5, dtype=torch.float64))
        self.register_buffer("cal_score", torch.tensor(-1))  # SCORE_TYPES index chosen by `auto`
        self.register_buffer("cal_signature", torch.tensor(-1))  # scoring settings calibrated for
        # reduce=mahalanobis: mean (2, D) and precision (2, D, D) of validation-normal residual
        # vectors of (discrepancy, reconstruction); D is set by the scoring settings at calibration
        self.register_buffer("cal_resid_mean", torch.zeros(2, 0, dtype=torch.float64))
        self.register_buffer("cal_resid_precision", torch.zeros(2, 0, 0, dtype=torch.float64))
        self._whitening: dict[str, Whitening] = {}  # fitted by the calibration pass
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

    @property
    def score(self) -> str:
        """The primary score: the configured type, or with `auto` the one calibration chose."""
        requested = self.hparams.scoring["score"]
        if requested != "auto":
            return requested
        return SCORE_TYPES[int(self.cal_score)] if int(self.cal_score) >= 0 else self.available[-1]

    def _choose(self, aurocs: dict[str, float] | None) -> str:
        """Primary score for validation AUROCs `aurocs` (None: validation has no labels)."""
        requested = self.hparams.scoring["score"]
        if requested != "auto":
            return requested
        if not aurocs:
            return "reconstruction"  # nothing to choose on: the score that needs no labels
        return max(self.available, key=lambda k: aurocs[k])

    def last_n_pass(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's output (as `forward`) for windows x (B, T, F) with the last
        `mask_last_n` steps hidden: the `last_n` scoring pass, and the loss's inference pass."""
        b, t, f = x.shape
        return self.net(x, last_steps_mask(self.strategy, b, t, f, self.mask_last_n,
                                           self.net.patch_size, x.device))

    def infer(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoder outputs (B, T, F) with the scored values hidden, and "hidden" (B, T, F).

        `last_n`: one pass with the last `mask_last_n` steps hidden. `all_positions`: the
        `passes` masks of `block_masks` in one batched forward; `last_n_by_feature`: the F masks
        of `last_steps_by_feature_masks` likewise. Each value is taken from the pass that hid it
        (every scored value is hidden in exactly one pass).
        """
        s, (b, t, f) = self.hparams.scoring, x.shape
        if s["inference"] == "last_n":
            return self.last_n_pass(x)
        if s["inference"] == "last_n_by_feature":
            masks = last_steps_by_feature_masks(self.strategy, b, t, f, self.mask_last_n,
                                                self.net.patch_size, x.device)  # (F, B, units…)
        else:
            masks = block_masks(self.strategy, b, t, f, self.mask_last_n, s["passes"],
                                self.net.patch_size, x.device)  # (P, B, units…)
        p = masks.shape[0]
        out = self.net(x.repeat(p, 1, 1), masks.reshape(p * b, *masks.shape[2:]))
        hidden = out["hidden"].reshape(p, b, t, f)
        merged = {k: (out[k].reshape(p, b, t, f) * hidden).sum(0) for k in self.net.decoders}
        return merged | {"hidden": hidden.any(0)}

    def step_residuals(self, x: torch.Tensor, out: dict[str, torch.Tensor] | None = None
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Signed residuals of the scored values {name: (B, S, F)} (S = T with `all_positions`,
        else mask_last_n) and the model output of `infer` (`out`: that output, already computed)."""
        out = self.infer(x) if out is None else out
        steps = slice(None) if self.hparams.scoring["inference"] == "all_positions" \
            else slice(-self.mask_last_n, None)
        recon_source = out["teacher"] if "teacher" in out else out["student"]
        residuals = {"reconstruction": (recon_source - x)[:, steps]}  # (B, S, F)
        if "discrepancy" in self.available:
            residuals["discrepancy"] = (out["teacher"] - out["student"])[:, steps]
        return residuals, out

    def step_scores(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Squared errors of the scored values {name: (B, S, F)} and the output of `infer`."""
        residuals, out = self.step_residuals(x)
        return {k: v ** 2 for k, v in residuals.items()}, out

    # ---- training -----------------------------------------------------------------------
    def _loss_and_inference(self, batch: SeriesBatch, noise: KeyedNoise
                            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """Loss parts, and the output of the pass with the last n steps hidden where the loss
        took one (None otherwise): with `scoring.inference=last_n` it is `infer`'s output."""
        x = batch["x"]  # (B, T, F)
        m, lw = self.masking, self.hparams.loss
        mask = random_mask(noise, m.strategy, x.shape[1], x.shape[2], m.ratio, m.patch_size,
                           m.num_spans, m.feature_share)
        out = self.net(x, mask)
        gap_inference = lw["gap_mask"] == "inference" and lw["discrepancy"] \
            and len(self.net.decoders) == 2
        inference_out = None  # the pass as windows are scored: last n steps hidden
        if gap_inference or lw["recon_mask"] == "training_and_inference":
            inference_out = self.last_n_pass(x)
        gap_out = inference_out if gap_inference else out
        anomalous = batch["labelled"] & (batch["label"] > 0)
        if lw["push"] == "visible":  # an anomaly the encoder cannot see cannot move the gap
            anomalous = anomalous & anomaly_visible(batch["point_labels"], gap_out["hidden"])
        ramp = anomaly_ramp(self.current_epoch, lw["anomaly_warmup_epochs"])
        return sdmae_loss(out, x, anomalous, lw, ramp, gap_out, inference_out), inference_out

    def _noise(self, batch: SeriesBatch, stream: int) -> KeyedNoise:
        """Mask noise keyed by sample: the same masks whatever batch, rank or resume draws them."""
        return KeyedNoise(self.hparams.seed, torch.full_like(batch["start"], stream),
                          batch["series"], batch["start"])

    def on_train_epoch_start(self) -> None:
        self._train_sums, self._train_windows = {}, 0

    def training_step(self, batch: SeriesBatch, batch_idx: int) -> torch.Tensor:
        noise = self._noise(batch, self.current_epoch)  # fresh masks every epoch
        parts, _ = self._loss_and_inference(batch, noise)
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
    def _collect(self, batch: SeriesBatch, out: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
        residuals, out = self.step_residuals(batch["x"], out)
        item = {f"score/{k}": v.detach() ** 2 for k, v in residuals.items()}
        if self.hparams.scoring["reduce"] == "mahalanobis":
            item |= {f"resid/{k}": v.detach() for k, v in residuals.items()}
        item |= {"point_labels": batch["point_labels"], "anomaly_type": batch["anomaly_type"],
                 "start": batch["start"], "series": batch["series"]}
        self._collected.append(item)
        return out

    def on_validation_epoch_start(self) -> None:
        self._val_sums, self._val_windows = {}, 0

    def validation_step(self, batch: SeriesBatch, batch_idx: int) -> None:
        # fixed masks: comparable across epochs
        parts, inference_out = self._loss_and_inference(batch, self._noise(batch, -1))
        # batch-weighted epoch means, logged once in on_validation_epoch_end (as in training)
        b = batch["x"].shape[0]
        for k, v in parts.items():
            self._val_sums[k] = self._val_sums.get(k, 0.0) + v * b
        self._val_windows += b
        # the loss's pass with the last n steps hidden is the scoring pass of `last_n`: reused
        reuse = self.hparams.scoring["inference"] == "last_n"
        self._collect(batch, inference_out if reuse else None)

    def _log_val_losses(self) -> None:
        """`val/<part>`: Σ batch × loss / Σ batch over all ranks' windows, the value (bit for
        bit) of `log(..., on_epoch=True, batch_size=b, sync_dist=True)` per step."""
        count = torch.tensor(self._val_windows, device=self.device)
        sums = dict(self._val_sums)
        if self.trainer.world_size > 1:
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
            sums = {k: self.trainer.strategy.reduce(v.clone(), reduce_op="sum") for k, v in sums.items()}
        self.log_dict({f"val/{k}": v / count for k, v in sums.items()}, on_epoch=True, prog_bar=False)

    def window_labels(self, point_labels: torch.Tensor) -> torch.Tensor:
        """(B,) window labels under `scoring.label_scope` from point labels (B, T)."""
        if self.hparams.scoring["label_scope"] == "scored":
            return point_labels[:, -self.mask_last_n:].amax(dim=1)
        return point_labels.amax(dim=1)

    def test_step(self, batch: SeriesBatch, batch_idx: int) -> None:
        out = self._collect(batch)
        # an example per anomaly type whose window is anomalous under the label scope, and a
        # "normal" one without any anomalous step (a window anomalous only elsewhere is neither)
        anomalous = self.window_labels(batch["point_labels"]) > 0  # (B,)
        clean = batch["point_labels"].amax(dim=1) == 0  # (B,)
        kinds = torch.where(anomalous, batch["anomaly_type"], torch.where(clean, 0, -1))  # (B,)
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

    def _reduce(self, v: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
        return v.amax(dim=dims) if self.hparams.scoring["reduce"] == "max" else v.mean(dim=dims)

    def _mahalanobis(self, data: dict[str, torch.Tensor], region: slice) -> dict[str, torch.Tensor]:
        """`reduce: mahalanobis` scores {name: (W,) window level | (W, S) point level}.

        The residual vectors (a window's scored region, steps × features; at point level each
        step's features) are scored against normal ones: in test with the whitening calibrated
        on validation (buffers); validation windows (also through the test code, `split=val`)
        cross-fitted, and when calibrating the whitening of all their normal vectors kept. Normal: no
        anomalous step in the window (in the step).
        """
        pl, out, self._whitening = data["point_labels"], {}, {}
        for i, name in enumerate(SCORE_TYPES[:2]):
            if f"resid/{name}" not in data:
                continue
            r = data[f"resid/{name}"].double()  # (W, S, F)
            w, s = r.shape[:2]
            if self.info.eval_level == "point":
                vectors, normal = r.flatten(0, 1), (pl[:, -s:] == 0).flatten()  # (W·S, F)
            else:
                vectors, normal = r[:, region].flatten(1), pl.amax(1) == 0  # (W, S·F)
            if self.trainer.testing and self.test_split == "test":
                d = mahalanobis(vectors, Whitening(self.cal_resid_mean[i].cpu(),
                                                   self.cal_resid_precision[i].cpu()))
            else:
                try:
                    d = cross_fitted_mahalanobis(vectors, normal)
                    if self._calibrating:  # the whitening the test will use
                        self._whitening[name] = fit_whitening(vectors, normal)
                except ValueError as exc:  # too few normal validation vectors for a covariance
                    raise ConfigError(
                        "scoring.reduce", "mahalanobis",
                        f"max or mean: {int(normal.sum())} of the {len(normal)} validation "
                        f"vectors are normal, too few to fit a covariance in each of 5 folds "
                        f"(more validation windows would do: {exc})") from exc
            out[name] = d.reshape(w, s) if self.info.eval_level == "point" else d
        return out

    def level_scores(self, data: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Scores, labels, anomaly types and (window level) anomaly groups at the evaluation level.

        window level: one score per window, reduced over the scored values of its scored region
        (the last `mask_last_n` steps; the whole window under `label_scope: window` when
        `all_positions` scored it). Groups (windows vs normal windows, for the report):
        `visible_in_context` (an anomaly in the scored region that also lies in the context the
        encoder sees), `hidden_only` (only in the scored region), `context_only`.
        point level: one score per scored step (reduced over features), in (series, start) order.
        """
        raw = {k.split("/", 1)[1]: v.double() for k, v in data.items() if k.startswith("score/")}
        pl, n = data["point_labels"], self.mask_last_n
        steps = next(iter(raw.values())).shape[1]  # S scored steps per window
        if self.info.eval_level == "window":
            scope = self.hparams.scoring["label_scope"]
            region = slice(-n, None) if scope == "scored" else slice(None)
            labels = self.window_labels(pl)
            in_scored, in_context = pl[:, -n:].amax(1) > 0, pl[:, :-n].amax(1) > 0
            groups = {"visible_in_context": in_scored & in_context,
                      "hidden_only": in_scored & ~in_context}
            if scope == "window":
                groups["context_only"] = ~in_scored & in_context
            scores = self._mahalanobis(data, region) \
                if self.hparams.scoring["reduce"] == "mahalanobis" \
                else {k: self._reduce(v[:, region], (1, 2)) for k, v in raw.items()}
            return {"scores": scores,
                    "labels": labels, "types": torch.where(labels > 0, data["anomaly_type"], 0),
                    "groups": groups, "normal": pl.amax(1) == 0}
        per_step = self._mahalanobis(data, slice(None)) \
            if self.hparams.scoring["reduce"] == "mahalanobis" \
            else {k: self._reduce(v, (2,)) for k, v in raw.items()}  # (W, S)
        step_labels = pl[:, -steps:]
        if not self.trainer.testing:  # validation windows may overlap: flat per-step scores
            labels = step_labels.flatten()
            return {"scores": {k: v.flatten() for k, v in per_step.items()}, "labels": labels,
                    "types": labels.clone(), "groups": {}, "normal": labels == 0}
        series, start, t = data["series"].cpu(), data["start"].cpu(), self.info.seq_length
        out: dict[str, list] = {k: [] for k in [*per_step, "labels"]}
        for sid in series.unique():  # each point after a series' first window scored once
            rows = (series == sid).nonzero().squeeze(1)
            length = int(start[rows].max()) + t
            for k, v in [*per_step.items(), ("labels", step_labels.double())]:
                points = assemble_point_scores(v[rows].cpu(), start[rows], t, length)
                out[k].append(points[~points.isnan()])
        labels = torch.cat(out.pop("labels")).long()
        return {"scores": {k: torch.cat(v) for k, v in out.items()}, "labels": labels,
                "types": labels.clone(), "groups": {}, "normal": labels == 0}

    @staticmethod
    def normal_stats(scores: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(3,) mean and std of each score type on validation normals (0, 1 where absent)."""
        stats = [fit_normal_stats(scores[k].cpu(), labels.cpu()) if k in scores else (0.0, 1.0)
                 for k in SCORE_TYPES]
        return (torch.tensor([m for m, _ in stats], dtype=torch.float64),
                torch.tensor([s for _, s in stats], dtype=torch.float64))

    @staticmethod
    def with_combined(scores: dict, mean: torch.Tensor, std: torch.Tensor, weight: float) -> dict:
        """Add `combined` = w · z(discrepancy) + (1 − w) · z(reconstruction), z-scores with the
        (mean, std) of validation normals."""
        if "discrepancy" not in scores:
            return scores
        z = [(scores[k] - mean[i]) / std[i] for i, k in enumerate(SCORE_TYPES[:2])]
        return scores | {"combined": weight * z[0] + (1 - weight) * z[1]}

    @staticmethod
    def _auroc(score: torch.Tensor, labels: torch.Tensor, mean: float, std: float) -> float:
        """torchmetrics AUROC of a raw score, mapped monotonically into (0, 1) first."""
        return float(binary_auroc(to_unit_interval(score.cpu(), mean, std), labels.cpu()))

    def fit_combined_weight(self, scores: dict, labels: torch.Tensor, mean: torch.Tensor,
                            std: torch.Tensor) -> float:
        """The weight w of `combined` on `COMBINED_WEIGHTS` with the best validation AUROC."""
        if "discrepancy" not in scores or not 0 < int(labels.sum()) < len(labels):
            return 0.5
        best, best_w = -1.0, 0.5
        for w in COMBINED_WEIGHTS.tolist():
            combo = self.with_combined(scores, mean, std, w)["combined"]
            m, s = fit_normal_stats(combo.cpu(), labels.cpu())
            a = self._auroc(combo, labels, m, s)
            if a > best + 1e-12:
                best, best_w = a, w
        return best_w

    def _evaluated(self, data: dict[str, torch.Tensor], weight: float | None = None
                   ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, float]:
        """Level scores with `combined` added (weight fitted here unless given) and the (3,)
        normal statistics of the three score types."""
        lv = self.level_scores(data)
        mean, std = self.normal_stats(lv["scores"], lv["labels"])
        if weight is None:
            weight = self.fit_combined_weight(lv["scores"], lv["labels"], mean, std)
        lv["scores"] = self.with_combined(lv["scores"], mean, std, weight)
        mean, std = self.normal_stats(lv["scores"], lv["labels"])
        return lv, mean, std, weight

    def on_validation_epoch_end(self) -> None:
        if self._val_windows:
            self._log_val_losses()
        data = self._gathered()
        if not data:
            return
        lv, mean, std, weight = self._evaluated(data)
        scores, labels = lv["scores"], lv["labels"]
        aurocs = None
        if 0 < int(labels.sum()) < len(labels):  # AUROC needs both classes
            aurocs = {k: self._auroc(v, labels, float(mean[SCORE_TYPES.index(k)]),
                                     float(std[SCORE_TYPES.index(k)])) for k, v in scores.items()}
            for k, a in aurocs.items():
                self.log(f"val/auroc_{k}", a)
            self.log("val/auroc", aurocs[self._choose(aurocs)], prog_bar=True)
        if self._calibrating:
            self.fit_calibration(scores, labels, mean, std, weight, aurocs)

    def _signature(self) -> int:
        """The scoring settings a calibration holds for (a changed one needs a new one)."""
        s = self.hparams.scoring
        key = f"{self.mask_last_n}|{s['label_scope']}|{s['inference']}|{s['passes']}|{s['reduce']}"
        return zlib.crc32(key.encode())

    def fit_calibration(self, scores: dict, labels: torch.Tensor, mean: torch.Tensor,
                        std: torch.Tensor, weight: float, aurocs: dict[str, float] | None) -> None:
        """Store normalisation, combined weight, thresholds and the auto choice in the buffers."""
        t = self.hparams.scoring["threshold"]
        self.cal_mean.copy_(mean)
        self.cal_std.copy_(std)
        self.cal_weight.fill_(weight)
        for i, name in enumerate(SCORE_TYPES):
            if name in scores:
                thr, used = select_threshold(scores[name].cpu(), labels.cpu(), t["method"],
                                             t["percentile"])
                self.cal_threshold[i] = thr
                self.cal_percentile_rule[i] = used == "percentile"
        self.cal_score.fill_(SCORE_TYPES.index(self._choose(aurocs)))
        if self._whitening:  # reduce=mahalanobis: resized to the scored vectors' length D
            first = next(iter(self._whitening.values()))
            d = first.mean.numel()
            self.cal_resid_mean = torch.zeros(2, d, dtype=torch.float64, device=self.device)
            self.cal_resid_precision = torch.zeros(2, d, d, dtype=torch.float64, device=self.device)
            for i, name in enumerate(SCORE_TYPES[:2]):
                if name in self._whitening:
                    self.cal_resid_mean[i] = self._whitening[name].mean
                    self.cal_resid_precision[i] = self._whitening[name].precision
        self.cal_signature.fill_(self._signature())
        thresholds = ", ".join(
            f"{k} {float(self.cal_threshold[SCORE_TYPES.index(k)]):.6g} "
            f"({'percentile' if self.cal_percentile_rule[SCORE_TYPES.index(k)] else t['method']})"
            for k in SCORE_TYPES if k in scores)
        log.info("calibrated on validation: thresholds %s; combined weight on the "
                 "discrepancy %.2f", thresholds, weight)
        if self.hparams.scoring["score"] == "auto":
            seen = ", ".join(f"{k} {v:.4f}" for k, v in (aurocs or {}).items()) or "no labels"
            log.info("score=auto: primary score %s (validation AUROC: %s)", self.score, seen)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Take the whitening buffers at the checkpoint's size (D is set at calibration); a
        checkpoint from before they existed loads them empty (its calibration holds no
        whitening, and `reduce: mahalanobis` recalibrates through the signature)."""
        for key in ("cal_resid_mean", "cal_resid_precision"):
            saved = state_dict.setdefault(prefix + key, getattr(self, key).new_zeros(
                (2,) + (0,) * (getattr(self, key).dim() - 1)))
            setattr(self, key, torch.zeros_like(saved, device=getattr(self, key).device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ---- pipeline interface (maelab.lit.base) -------------------------------------------------
    @property
    def calibrated(self) -> bool:
        """Calibrated for the current scoring settings (scored region, labels, inference), the
        whitening included where `reduce: mahalanobis` needs it."""
        whitened = self.hparams.scoring["reduce"] != "mahalanobis" or self.cal_resid_mean.shape[1] > 0
        return int(self.cal_signature) == self._signature() and whitened

    def calibrate(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """One validation pass that stores the calibration in the `cal_*` buffers."""
        self.calibration_pass(trainer, datamodule)

    def calibration_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("cal_")}

    def on_test_epoch_end(self) -> None:
        if not self.calibrated:
            raise RuntimeError("test before calibration: call calibrate(trainer, datamodule) "
                               "first (maelab.pipeline does)")
        lv, _, _, _ = self._evaluated(self._gathered(), float(self.cal_weight))
        scores, labels, types = lv["scores"], lv["labels"], lv["types"]
        point_level = self.info.eval_level == "point"
        results: dict[str, Any] = {}
        for i, name in enumerate(SCORE_TYPES):
            if name not in scores:
                continue
            mean, std = float(self.cal_mean[i]), float(self.cal_std[i])
            m = detection_metrics(
                scores[name].cpu(), labels.cpu(), float(self.cal_threshold[i]), mean, std,
                anomaly_types=None if point_level else types.cpu(),
                type_names=None if point_level else self.info.anomaly_types,
                point_adjust=point_level and bool(self.hparams.scoring.get("point_adjust")),
            )
            for group, members in lv["groups"].items():  # each group against normal windows
                keep = members | lv["normal"]
                if int(members.sum()) and int(lv["normal"].sum()):
                    m[f"auroc_{group}"] = self._auroc(scores[name][keep], members[keep].long(),
                                                      mean, std)
            if point_level:
                m["vus_pr"] = vus_pr(scores[name].cpu(), labels.cpu())
            m["threshold_rule"] = "percentile" if self.cal_percentile_rule[i] else "f1"
            results[name] = m
        s = self.hparams.scoring
        summary = {"score": self.score,
                   "score_rule": "auto: best validation AUROC" if s["score"] == "auto" else "set",
                   "mask_last_n": self.mask_last_n, "level": self.info.eval_level,
                   "label_scope": s["label_scope"], "inference": s["inference"],
                   "reduce": s["reduce"], "combined_weight": float(self.cal_weight),
                   "groups": {g: int(v.sum()) for g, v in lv["groups"].items()},
                   "test": results, "primary": results[self.score]}
        self._results = {
            "summary": summary, "score": self.score, "mask_last_n": self.mask_last_n,
            "scores": {k: v.cpu().numpy() for k, v in scores.items()},
            "labels": labels.cpu().numpy(),
            "thresholds": {n: float(self.cal_threshold[i]) for i, n in enumerate(SCORE_TYPES)},
        }

    def summary(self) -> dict[str, Any]:
        """Score, scoring settings, the `test` table (one row per score) and the primary row."""
        return self._results["summary"]

    def write_figures(self, datamodule: L.LightningDataModule, out_dir: str | Path) -> dict:
        """ROC/PR, score histogram, example windows or series scores (maelab.models.sdmae.figures)."""
        from maelab.models.sdmae.figures import write_figures

        return write_figures(self.info, self.examples, self._results, Path(out_dir))
