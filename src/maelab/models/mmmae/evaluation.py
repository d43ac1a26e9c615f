"""MM-MAE test-period evaluation: reconstructions beside baselines, per modality and catchment.

Per modality RMSE / MAE in physical units on hidden valid positions, for the model and the
baselines (daily climatology of the training period; linear interpolation across hidden days for
series, spatial mean of the visible neighbouring patches for grids); NSE / KGE per catchment on
the hidden days of each series (all windows of a catchment pooled), as median and distribution;
and a cross-modal test that hides one series (riverflow) on every day and reconstructs it from the
other modalities. `MMMAEModule` feeds `TestEvaluation` batch by batch (single process).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from maelab.data.contracts import HydroInfo
from maelab.data.hydro.store import PreparedStore
from maelab.models.mmmae.loss import patch_stats
from maelab.models.mmmae.masking import MaskedHydroBatch
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

MODEL = "mmmae"  # the model's rows in the results table
SERIES_BASELINES = ("climatology", "interpolation", "interpolation_log")


def climatologies(store: PreparedStore, train: tuple[np.datetime64, np.datetime64],
                  window: int) -> dict[str, torch.Tensor]:
    """Daily climatology of the training period per modality: grids (366, P, p²), series (366, C)."""
    lo, hi = (store.day_index(d) for d in train)
    epoch_day = int((store.start_day - np.datetime64("1970-01-01", "D")).astype(np.int64))
    doy = day_of_year(np.arange(lo, hi + 1) + epoch_day)
    clim = {g: daily_climatology(a[lo:hi + 1], doy, window) for g, a in store.grids.items()}
    clim |= {s: daily_climatology(a[:, lo:hi + 1].T, doy, window) for s, a in store.series.items()}
    return {k: torch.from_numpy(v) for k, v in clim.items()}


class TestEvaluation:
    """Collects one test epoch and turns it into the results table (`results`)."""

    def __init__(self, info: HydroInfo, evaluation: Mapping[str, Any], norm_pix_loss: bool,
                 clim: dict[str, torch.Tensor]) -> None:
        self.info, self.evaluation, self.norm_pix_loss, self.clim = info, evaluation, norm_pix_loss, clim
        self.errors: dict[tuple[str, str], ErrorSums] = defaultdict(ErrorSums)
        self.series: dict[str, list[dict[str, torch.Tensor]]] = defaultdict(list)
        self.example: dict[str, Any] | None = None

    def _phys(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return denormalise(x, self.info.stats[name])

    def add(self, batch: MaskedHydroBatch, out: Mapping[str, Any],
            all_hidden: torch.Tensor | None = None) -> None:
        """One batch: the model's output `out` (normalised units) and, for the cross-modal test,
        its reconstruction (B, T) of the `cross_modal` series hidden on every day."""
        info, clim, errors = self.info, self.clim, self.errors
        doy = torch.from_numpy(day_of_year(batch["time"].cpu()))  # (B, T)
        example: dict[str, Any] = {"grids": {}, "time": batch["time"][0].cpu().numpy()}
        for g, pred in out["grids"].items():
            x, valid = batch["grids"][g], batch["grid_valid"][g]  # (B, T, P, p²) normalised
            hidden = out["grid_hidden"][g]  # (B, T, P)
            if self.norm_pix_loss:  # oracle patch stats of the hidden truth
                mean, std = patch_stats(x, valid)
                pred = pred.float() * std + mean
            true, pred = self._phys(g, x).cpu(), self._phys(g, pred).cpu()
            hidden, valid = hidden.cpu(), valid.cpu()
            select = hidden[..., None] & valid
            seen = valid & ~hidden[..., None]  # visible valid cells
            means = torch.where(seen, true, 0.0).sum(-1) / seen.sum(-1).clamp_min(1)  # (B, T, P)
            near = neighbour_mean(means, seen.any(-1), info.valid_patch_rows,
                                  info.valid_patch_cols)[..., None]
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
            if info.stats[s]["log"]:  # also linear in log1p space
                log_interp = interpolate_days(batch["series"][s].cpu(), known)
                item["interpolation_log"] = self._phys(s, log_interp)
            for method in (m for m in SERIES_BASELINES if m.startswith("interp") and m in item):
                item[method] = torch.where(item[method].isnan(), c, item[method])  # none visible
            for method in (m for m in (MODEL, *SERIES_BASELINES) if m in item):
                errors[(s, method)].add(item[method], true, item["select"])
            self.series[s].append(item)
        target = self.evaluation.get("cross_modal")
        if all_hidden is not None:
            self.series[f"{target}:all_hidden"].append(
                {**self.series[target][-1], MODEL: self._phys(target, all_hidden).cpu(),
                 "select": batch["series_valid"][target].cpu(),
                 "hidden": torch.ones_like(batch["series_valid"][target]).cpu()})
        if self.example is None:
            self.example = example

    def results(self, settings: dict[str, Any]) -> dict[str, Any]:
        """{"summary": {"test": rows, "distributions", "settings"}, "series": collected windows
        per series (numpy), "example": the first window's grids}."""
        rows: dict[str, dict[str, float]] = {}
        dists: dict[str, dict[str, Any]] = {}
        for (name, method), acc in self.errors.items():
            rows[row_key(name, method)] = acc.result()
        series: dict[str, dict[str, np.ndarray]] = {}
        for key, items in self.series.items():
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
        summary = {"test": rows, "distributions": dists, "settings": settings}
        return {"summary": summary, "series": series, "example": self.example}
