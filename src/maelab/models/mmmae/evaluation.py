"""MM-MAE test-period evaluation: reconstructions beside baselines, per modality and catchment.

Per modality RMSE / MAE in physical units on hidden valid positions, for the model and the
baselines (daily climatology of the training period; linear interpolation across hidden days for
series, spatial mean of the visible neighbouring patches for grids); per catchment on the hidden
days of each series (all windows of a catchment pooled) the flow scores of
`maelab.scoring.hydro_metrics.FLOW_SCORES` (NSE, KGE and its r / α / β, log-NSE, FHV, FLV), as
medians and distributions, and a per-catchment table (`catchment_rows`, written as CSV).

Tests, for the `cross_modal` series (riverflow) when it is present:
- cross-modal: hidden on every day, the other modalities keep their test masks;
- infilling (`infilling`), everything else visible (full forcings): hidden alone on every day
  (`alone`), and one gap of each length of `gap_days` at a fixed random place per window
  (`gap<L>`; interpolation baselines across the gap).
With `regression` (forcing series), these tests also get the `regression` baseline: gradient-
boosted trees on the window's visible forcing (`maelab.models.mmmae.regression`).
Only the tests that ran are recorded. `MMMAEModule` feeds `TestEvaluation` batch by batch
(single process).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from maelab.core.io import atomic_write_text
from maelab.data.contracts import HydroInfo
from maelab.data.hydro.store import PreparedStore
from maelab.models.mmmae.loss import patch_stats
from maelab.models.mmmae.masking import MaskedHydroBatch, gap_mask, window_noise
from maelab.models.mmmae.regression import ForcingRegression
from maelab.scoring.hydro_metrics import (
    FLOW_SCORES,
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
SERIES_BASELINES = ("climatology", "interpolation", "interpolation_log", "regression")
_GAP_STREAM = -100  # keys a gap's place apart from the masks' streams: stream −100 − length


def climatologies(store: PreparedStore, train: tuple[np.datetime64, np.datetime64],
                  window: int) -> dict[str, torch.Tensor]:
    """Daily climatology of the training period per modality: grids (366, P, p²), series (366, C)."""
    lo, hi = (store.day_index(d) for d in train)
    epoch_day = int((store.start_day - np.datetime64("1970-01-01", "D")).astype(np.int64))
    doy = day_of_year(np.arange(lo, hi + 1) + epoch_day)
    clim = {g: daily_climatology(a[lo:hi + 1], doy, window) for g, a in store.grids.items()}
    clim |= {s: daily_climatology(a[:, lo:hi + 1].T, doy, window) for s, a in store.series.items()}
    return {k: torch.from_numpy(v) for k, v in clim.items()}


def catchment_std(store: PreparedStore, train: tuple[np.datetime64, np.datetime64],
                  names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Standard deviation of each catchment's series `names` over the training period, physical
    units: {series: (C,)} (0 where a catchment has fewer than two valid days)."""
    lo, hi = (store.day_index(d) for d in train)
    out = {}
    for s in names:
        a = np.asarray(store.series[s][:, lo:hi + 1], dtype=np.float64)  # (C, days)
        enough = np.isfinite(a).sum(1) > 1
        std = np.zeros(len(a))
        std[enough] = np.nanstd(a[enough], axis=1)
        out[s] = torch.from_numpy(std)
    return out


def test_name(key: str) -> str:
    """Row prefix of a collected series key: `riverflow`, `riverflow:all_hidden` → `riverflow
    (all days hidden)`, `…:alone` → `(alone, all days hidden)`, `…:gap7` → `(alone, 7-day gap)`."""
    series, _, test = key.partition(":")
    if not test:
        return series
    if test == "all_hidden":
        return f"{series} (all days hidden)"
    if test == "alone":
        return f"{series} (alone, all days hidden)"
    return f"{series} (alone, {test.removeprefix('gap')}-day gap)"


def infilling_batches(batch: MaskedHydroBatch, target: str, gap_days: Sequence[int], seed: int
                      ) -> dict[str, MaskedHydroBatch]:
    """The infilling tests of `target`: every grid and other series visible, `target` hidden on
    every day (`alone`) or in one gap of each length shorter than the window (`gap<L>`, place
    keyed per window)."""
    visible = {g: torch.zeros_like(m) for g, m in batch["grid_mask"].items()}
    none = {s: torch.zeros_like(m) for s, m in batch["series_mask"].items()}
    t = batch["time"].shape[1]
    out = {"alone": {**batch, "grid_mask": visible,
                     "series_mask": {**none, target: torch.ones_like(none[target])}}}
    for gap in (g for g in gap_days if int(g) < t):  # a gap must leave visible days
        hidden = gap_mask(window_noise(seed, batch, _GAP_STREAM - int(gap)), 1, t, int(gap))[:, 0]
        out[f"gap{int(gap)}"] = {**batch, "grid_mask": visible,
                                 "series_mask": {**none, target: hidden}}
    return out


class TestEvaluation:
    """Collects one test epoch and turns it into the results table (`results`)."""

    def __init__(self, info: HydroInfo, evaluation: Mapping[str, Any], norm_pix_loss: bool,
                 clim: dict[str, torch.Tensor], seed: int = 0,
                 catchment_ids: Sequence[str] | None = None,
                 catchment_names: Sequence[str] | None = None,
                 regression: ForcingRegression | None = None) -> None:
        self.info, self.evaluation, self.norm_pix_loss, self.clim = info, evaluation, norm_pix_loss, clim
        self.regression = regression  # fitted; rows `regression` of the cross-modal tests
        self.seed = int(seed)
        self.catchment_ids = list(catchment_ids or [])
        self.catchment_names = list(catchment_names or [])
        self.errors: dict[tuple[str, str], ErrorSums] = defaultdict(ErrorSums)
        self.series: dict[str, list[dict[str, torch.Tensor]]] = defaultdict(list)
        self.example: dict[str, Any] | None = None

    def _phys(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return denormalise(x, self.info.stats[name])

    def add_batch(self, batch: MaskedHydroBatch,
                  model: Callable[[MaskedHydroBatch], Mapping[str, Any]],
                  series_model: Callable[[MaskedHydroBatch], Mapping[str, Any]] | None = None,
                  ) -> None:
        """Run `model` on the batch (its test masks) and on every test of the `cross_modal`
        series that applies, and collect the results. Those tests read only the series, so they
        run `series_model` (the same network, grids not decoded) when given, else `model`."""
        out = model(batch)
        target = self.evaluation.get("cross_modal")
        if target not in out["series"]:
            self.add(batch, out)
            return
        model = series_model or model
        masks = {**batch["series_mask"], target: torch.ones_like(batch["series_mask"][target])}
        self.add(batch, out, model({**batch, "series_mask": masks})["series"][target])
        if self.evaluation.get("infilling", True):
            tests = infilling_batches(batch, target, self.evaluation.get("gap_days") or [],
                                      self.seed)
            # the forcing is shown on every day in each of these tests: one prediction for all
            shown = self._regression(batch, target, visible=True)
            for test, masked in tests.items():
                pred = model(masked)["series"][target]
                self._collect(f"{target}:{test}", target, masked, pred,
                              masked["series_mask"][target], interpolate=test != "alone",
                              regression=shown)

    def _regression(self, batch: MaskedHydroBatch, s: str, visible: bool) -> torch.Tensor | None:
        """The regression baseline's (B, T) prediction of series `s` (None when it has none)."""
        if self.regression is None or self.regression.target != s:
            return None
        return self.regression.predict(batch, visible=visible)

    def _collect(self, key: str, s: str, batch: MaskedHydroBatch, pred: torch.Tensor,
                 hidden: torch.Tensor, interpolate: bool,
                 regression: torch.Tensor | None = None) -> None:
        """Keep the (B, T) truth, the model's and the baselines' values (physical units) of
        series `s` under `key`; interpolation only where visible days are to be had; the
        regression baseline's `regression` (B, T) when given."""
        doy = torch.from_numpy(day_of_year(batch["time"].cpu()))  # (B, T)
        catchment = batch["catchment"].cpu()
        true, valid = self._phys(s, batch["series"][s]).cpu(), batch["series_valid"][s].cpu()
        hidden = hidden.cpu()
        c = self.clim[s][doy, catchment[:, None]]  # (B, T)
        item = {"true": true, MODEL: self._phys(s, pred).cpu(), "climatology": c,
                "select": hidden & valid, "hidden": hidden, "catchment": catchment,
                "time": batch["time"].cpu()}
        if regression is not None:
            item["regression"] = regression
        if interpolate:
            known = valid & ~hidden
            item["interpolation"] = interpolate_days(true, known)
            if self.info.stats[s]["log"]:  # also linear in log1p space
                item["interpolation_log"] = self._phys(
                    s, interpolate_days(batch["series"][s].cpu(), known))
            for method in ("interpolation", "interpolation_log"):
                if method in item:  # none visible: climatology
                    item[method] = torch.where(item[method].isnan(), c, item[method])
        self.series[key].append(item)

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
        for s, pred in out["series"].items():
            self._collect(s, s, batch, pred, out["series_hidden"][s], interpolate=True)
        target = self.evaluation.get("cross_modal")
        if all_hidden is not None:
            self._collect(f"{target}:all_hidden", target, batch, all_hidden,
                          torch.ones_like(batch["series_valid"][target]), interpolate=False,
                          regression=self._regression(batch, target, visible=False))
        if self.example is None:
            self.example = example

    def _catchment(self, index: int) -> tuple[str, str]:
        """(gauge id, gauge name) of catchment `index` (its index when ids are unknown)."""
        cid = self.catchment_ids[index] if index < len(self.catchment_ids) else str(index)
        name = self.catchment_names[index] if index < len(self.catchment_names) else ""
        return cid, name

    def results(self, settings: dict[str, Any]) -> dict[str, Any]:
        """{"summary": {"test": rows, "distributions", "units", "settings"}, "series": collected
        windows per series (numpy), "example": the first window's grids, "catchment_rows": one
        record per (row, catchment)}. `settings` records the tests that ran."""
        units = dict(self.info.units)
        rows: dict[str, dict[str, Any]] = {}
        dists: dict[str, dict[str, Any]] = {}
        table: list[dict[str, Any]] = []
        for (name, method), acc in self.errors.items():
            rows[row_key(name, method)] = {**acc.result(), "units": units.get(name, "")}
        series: dict[str, dict[str, np.ndarray]] = {}
        for key, items in self.series.items():
            data = {k: torch.cat([it[k] for it in items]).numpy() for k in items[0]}
            series[key] = data
            s = key.partition(":")[0]
            for method in (m for m in (MODEL, *SERIES_BASELINES) if m in data):
                row = row_key(test_name(key), method)
                acc = ErrorSums()
                acc.add(torch.from_numpy(data[method]), torch.from_numpy(data["true"]),
                        torch.from_numpy(data["select"]))
                sc = per_group_scores(data[method], data["true"], data["select"], data["catchment"])
                per = {k: distribution(sc[k]) for k in FLOW_SCORES}
                rows[row] = {**acc.result(), **{f"{k}_median": per[k]["median"] for k in FLOW_SCORES},
                             "units": units.get(s, "")}
                dists[row] = {**per, "per_catchment": {k: v.tolist() for k, v in sc.items()}}
                for i, g in enumerate(sc["group"]):
                    cid, cname = self._catchment(int(g))
                    table.append({"row": row, "test": test_name(key), "method": method,
                                  "catchment_id": cid, "gauge_name": cname, "n": int(sc["n"][i]),
                                  **{k: float(sc[k][i]) for k in FLOW_SCORES}})
        target = self.evaluation.get("cross_modal")
        ran = [k.partition(":")[2] for k in self.series if k.startswith(f"{target}:")]
        infilling = [t for t in ran if t != "all_hidden"]
        settings = {**settings, "cross_modal": target if "all_hidden" in ran else None,
                    "infilling": infilling or None}
        summary = {"test": rows, "distributions": dists, "units": units, "settings": settings}
        return {"summary": summary, "series": series, "example": self.example,
                "catchment_rows": table, "units": units}


def write_catchment_table(records: list[dict[str, Any]], out_dir: Path) -> Path:
    """`out_dir/catchments.csv`: one line per (row, catchment) with its flow scores."""
    columns = ["row", "test", "method", "catchment_id", "gauge_name", "n", *FLOW_SCORES]
    path = out_dir / "catchments.csv"
    atomic_write_text(path, pd.DataFrame(records, columns=columns).to_csv(index=False))
    return path
