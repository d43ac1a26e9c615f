"""LightningModule wiring MM-MAE to its loss, optimiser, logging and test-period evaluation.

Evaluation (test split, fixed masks): per modality RMSE / MAE in physical units on hidden valid
positions, for the model and the baselines (daily climatology of the training period; linear
interpolation across hidden days for series, spatial mean of the visible neighbouring patches for
grids); NSE / KGE per catchment on the hidden days of each series (all windows of a catchment
pooled), as median and distribution; and a cross-modal test that hides one series (riverflow)
on every day and reconstructs it from the other modalities. Single-process evaluation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from maelab.core.errors import ConfigError
from maelab.lit.optim import adamw_warmup_cosine, effective_lr
from maelab.models.mmmae.loss import masked_mse, mmmae_loss, patch_stats
from maelab.models.mmmae.model import MMMAE
from maelab.scoring.hydro_metrics import (
    ErrorSums,
    daily_climatology,
    day_of_year,
    denormalise,
    distribution,
    interpolate_days,
    neighbour_mean,
    per_group_scores,
    row_key,
)

MODEL = "mmmae"
SERIES_BASELINES = ("climatology", "interpolation", "interpolation_log")
GRID_BASELINES = ("climatology", "neighbour_mean")


class MMMAEModule(L.LightningModule):
    """Trains MM-MAE on HydroDataModule batches; tests reconstructions beside baselines."""

    model_name = MODEL

    def __init__(
        self, net: dict, loss: dict, optim: dict, evaluation: dict, masking: dict, data_info: dict,
        hide_series: float = 0.0, seed: int = 0, run_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        names = [*data_info["grid_names"], *data_info["series_names"]]
        for key in loss.get("weights") or {}:
            if key not in names:
                raise ConfigError(f"model.loss.weights.{key}", loss["weights"][key],
                                  f"weights keyed by modality: {', '.join(names)}")
        target = evaluation.get("cross_modal")
        if target is not None and target not in data_info["series_names"]:
            raise ConfigError("model.evaluation.cross_modal", target,
                              f"null or a series: {', '.join(data_info['series_names'])}")
        self.net = MMMAE(
            grid_names=data_info["grid_names"], series_names=data_info["series_names"],
            seq_len=data_info["seq_len"], patch_size=data_info["patch_size"],
            patch_rows=data_info["valid_patch_rows"], patch_cols=data_info["valid_patch_cols"],
            patch_grid_shape=data_info["patch_grid_shape"], n_static=data_info["n_static"], **net,
        )
        self.calibrate_on_validation = False  # nothing to calibrate (pipeline interface)
        self.test_outputs: dict[str, Any] = {}
        self._test: dict[str, Any] = {}

    @property
    def calibrated(self) -> bool:
        """MM-MAE has no validation calibration: always ready to test."""
        return True

    def forward(self, batch: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Reconstructions (normalised units); bf16 autocast on GPU."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.net(batch)

    # ---- training -----------------------------------------------------------------------------
    def _step(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        out = self(batch)
        lw = self.hparams.loss
        parts = mmmae_loss(out, batch, lw.get("weights") or {}, bool(lw.get("norm_pix_loss")))
        loss = parts["loss"]
        if stage == "train" and not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at epoch {self.current_epoch}; "
                "the last good checkpoint is kept in checkpoints/last.ckpt")
        b = batch["static"].shape[0]
        self.log(f"{stage}/loss", parts.pop("loss"), on_step=stage == "train", on_epoch=True,
                 prog_bar=True, batch_size=b)
        self.log_dict({f"{stage}/loss_{k}": v for k, v in parts.items()}, on_step=False,
                      on_epoch=True, batch_size=b)
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(self._hide_whole_series(batch, batch_idx), "train")

    def _hide_whole_series(self, batch: Mapping[str, Any], batch_idx: int) -> Mapping[str, Any]:
        """With probability `hide_series`, one present series is hidden on every day of the
        batch (cross-modal training: it must come from the other modalities)."""
        names = [s for s in self.net.series_names if bool(batch["present"][s].any())]
        if float(self.hparams.hide_series) <= 0 or not names:
            return batch
        seed = hash((self.hparams.seed, self.current_epoch, batch_idx, self.global_rank)) % 2**63
        g = torch.Generator().manual_seed(seed)  # reproducible on resume
        if float(torch.rand((), generator=g)) >= float(self.hparams.hide_series):
            return batch
        s = names[int(torch.randint(len(names), (), generator=g))]
        masks = {**batch["series_mask"], s: torch.ones_like(batch["series_mask"][s])}
        return {**batch, "series_mask": masks}

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")  # fixed per-sample masks: comparable across epochs
        self._log_interpolation_loss(batch)

    def _log_interpolation_loss(self, batch: Mapping[str, Any]) -> None:
        """`val/loss_<series>_interpolation`: the loss of linear interpolation across hidden days
        (normalised units, as `val/loss_<series>`), the bar the series reconstruction must beat.
        Windows where a series has no visible valid day are left out."""
        b = batch["static"].shape[0]
        for s in self.net.series_names:
            if not bool(batch["present"][s].any()):
                continue
            x, valid, hidden = batch["series"][s], batch["series_valid"][s], batch["series_mask"][s]
            base = interpolate_days(x, valid & ~hidden).float()  # (B, T), NaN if none visible
            mse = masked_mse(base, x, hidden & valid & base.isfinite())
            if mse is not None:
                self.log(f"val/loss_{s}_interpolation", mse, on_step=False, on_epoch=True,
                         batch_size=b)

    def configure_optimizers(self) -> dict:
        """AdamW (MAE betas), lr scaled by the effective batch, linear warm-up + cosine decay."""
        o, t = self.hparams.optim, self.trainer
        lr = effective_lr(o["lr"], self.hparams.data_info["batch_size"], t.world_size,
                          t.accumulate_grad_batches, o.get("base_batch_size"))
        return adamw_warmup_cosine(self.net, int(t.estimated_stepping_batches), lr,
                                   o["weight_decay"], tuple(o["betas"]), o["warmup_fraction"])

    # ---- test: reconstructions, baselines, metrics ----------------------------------------------
    def on_test_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        store, window = dm.store, int(self.hparams.evaluation["climatology_window"])
        lo, hi = (store.day_index(d) for d in dm.splits["train"])
        epoch_day = int((store.start_day - np.datetime64("1970-01-01", "D")).astype(np.int64))
        doy = day_of_year(np.arange(lo, hi + 1) + epoch_day)
        clim = {g: daily_climatology(a[lo:hi + 1], doy, window) for g, a in store.grids.items()}
        clim |= {s: daily_climatology(a[:, lo:hi + 1].T, doy, window)  # (366, C)
                 for s, a in store.series.items()}
        self._test = {"clim": {k: torch.from_numpy(v) for k, v in clim.items()},
                      "errors": defaultdict(ErrorSums), "series": defaultdict(list),
                      "example": None}

    def _phys(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return denormalise(x, self.hparams.data_info["stats"][name])

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        info, ev = self.hparams.data_info, self.hparams.evaluation
        out = self(batch)
        doy = torch.from_numpy(day_of_year(batch["time"].cpu()))  # (B, T)
        clim, errors = self._test["clim"], self._test["errors"]
        example: dict[str, Any] = {"grids": {}, "time": batch["time"][0].cpu().numpy()}
        for g, pred in out["grids"].items():
            x, valid = batch["grids"][g], batch["grid_valid"][g]  # (B, T, P, p²) normalised
            hidden = out["grid_hidden"][g]  # (B, T, P)
            if self.hparams.loss.get("norm_pix_loss"):  # oracle patch stats of the hidden truth
                mean, std = patch_stats(x, valid)
                pred = pred.float() * std + mean
            true, pred = self._phys(g, x).cpu(), self._phys(g, pred).cpu()
            hidden, valid = hidden.cpu(), valid.cpu()
            select = hidden[..., None] & valid
            seen = valid & ~hidden[..., None]  # visible valid cells
            means = torch.where(seen, true, 0.0).sum(-1) / seen.sum(-1).clamp_min(1)  # (B, T, P)
            near = neighbour_mean(means, seen.any(-1), info["valid_patch_rows"],
                                  info["valid_patch_cols"])[..., None]
            for method, p in ((MODEL, pred), ("climatology", clim[g][doy]), ("neighbour_mean", near)):
                errors[(g, method)].add(p, true, select)
            example["grids"][g] = {"true": true[0].float().numpy(), "pred": pred[0].float().numpy(),
                                   "hidden": hidden[0].numpy()}
        catchment = batch["catchment"].cpu()
        for s, pred in out["series"].items():
            true, valid = self._phys(s, batch["series"][s]).cpu(), batch["series_valid"][s].cpu()
            hidden = out["series_hidden"][s].cpu()
            c = clim[s][doy, catchment[:, None]]  # (B, T)
            known = valid & ~hidden
            item = {"true": true, MODEL: self._phys(s, pred).cpu(), "climatology": c,
                    "interpolation": interpolate_days(true, known),
                    "select": hidden & valid, "hidden": hidden, "catchment": catchment,
                    "time": batch["time"].cpu()}
            if self.hparams.data_info["stats"][s]["log"]:  # also linear in log1p space
                log_interp = interpolate_days(batch["series"][s].cpu(), known)
                item["interpolation_log"] = self._phys(s, log_interp)
            for method in (m for m in SERIES_BASELINES if m.startswith("interp") and m in item):
                item[method] = torch.where(item[method].isnan(), c, item[method])  # none visible
            for method in (m for m in (MODEL, *SERIES_BASELINES) if m in item):
                errors[(s, method)].add(item[method], true, item["select"])
            self._test["series"][s].append(item)
        target = ev.get("cross_modal")
        if target in out["series"]:
            masks = {**batch["series_mask"], target: torch.ones_like(batch["series_mask"][target])}
            pred = self._phys(target, self({**batch, "series_mask": masks})["series"][target]).cpu()
            self._test["series"][f"{target}:all_hidden"].append(
                {**self._test["series"][target][-1], MODEL: pred,
                 "select": batch["series_valid"][target].cpu(),
                 "hidden": torch.ones_like(batch["series_valid"][target]).cpu()})
        if self._test["example"] is None:
            self._test["example"] = example

    def on_test_epoch_end(self) -> None:
        rows: dict[str, dict[str, float]] = {}
        dists: dict[str, dict[str, Any]] = {}
        for (name, method), acc in self._test["errors"].items():
            rows[row_key(name, method)] = acc.result()
        series: dict[str, dict[str, np.ndarray]] = {}
        for key, items in self._test["series"].items():
            data = {k: torch.cat([it[k] for it in items]).numpy() for k in items[0]}
            series[key] = data
            for method in (m for m in (MODEL, *SERIES_BASELINES) if m in data):
                if key.endswith(":all_hidden") and method.startswith("interpolation"):
                    continue  # nothing visible to interpolate from
                sc = per_group_scores(data[method], data["true"], data["select"], data["catchment"])
                row = row_key(key.replace(":all_hidden", " (all days hidden)"), method)
                if key.endswith(":all_hidden"):
                    acc = ErrorSums()
                    acc.add(torch.from_numpy(data[method]), torch.from_numpy(data["true"]),
                            torch.from_numpy(data["select"]))
                    rows[row] = acc.result()
                nse, kge = distribution(sc["nse"]), distribution(sc["kge"])
                rows[row] |= {"nse_median": nse["median"], "kge_median": kge["median"]}
                dists[row] = {"nse": nse, "kge": kge,
                              "per_catchment": {k: v.tolist() for k, v in sc.items()}}
        ev = self.hparams.evaluation
        summary = {
            "test": rows, "distributions": dists,
            "settings": {"temporal_patch": self.net.k, "masking": dict(self.hparams.masking),
                         "norm_pix_loss": bool(self.hparams.loss.get("norm_pix_loss")),
                         "grid_reconstruction": ("de-normalised with the hidden patches' own "
                                                 "mean/std (oracle, norm_pix_loss)")
                         if self.hparams.loss.get("norm_pix_loss") else "direct",
                         "climatology_window": int(ev["climatology_window"]),
                         "cross_modal": ev.get("cross_modal")},
        }
        self.test_outputs = {"summary": summary, "series": series, "example": self._test["example"]}
        self._test = {}

    def write_figures(self, dm: L.LightningDataModule, out_dir: str | Path) -> dict:
        """Maps (truth, visible input, reconstruction) per grid and a riverflow hydrograph."""
        from maelab.models.mmmae.figures import write_figures

        ev = self.hparams.evaluation
        return write_figures(self.test_outputs, dm.layout, Path(out_dir), day=ev.get("figure_day"),
                             series=ev.get("cross_modal") or "riverflow")
