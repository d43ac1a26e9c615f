"""MMMAEModule: MM-MAE wired to its masks, loss, logging, test-period evaluation and figures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from maelab.core.errors import ConfigError, DataError
from maelab.data.contracts import HydroBatch, HydroInfo
from maelab.lit.base import MaeModule
from maelab.masking.noise import KeyedNoise
from maelab.models.mmmae.calibration import (
    DISTANCE_BINS,
    DISTANCE_LABELS,
    blend_series,
    fit_blend,
    fit_shrinkage,
    fit_stretch,
    in_windows_without_visible,
    shrink_series,
    stretch_series,
)
from maelab.models.mmmae.config import BLEND_NEEDS, CalibrationConfig, MaskingConfig
from maelab.models.mmmae.evaluation import (
    TestEvaluation,
    catchment_std,
    climatologies,
    infilling_batches,
)
from maelab.models.mmmae.factorised import FactorisedMMMAE, expand_grids
from maelab.models.mmmae.loss import mmmae_loss, nse_star, selected_mse
from maelab.models.mmmae.masking import MaskedHydroBatch, decode_subset, with_masks
from maelab.models.mmmae.model import MMMAE
from maelab.models.mmmae.priors import doy_index, grid_priors, normalise, normalised_climatology
from maelab.models.mmmae.regression import (
    ForcingRegression,
    RegressionPrior,
    forcing_shown,
    training_batches,
)
from maelab.scoring.hydro_metrics import interpolate_days

log = logging.getLogger(__name__)

_HIDE_SERIES_STREAM = -2  # keys the whole-series hiding noise apart from the masks' streams
_HIDE_OTHERS_STREAM = -4  # keys `hide_series_others=mixed`'s coin (apart from the streams above and below)
_DECODE_STREAM = -3  # keys the training subset of decoded grid tokens
_BLEND_STATES = ("forcing_masked", "forcing_visible")  # the blend's weights, in this order
_UNFITTED = object()  # the regression baseline's trees before they are fitted (None: none)


class MMMAEModule(MaeModule):
    """Trains MM-MAE on HydroDataModule batches; tests reconstructions beside baselines.

    Each step draws its batch's masks on the batch's device, per window from the shared keyed
    noise: fresh every training epoch, fixed in validation and test (maelab.models.mmmae.masking).
    `net.attention` picks the network: `factorised` (per-day tokens, day × track attention,
    baseline priors in the decoder; maelab.models.mmmae.factorised) or `joint` (one transformer
    over all visible tokens, `temporal_patch` days per grid token; maelab.models.mmmae.model).
    Calibration (`calibration.series_shrink: by_distance`): after training, one pass over the
    validation windows fits per series the weights that pull hidden days toward interpolation by
    their distance to the nearest visible day (maelab.models.mmmae.calibration); they live in
    the `cal_series_shrink` buffer, so they travel in the checkpoint, and the test applies them.
    `calibration.series_stretch` lists series whose hidden days are first stretched about their
    climatology by a factor fitted in the same pass for the best median KGE (`cal_series_stretch`).
    `evaluate.py split=val` scores the windows the weights are fitted on, so there each window
    gets the weights (and factor) fitted on the catchments of the other parity (cross-fitted by
    catchment).
    `calibration.cross_modal_blend: regression` blends the cross_modal series in windows with no
    visible day of it with the `regression` baseline's trees, by weights fitted in the same pass
    on those windows (`cal_cross_modal_blend`: forcing masked, forcing visible).
    The `regression` series prior (`net.series_priors`): trees fitted at setup on training
    windows (maelab.models.mmmae.regression.RegressionPrior) predict the cross_modal series from
    the forcing each forward pass's masks leave visible; not saved, refitted from the seed.
    """

    name = "mmmae"

    def __init__(
        self, net: dict, loss: dict, optim: dict, evaluation: dict, masking: dict, data_info: dict,
        hide_series: float = 0.0, hide_series_others: str = "masked",
        hide_series_grids: str = "masked", seed: int = 0,
        run_config: dict | None = None, calibration: dict | None = None,
    ) -> None:
        super().__init__(optim, data_info, seed, run_config)
        self.info = HydroInfo(**data_info)
        self.masking = MaskingConfig(**masking)
        names = [*self.info.grid_names, *self.info.series_names]
        for key in loss.get("weights") or {}:
            if key not in names:
                raise ConfigError(f"model.loss.weights.{key}", loss["weights"][key],
                                  f"weights keyed by modality: {', '.join(names)}")
        cal = CalibrationConfig(**(calibration or {}))
        for where, keys in (("model.loss.nse_star", loss.get("nse_star")),
                            ("model.net.forcing_series", net.get("forcing_series")),
                            ("model.calibration.series_stretch", cal.series_stretch)):
            for key in keys or []:
                if key not in self.info.series_names:
                    raise ConfigError(where, key,
                                      f"a list of series: {', '.join(self.info.series_names)}")
        nse_star_names = list(loss.get("nse_star") or [])
        for key in loss.get("variability") or {}:
            if key not in nse_star_names:
                raise ConfigError(f"model.loss.variability.{key}", loss["variability"][key],
                                  "weights keyed by series scored by NSE* (model.loss.nse_star: "
                                  f"{', '.join(nse_star_names) or 'none'})")
        target = evaluation.get("cross_modal")
        if target is not None and target not in self.info.series_names:
            raise ConfigError("model.evaluation.cross_modal", target,
                              f"null or a series: {', '.join(self.info.series_names)}")
        others = [n for n in self.info.series_names if n != target]
        for key in evaluation.get("regression") or []:
            if key not in others and key not in self.info.grid_names:
                raise ConfigError("model.evaluation.regression", key,
                                  f"a list of grids ({', '.join(self.info.grid_names) or 'none'}) "
                                  f"or series other than the cross_modal one ({target}): "
                                  f"{', '.join(others) or 'none'}")
        uses_prior = "regression" in (net.get("series_priors") or [])
        if uses_prior and (target is None or not net.get("forcing_series")):
            raise ConfigError("model.net.series_priors", net.get("series_priors"),
                              "no `regression` without model.evaluation.cross_modal (the series "
                              "it predicts) and model.net.forcing_series (its inputs)")
        self._prior_target = target if uses_prior else None  # the series the trees predict
        if cal.cross_modal_blend == "regression" and (target is None
                                                      or not evaluation.get("regression")):
            raise ConfigError("model.calibration.cross_modal_blend", "regression", BLEND_NEEDS)
        # the config's defaults and choices (checked again here for modules built directly)
        self.series_shrink, self.series_stretch = cal.series_shrink, cal.series_stretch
        self.series_stretch_side = cal.series_stretch_side
        self.series_stretch_windows = cal.series_stretch_windows
        self.cross_modal_blend = cal.cross_modal_blend
        self.net = self._build_net(dict(net))
        # (S, bins) shrinkage weights per series (NaN: not calibrated)
        self.register_buffer("cal_series_shrink", torch.full(
            (len(self.info.series_names), len(DISTANCE_BINS)), float("nan"), dtype=torch.float64))
        # (S,) stretch factor per series (1: not listed in series_stretch; NaN: not calibrated)
        self.register_buffer("cal_series_stretch", torch.full(
            (len(self.info.series_names),), float("nan"), dtype=torch.float64))
        # (2,) blend weights of the cross_modal series: forcing masked, forcing visible (NaN: not
        # calibrated; not used unless cross_modal_blend is on)
        self.register_buffer("cal_cross_modal_blend", torch.full(
            (len(_BLEND_STATES),), float("nan"), dtype=torch.float64))
        self._cal_collected: list[dict[str, dict[str, torch.Tensor]]] = []
        # (2, S, bins), (2, S) and (2, 2): weights, factors and blend weights fitted on the even /
        # odd catchments (split=val, not saved)
        self._cal_fold_shrink: torch.Tensor | None = None
        self._cal_fold_stretch: torch.Tensor | None = None
        self._cal_fold_blend: torch.Tensor | None = None
        self._trees: Any = _UNFITTED  # the regression baseline (`_regression_baseline`)
        self._cal_one_parity: list[str] = []  # series with no window in one of the two folds
        self._evaluation: TestEvaluation | None = None
        self._results: dict[str, Any] = {}
        self._climatology: dict[str, torch.Tensor] | None = None  # physical units (baselines)
        self._series_std: dict[str, torch.Tensor] = {}  # (C,) training std per catchment (NSE*)
        self._prior_trees: RegressionPrior | None = None  # the `regression` prior (use_data)

    def _build_net(self, net: dict[str, Any]) -> FactorisedMMMAE | MMMAE:
        info = self.info
        layout = {"grid_names": info.grid_names, "series_names": info.series_names,
                  "seq_len": info.seq_len, "patch_size": info.patch_size,
                  "patch_rows": info.valid_patch_rows, "patch_cols": info.valid_patch_cols,
                  "patch_grid_shape": info.patch_grid_shape, "n_static": info.n_static}
        attention = net.pop("attention", "factorised")
        self.decode_fraction = float(net.pop("decode_fraction", 1.0))
        forcing = list(net.get("forcing_series") or [])
        for s in info.donor_series:
            if attention == "joint" or s not in forcing:
                raise ConfigError("data.donors.series", s,
                                  "series of model.net.forcing_series "
                                  f"({', '.join(forcing) or 'none'}; the factorised network "
                                  "reads donors of its forcing series only)")
        if attention == "joint":
            net.pop("grid_priors", None)
            net.pop("forcing_series", None)
            net.pop("antecedent_days", None)  # factorised only (checked by NetConfig)
            skip = "interpolation" if "interpolation" in net.pop("series_priors", []) else "none"
            return MMMAE(**layout, **net, series_skip=skip)
        net.pop("temporal_patch", None)
        return FactorisedMMMAE(**layout, **net, donor_series=info.donor_series)

    def setup(self, stage: str) -> None:
        """Lightning hook: `use_data` with the trainer's DataModule."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None:
            self.use_data(dm)

    def use_data(self, datamodule: L.LightningDataModule) -> None:
        """The training period's daily climatology (the baseline and, in model units, the
        decoder's climatology prior) from the DataModule's store; once."""
        if self._climatology is not None:
            return
        window = int(self.hparams.evaluation["climatology_window"])
        self._climatology = climatologies(datamodule.store, datamodule.splits["train"], window)
        self._series_std = catchment_std(datamodule.store, datamodule.splits["train"],
                                         self.hparams.loss.get("nse_star") or [])
        if isinstance(self.net, FactorisedMMMAE):
            self.net.set_climatology(normalised_climatology(self._climatology, self.info.stats))
        if self._prior_target is not None:
            self._prior_trees = self._regression_trees(datamodule, RegressionPrior,
                                                self.hparams.net["forcing_series"])
            if not self._prior_trees.trees:
                raise DataError(f"model.net.series_priors: the regression prior needs valid "
                                 f"{self._prior_target} days in the training years of both "
                                 f"parities (even and odd), and the drawn training windows hold "
                                 f"none of one")

    def forward(self, batch: MaskedHydroBatch, decode: dict[str, torch.Tensor] | None = None
                ) -> dict[str, dict[str, torch.Tensor]]:
        """Reconstructions (normalised units); bf16 autocast on GPU. `decode`: the hidden grid
        tokens to predict (factorised; default every hidden one)."""
        if self._prior_target is not None:
            batch = self._with_regression_prior(batch)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.net(batch) if decode is None else self.net(batch, decode)

    def _with_regression_prior(self, batch: MaskedHydroBatch) -> MaskedHydroBatch:
        """`batch` with the `regression` prior of the cross-modal series (model units): the
        trees' prediction from the forcing its masks leave visible, cross-fitted in training."""
        if self._prior_trees is None:
            raise RuntimeError("the regression prior needs its trees: call use_data(datamodule) "
                               "first (Lightning's setup does)")
        s = self._prior_target
        pred = self._prior_trees.prior(batch, cross_fitted=self.training)  # (B, T) physical
        prior = normalise(pred, self.info.stats[s]).to(batch["series"][s].device)
        return {**batch, "regression_prior": {s: prior}}

    # ---- masks ----------------------------------------------------------------------------------
    def masked(self, batch: HydroBatch, stream: int) -> MaskedHydroBatch:
        """`batch` with the masks of `stream` (the epoch in training, -1 for fixed masks)."""
        return with_masks(batch, self.masking, self.hparams.seed, stream, self.info.n_valid_patches,
                          self.info.grid_names, self.info.series_names)

    # ---- training -----------------------------------------------------------------------------
    def _step(self, batch: MaskedHydroBatch, stage: str,
              decode: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        out = self(batch, decode)
        lw = self.hparams.loss
        parts = mmmae_loss(out, batch, lw.get("weights") or {}, bool(lw.get("norm_pix_loss")),
                           self._nse_star_series(batch), lw.get("variability") or {})
        loss = parts["loss"]
        b = batch["static"].shape[0]
        self.log(f"{stage}/loss", parts.pop("loss"), on_step=stage == "train", on_epoch=True,
                 prog_bar=True, batch_size=b)
        self.log_dict({f"{stage}/loss_{k}": v for k, v in parts.items()}, on_step=False,
                      on_epoch=True, batch_size=b)
        return loss

    def _nse_star_series(self, batch: HydroBatch) -> dict[str, tuple[dict, torch.Tensor]]:
        """{series scored by NSE*: (its stats, σ (B,) of each window's catchment)}."""
        if len(self._series_std) != len(self.hparams.loss.get("nse_star") or []):
            raise RuntimeError("model.loss.nse_star needs the training statistics: call "
                               "use_data(datamodule) first (Lightning's setup does)")
        c = batch["catchment"]
        return {s: (self.info.stats[s], std.to(c.device)[c]) for s, std in self._series_std.items()}

    def training_step(self, batch: HydroBatch, batch_idx: int) -> torch.Tensor:
        masked = self._hide_whole_series(self.masked(batch, self.current_epoch), batch_idx)
        return self._step(masked, "train", self._decode_subset(masked, self.current_epoch))

    def _decode_subset(self, batch: MaskedHydroBatch, stream: int) -> dict[str, torch.Tensor] | None:
        """The subset of hidden grid tokens to decode (`net.decode_fraction` < 1), keyed by
        (stream, catchment, start): stream = the epoch in training, -1 in validation (a fixed
        subset); None: all of them (the test decodes every hidden token)."""
        if self.decode_fraction >= 1.0 or not isinstance(self.net, FactorisedMMMAE):
            return None
        grids, _ = self.net.included(batch["present"])
        if not grids:
            return None
        start = batch["start"]
        noise = KeyedNoise(self.hparams.seed, torch.full_like(start, _DECODE_STREAM),
                           torch.full_like(start, stream), batch["catchment"], start)
        return decode_subset(noise, {g: batch["grid_mask"][g] for g in grids}, self.decode_fraction)

    def _hide_whole_series(self, batch: MaskedHydroBatch, batch_idx: int) -> MaskedHydroBatch:
        """With probability `hide_series`, one present series is hidden on every day of the
        batch (cross-modal training: it must come from the other modalities). The other series
        keep their masks (`hide_series_others=masked`), are shown on every day (`visible`: the
        series is simulated from complete forcings), or either with probability 1/2 (`mixed`);
        with `hide_series_grids=visible` the grids are shown on every day whenever the other
        series are (the `alone` test's condition). The draws are keyed by (epoch, batch, rank):
        reproducible on resume."""
        names = [s for s in self.net.series_names if bool(batch["present"][s].any())]
        if float(self.hparams.hide_series) <= 0 or not names:
            return batch
        keys = (_HIDE_SERIES_STREAM, self.current_epoch, batch_idx, self.global_rank)
        u = KeyedNoise(self.hparams.seed, *(torch.tensor([k]) for k in keys)).uniform((1, 2))[0]
        if float(u[0]) >= float(self.hparams.hide_series):
            return batch
        s = names[min(int(float(u[1]) * len(names)), len(names) - 1)]
        masks = dict(batch["series_mask"])
        others = self.hparams.hide_series_others
        if others == "mixed":
            coin = KeyedNoise(self.hparams.seed, *(torch.tensor([k]) for k in (
                _HIDE_OTHERS_STREAM, *keys[1:]))).uniform((1, 1))
            others = "visible" if float(coin) < 0.5 else "masked"
        grid_masks = batch["grid_mask"]
        if others == "visible":
            masks = {k: torch.zeros_like(m) for k, m in masks.items()}
            if self.hparams.hide_series_grids == "visible":
                grid_masks = {g: torch.zeros_like(m) for g, m in grid_masks.items()}
        masks[s] = torch.ones_like(batch["series_mask"][s])
        return {**batch, "grid_mask": grid_masks, "series_mask": masks}

    def validation_step(self, batch: HydroBatch, batch_idx: int) -> None:
        masked = self.masked(batch, -1)  # fixed per-window masks: comparable across epochs
        if self._calibrating:  # the calibration pass: series reconstructions only, no logging
            self._collect_calibration(masked)
            return
        decode = self._decode_subset(masked, -1)
        self._step(masked, "val", decode)
        self._log_baseline_losses(masked, decode)
        target = self.hparams.evaluation.get("cross_modal")
        if target is not None and bool(masked["present"][target].any()):
            self._log_cross_modal_loss(masked, target)

    def _log_cross_modal_loss(self, batch: MaskedHydroBatch, target: str) -> None:
        """`val/loss_<target>_all_hidden`: the loss of the cross-modal reconstruction (the series
        hidden on every day), beside `..._climatology`, the daily climatology's (its bar)."""
        x, valid = batch["series"][target], batch["series_valid"][target]
        b = x.shape[0]
        preds = {"": self._all_hidden(batch, target)}  # (B, T)
        if self._climatology is not None:
            preds["_climatology"] = self._series_climatology(batch, target)
        for suffix, pred in preds.items():
            mse = selected_mse(pred, x, valid)
            if mse is not None:
                self.log(f"val/loss_{target}_all_hidden{suffix}", mse, on_step=False,
                         on_epoch=True, batch_size=b)

    def _series_climatology(self, batch: HydroBatch, name: str) -> torch.Tensor:
        """(B, T) the daily climatology of series `name` on the batch's days, model units."""
        clim = self._climatology[name].to(batch["time"].device)  # (366, C) physical
        return normalise(clim[doy_index(batch["time"]), batch["catchment"][:, None]],
                         self.info.stats[name])

    def _all_hidden(self, batch: MaskedHydroBatch, target: str) -> torch.Tensor:
        """(B, T) reconstruction of the series `target` hidden on every day, the other
        modalities keeping their masks (the cross-modal test); grids are not decoded."""
        masks = {**batch["series_mask"], target: torch.ones_like(batch["series_mask"][target])}
        return self._predict_series({**batch, "series_mask": masks})["series"][target]

    def _predict_series(self, batch: MaskedHydroBatch) -> dict[str, Any]:
        """The forward pass with no grid token decoded (the factorised network; the joint one
        decodes them all): for tests that read only series reconstructions."""
        no_grids = ({g: torch.zeros_like(m) for g, m in batch["grid_mask"].items()}
                    if isinstance(self.net, FactorisedMMMAE) else None)
        return self(batch, no_grids)

    def _log_baseline_losses(self, batch: MaskedHydroBatch,
                             decode: dict[str, torch.Tensor] | None = None) -> None:
        """The bars the reconstruction must beat, in the units of `val/loss_<modality>`:
        `val/loss_<series>_interpolation` (linear interpolation across hidden days; windows with
        no visible valid day left out) and `val/loss_<grid>_neighbour_mean` (mean of the nearest
        visible patches on the same day; on the decoded hidden tokens, as the model's loss)."""
        b = batch["static"].shape[0]
        nse = self._nse_star_series(batch)  # series whose loss is NSE*: the bar in those units
        for s in self.net.series_names:
            if not bool(batch["present"][s].any()):
                continue
            x, valid, hidden = batch["series"][s], batch["series_valid"][s], batch["series_mask"][s]
            base = interpolate_days(x, valid & ~hidden).float()  # (B, T), NaN if none visible
            select = hidden & valid & base.isfinite()
            mse = nse_star(base, x, select, *nse[s]) if s in nse else selected_mse(base, x, select)
            if mse is not None:
                self.log(f"val/loss_{s}_interpolation", mse, on_step=False, on_epoch=True,
                         batch_size=b)
        info = self.info
        for g in self.net.grid_names:
            if not bool(batch["present"][g].any()):
                continue
            x, valid, hidden = batch["grids"][g], batch["grid_valid"][g], batch["grid_mask"][g]
            every = torch.arange(hidden.shape[-1], device=hidden.device).expand_as(hidden)
            near = grid_priors(["neighbour_mean"], x, valid, hidden, every, info.valid_patch_rows,
                               info.valid_patch_cols)[..., 0, :]  # (B, T, P, p²)
            scored = hidden if decode is None else decode[g]
            mse = selected_mse(near, x, scored[..., None] & valid)
            if mse is not None:
                self.log(f"val/loss_{g}_neighbour_mean", mse, on_step=False, on_epoch=True,
                         batch_size=b)

    # ---- calibration on validation ------------------------------------------------------------
    def _collect_calibration(self, batch: MaskedHydroBatch) -> None:
        out = self._predict_series(batch)["series"]
        keep = {}
        for s, pred in out.items():
            present = batch["present"][s][:, None]
            keep[s] = {"pred": pred.float().cpu(), "x": batch["series"][s].float().cpu(),
                       "valid": (batch["series_valid"][s] & present).cpu(),
                       "hidden": batch["series_mask"][s].cpu(), "catchment": batch["catchment"].cpu()}
            if s in self.series_stretch:
                keep[s]["clim"] = self._series_climatology(batch, s).cpu()
        if self._blends and self._trees is not None:
            keep["blend"] = self._blend_windows(batch)
        self._cal_collected.append(keep)

    @property
    def _blends(self) -> bool:
        return self.cross_modal_blend != "none"

    def _blend_windows(self, batch: MaskedHydroBatch) -> dict[str, torch.Tensor]:
        """The validation batch's cross-modal reconstructions of the cross_modal series (every
        day hidden) with the forcing masked and with it visible on every day (the two
        cross-modal tests), beside the trees' predictions of each: stacked (2, B, T) in
        `_BLEND_STATES` order; with the climatology when the series is stretched (`_fit_blend`
        stretches them as the test will)."""
        s = self.hparams.evaluation["cross_modal"]
        alone = infilling_batches(batch, s, [], self.hparams.seed)["alone"]
        hidden = torch.ones_like(batch["series_mask"][s])
        preds = [self._all_hidden(batch, s), self._predict_series(alone)["series"][s]]
        out = {"pred": torch.stack([p.float().cpu() for p in preds]),
               "trees": torch.stack([self._trees.predict(batch, visible=False),
                                     self._trees.predict(alone, visible=True)]),
               "x": batch["series"][s].float().cpu(),
               "valid": (batch["series_valid"][s] & batch["present"][s][:, None]).cpu(),
               "hidden": hidden.cpu(), "catchment": batch["catchment"].cpu()}
        if s in self.series_stretch:
            out["clim"] = self._series_climatology(batch, s).cpu()
        return out

    def _fit_calibration(self) -> None:
        """`cal_series_shrink` and `cal_series_stretch` from the collected validation windows
        (weights and factor 1 where a series has none), and `_cal_fold_shrink` /
        `_cal_fold_stretch`, the same fitted on the even and on the odd catchments."""
        weights = torch.ones(3, *self.cal_series_shrink.shape, dtype=torch.float64)  # all, even, odd
        factors = torch.ones(3, *self.cal_series_stretch.shape, dtype=torch.float64)
        shrink = self.series_shrink != "none"
        one_parity = []  # series whose validation catchments are all even or all odd
        fitted = []  # "<series>: …" for the log
        for i, s in enumerate(self.info.series_names):
            items = [c[s] for c in self._cal_collected if s in c]
            if not items:
                continue
            cat = {k: torch.cat([it[k] for it in items]) for k in items[0]}
            parity = cat["catchment"] % 2
            if parity.unique().numel() < 2:
                one_parity.append(s)
            for j, rows in enumerate((slice(None), parity == 0, parity == 1)):
                x = torch.nan_to_num(cat["x"][rows])
                fit = (cat["valid"][rows], cat["hidden"][rows], cat["catchment"][rows],
                       self.info.stats[s])
                if s in self.series_stretch:
                    factors[j, i], weights[j, i] = fit_stretch(
                        cat["pred"][rows], cat["clim"][rows], x, *fit, shrink=shrink,
                        above_only=self.series_stretch_side == "above",
                        with_visible_only=self.series_stretch_windows == "with_visible")
                elif shrink:
                    weights[j, i] = fit_shrinkage(cat["pred"][rows], x, *fit)
            parts = [f"stretch k {float(factors[0, i]):g}"] if s in self.series_stretch else []
            if shrink:
                parts.append("shrink weights " + ", ".join(f"{w:g}" for w in weights[0, i].tolist()))
            fitted.append(f"{s}: {'; '.join(parts)}")
        blend = self._fit_blend(factors)
        self.cal_series_shrink.copy_(weights[0])
        self.cal_series_stretch.copy_(factors[0])
        self.cal_cross_modal_blend.copy_(blend[0])
        self._cal_fold_shrink, self._cal_fold_stretch = weights[1:], factors[1:]
        self._cal_fold_blend = blend[1:]
        self._cal_one_parity = one_parity
        if self._blends:
            fitted.append("cross-modal blend with the trees " + ", ".join(
                f"{state} {float(w):g}" for state, w in zip(_BLEND_STATES, blend[0], strict=True)))
        log.info("calibrated on validation (shrink weights by days to the nearest visible day: "
                 "%s): %s", ", ".join(DISTANCE_LABELS), " | ".join(fitted) or "no series window")

    def _fit_blend(self, factors: torch.Tensor) -> torch.Tensor:
        """(3, 2) blend weights (all, even, odd catchments × `_BLEND_STATES`) fitted on the
        collected cross-modal windows, stretched by `factors` (3, S) of the same fold; 0 (the
        model) where there is nothing to fit."""
        blend = torch.zeros(3, len(_BLEND_STATES), dtype=torch.float64)
        items = [c["blend"] for c in self._cal_collected if "blend" in c]
        if not items:
            return blend
        s = self.hparams.evaluation["cross_modal"]
        i, stats = self.info.series_names.index(s), self.info.stats[s]
        cat = {k: torch.cat([it[k] for it in items], dim=1 if k in ("pred", "trees") else 0)
               for k in items[0]}
        parity = cat["catchment"] % 2
        for j, rows in enumerate((slice(None), parity == 0, parity == 1)):
            x, valid, hidden = torch.nan_to_num(cat["x"][rows]), cat["valid"][rows], cat["hidden"][rows]
            for state in range(len(_BLEND_STATES)):
                pred = cat["pred"][state][rows]
                if s in self.series_stretch:
                    pred = self._stretched(pred, cat["clim"][rows], hidden, valid,
                                           float(factors[j, i]))
                blend[j, state] = fit_blend(pred, cat["trees"][state][rows], x, valid, hidden,
                                            cat["catchment"][rows], stats)
        return blend

    def _stretched(self, pred: torch.Tensor, clim: torch.Tensor, hidden: torch.Tensor,
                   valid: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
        """`stretch_series` with this module's side and windows settings."""
        return stretch_series(pred, clim, hidden, k, self.series_stretch_side == "above",
                              valid if self.series_stretch_windows == "with_visible" else None)

    @property
    def _calibrates(self) -> bool:
        """Anything to fit on validation: the shrinkage, a stretch or the cross-modal blend."""
        return self.series_shrink != "none" or bool(self.series_stretch) or self._blends

    def needs_calibration(self, split: str) -> bool:
        """Also before `split=val`: its windows are scored with the weights of the other fold."""
        return not self.calibrated or (split == "val" and self._calibrates)

    def _calibrated_series(self, batch: MaskedHydroBatch, out: dict[str, Any]) -> dict[str, Any]:
        """`out` with its hidden series days stretched about the climatology (`series_stretch`)
        and pulled toward interpolation (`series_shrink`); on the validation windows
        (`test_split` "val") each window by the factor and weights fitted on the catchments of
        the other parity."""
        if not self._calibrates:
            return out
        if self.test_split == "val" and self._cal_fold_shrink is None:
            raise RuntimeError("split=val needs the calibration pass run in this process "
                               "(maelab.pipeline runs it: needs_calibration)")
        # (B,) on validation windows: the fold not holding the window
        other = 1 - batch["catchment"].cpu() % 2 if self.test_split == "val" else None
        series = {}
        for s, pred in out["series"].items():
            i = self.info.series_names.index(s)
            x, pred = torch.nan_to_num(batch["series"][s].float()), pred.float()
            valid, hidden = batch["series_valid"][s], batch["series_mask"][s]
            if s in self.series_stretch:
                k = (float(self.cal_series_stretch[i]) if other is None else
                     self._cal_fold_stretch[other, i].to(pred.device, pred.dtype)[:, None])  # (B, 1)
                pred = self._stretched(pred, self._series_climatology(batch, s), hidden, valid, k)
            if self.series_shrink != "none":
                weights = (self.cal_series_shrink[i] if other is None  # (bins,)
                           else self._cal_fold_shrink[other, i])  # (B, bins)
                pred = shrink_series(pred, x, valid, hidden, weights)
            if self._blends and s == self.hparams.evaluation["cross_modal"]:
                pred = self._blended(batch, pred, other)
            series[s] = pred
        return {**out, "series": series}

    def _blended(self, batch: MaskedHydroBatch, pred: torch.Tensor,
                 other: torch.Tensor | None) -> torch.Tensor:
        """`pred` (B, T) of the cross_modal series blended with the trees in windows with no
        visible valid day of it: by the weight of the window's forcing state (masked, or visible
        on every day), on validation windows the weight fitted on the other fold."""
        s = self.hparams.evaluation["cross_modal"]
        valid, hidden = batch["series_valid"][s], batch["series_mask"][s]
        windows = in_windows_without_visible(hidden, valid).any(1)  # (B,)
        if self._trees is _UNFITTED:
            raise RuntimeError("the cross-modal blend needs the regression baseline's trees: "
                               "calibrate or test first (on_test_epoch_start fits them)")
        if self._trees is None or not bool(windows.any()):
            return pred
        shown = forcing_shown(batch, self.hparams.evaluation["regression"])  # (B,)
        states = [v for v in (False, True) if bool((windows & (shown == v)).any())]
        trees = {v: self._trees.predict(batch, visible=v).to(pred.device) for v in states}
        trees = trees[states[0]] if len(states) == 1 else torch.where(
            shown.to(pred.device)[:, None], trees[True], trees[False])  # (B, T)
        state = shown.long().cpu()  # (B,) index into _BLEND_STATES
        w = (self.cal_cross_modal_blend.cpu()[state] if other is None
             else self._cal_fold_blend[other, state])  # (B,)
        return blend_series(pred, trees, hidden, valid, w[:, None], self.info.stats[s])

    # ---- test: reconstructions, baselines, metrics ----------------------------------------------
    def on_test_epoch_start(self) -> None:
        if not self.calibrated:
            raise RuntimeError("test before calibration: call calibrate(trainer, datamodule) "
                               "first (maelab.pipeline does)")
        if self.test_split == "val" and self._calibrates and self._cal_one_parity:
            rank_zero_warn(f"split=val: the validation windows of {', '.join(self._cal_one_parity)} "
                           "hold catchments of one parity only, so the other fold has none and "
                           "their series keep the model's own values (weights and stretch "
                           "factor of 1, not cross-fitted)")
        dm = self.trainer.datamodule
        self.use_data(dm)  # the climatology, when setup did not run
        ev = self.hparams.evaluation
        self._evaluation = TestEvaluation(self.info, ev, bool(self.hparams.loss.get("norm_pix_loss")),
                                          self._climatology, seed=self.hparams.seed,
                                          catchment_ids=getattr(dm, "catchment_ids", None),
                                          catchment_names=getattr(dm, "catchment_names", None),
                                          regression=self._regression_baseline(dm))

    def _regression_baseline(self, dm: L.LightningDataModule) -> ForcingRegression | None:
        """The regression baseline of `evaluation.regression` (None when off), fitted once on
        `evaluation.regression_windows` training windows with their training masks (for the
        cross-modal blend's calibration, then the test)."""
        if self._trees is _UNFITTED:
            self._trees = self._fit_regression(dm)
        return self._trees

    def _fit_regression(self, dm: L.LightningDataModule) -> ForcingRegression | None:
        ev = self.hparams.evaluation
        forcing, target = list(ev.get("regression") or []), ev.get("cross_modal")
        if not forcing or target not in self.info.series_names:
            return None
        model = self._regression_trees(dm, ForcingRegression, forcing)
        if not model.trees:
            rank_zero_warn(f"model.evaluation.regression: the drawn training windows hold no "
                           f"valid {target} day, so the regression baseline is left out"
                           + (" and the cross-modal blend keeps the model" if self._blends else ""))
            return None
        return model

    def _regression_trees(self, dm: L.LightningDataModule, kind: type[ForcingRegression],
                          forcing: list[str]) -> ForcingRegression:
        """Trees of `kind` predicting the cross_modal series from `forcing`, fitted on
        `evaluation.regression_windows` training windows drawn by the seed, with their training
        masks (chunk i gets those of training stream i, as epoch i would)."""
        ev = self.hparams.evaluation
        target, seed = ev["cross_modal"], int(self.hparams.seed)
        std = self._series_std.get(target)  # held already when the target is scored by NSE*
        if std is None:
            std = catchment_std(dm.store, dm.splits["train"], [target])[target]
        model = kind(target, forcing, self.info.stats, self._climatology[target], std, seed=seed,
                     patch_rows=self.info.valid_patch_rows, patch_cols=self.info.valid_patch_cols)
        return model.fit(training_batches(dm.datasets["train"], dm.collate(),
                                          int(ev.get("regression_windows", 4000)), seed,
                                          lambda b, i: self.masked(b, i)))

    def test_step(self, batch: HydroBatch, batch_idx: int) -> None:
        self._evaluation.add_batch(self.masked(batch, -1),
                                   lambda b: self._calibrated_series(b, self._predict(b)),
                                   lambda b: self._calibrated_series(b, self._predict_series(b)))

    def _predict(self, batch: MaskedHydroBatch) -> dict[str, dict[str, torch.Tensor]]:
        """Reconstructions of every hidden token, grids on all valid patches (B, T, P, p²)."""
        return expand_grids(self(batch), self.info.n_valid_patches)

    def on_test_epoch_end(self) -> None:
        ev, lw = self.hparams.evaluation, self.hparams.loss
        norm_pix = bool(lw.get("norm_pix_loss"))
        net = self.hparams.net
        settings = {"attention": net.get("attention", "factorised"),
                    "temporal_patch": getattr(self.net, "k", 1),
                    "grid_priors": list(net.get("grid_priors", [])),
                    "series_priors": list(net.get("series_priors", [])),
                    "masking": dict(self.hparams.masking),
                    "norm_pix_loss": norm_pix,
                    "grid_reconstruction": ("de-normalised with the hidden patches' own mean/std "
                                            "(oracle, norm_pix_loss)") if norm_pix else "direct",
                    "climatology_window": int(ev["climatology_window"]),
                    "cross_modal": ev.get("cross_modal"),
                    "series_shrink": self.series_shrink,
                    "series_shrink_weights": None,
                    "series_stretch": list(self.series_stretch),
                    "series_stretch_side": self.series_stretch_side,
                    "series_stretch_windows": self.series_stretch_windows,
                    "cross_modal_blend": self.cross_modal_blend}
        tested = [s for s in self.info.series_names if s in self._evaluation.series]

        def listed(weights: torch.Tensor) -> dict[str, Any]:  # (S, bins) → the tested series'
            return {"distance_bins_days": list(DISTANCE_LABELS), **{
                s: [round(w, 4) for w in weights[self.info.series_names.index(s)].tolist()]
                for s in tested}}

        if self.series_shrink != "none" and tested:  # the weights of the series tested
            settings["series_shrink_weights"] = listed(self.cal_series_shrink)
            if self.test_split == "val":  # what the rows used instead: out of sample
                settings["series_shrink_validation"] = {
                    "rule": "cross-fitted by catchment: a window of an odd catchment is shrunk by "
                            "the weights fitted on the even ones, and the reverse",
                    "fitted_on_even": listed(self._cal_fold_shrink[0]),
                    "fitted_on_odd": listed(self._cal_fold_shrink[1]),
                    "not_cross_fitted": [s for s in tested if s in self._cal_one_parity]}
        stretched = [s for s in tested if s in self.series_stretch]
        if stretched:  # the factors of the series tested (on split=val: of each fold)
            folds = ({"fitted_on_even": self._cal_fold_stretch[0],
                      "fitted_on_odd": self._cal_fold_stretch[1]}
                     if self.test_split == "val" else {"fitted": self.cal_series_stretch})
            settings["series_stretch_factors"] = {
                fold: {s: round(float(k[self.info.series_names.index(s)]), 4) for s in stretched}
                for fold, k in folds.items()}
        if self._blends and self.hparams.evaluation["cross_modal"] in tested:
            folds = ({"fitted_on_even": self._cal_fold_blend[0],
                      "fitted_on_odd": self._cal_fold_blend[1]}
                     if self.test_split == "val" else {"fitted": self.cal_cross_modal_blend})
            settings["cross_modal_blend_weights"] = {
                fold: dict(zip(_BLEND_STATES, (round(float(v), 4) for v in w), strict=True))
                for fold, w in folds.items()}
        self._results = self._evaluation.results(settings)
        self._evaluation = None

    # ---- pipeline interface (maelab.lit.base) -------------------------------------------------
    @property
    def calibrated(self) -> bool:
        """Ready to test: nothing to fit, or the shrinkage weights, stretch factors and blend
        weights fitted."""
        shrunk = self.series_shrink == "none" or bool(self.cal_series_shrink.isfinite().all())
        stretched = not self.series_stretch or bool(self.cal_series_stretch.isfinite().all())
        blended = not self._blends or bool(self.cal_cross_modal_blend.isfinite().all())
        return shrunk and stretched and blended

    def calibrate(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """One pass over the validation windows (their fixed masks) that fits `cal_series_shrink`,
        `cal_series_stretch` and `cal_cross_modal_blend` (the trees fitted first)."""
        if not self._calibrates:
            return
        if self._blends:
            self.use_data(datamodule)  # the climatology the trees read
            self._regression_baseline(datamodule)
        self._cal_collected = []
        try:
            self.calibration_pass(trainer, datamodule)
            self._fit_calibration()
        finally:
            self._cal_collected = []

    def calibration_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("cal_")}

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """A checkpoint from before the calibration buffer loads it unfitted (NaN): it is
        calibrated on validation when tested."""
        for name in ("cal_series_shrink", "cal_series_stretch", "cal_cross_modal_blend"):
            state_dict.setdefault(prefix + name, torch.full_like(getattr(self, name), float("nan")))
        super()._load_from_state_dict(state_dict, prefix, *args)

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
