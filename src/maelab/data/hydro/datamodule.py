"""HydroDataModule: (catchment, start day) windows of hydrology grids and series for MM-MAE.

Samples are windows of T = `seq_len` consecutive days for one catchment. Splits are date
ranges; a window lies inside one split and inside the data of every present modality (it never
straddles a split or the start/end of a series' data). Missing days stay NaN and are flagged
invalid, never zero-filled.

Batch dict (B windows, T days, P valid land patches of p × p cells, A static attributes,
N = patches on the full grid, 29 × 18 = 522 for p = 10). Every configured grid and series name
is always a key; an absent modality (e.g. soil moisture with HadUK rainfall) holds NaN values,
False validity and False presence, as stride-0 views (read-only):

    grids           {grid: float32 (B, T, P, p*p)}  normalised; NaN where not valid
    grid_valid      {grid: bool (B, T, P, p*p)}     finite value on a land cell (loss on these)
    series          {series: float32 (B, T)}        normalised (after log1p where stats `log`)
    series_valid    {series: bool (B, T)}
    static          float32 (B, A)                  normalised attributes; NaN where missing
    static_valid    bool (B, A)
    location        float32 (B, 2)                  catchment (row, col) on the patch grid, in
                                                    patch units (`data.location`); NaN if unknown
    present         {name: bool (B,)}               modality present in the source
    catchment       int64 (B,)                      index into `catchment_ids`
    start           int64 (B,)                      first day, index on the store's day axis
    time            int64 (B, T)                    days since 1970-01-01 of each step
    donors          (only with `data.donors.series`) per such series, its K donor catchments:
                    the other catchments whose series correlates best with this one's over the
                    training period, ranked: series/valid (B, K, T), catchment (B, K) indices,
                    weight (B, K) their correlation (clipped at 0)

(`maelab.data.contracts.HydroBatch`). Patch index on the full grid = patch_row * 18 + patch_col
(row 0 south, col 0 west); valid patch k sits at `valid_patch_idx[k]`. Values de-normalise with
`maelab.scoring.hydro_metrics.denormalise(x, stats[name])`. Masks are the model's business
(`maelab.models.mmmae.masking`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader

from maelab.core.checks import positive_int
from maelab.core.errors import ConfigError, DataError
from maelab.data.contracts import HydroInfo
from maelab.data.hydro.assemble import STATIC, SourceSet, parse_missing
from maelab.data.hydro.collate import HydroCollate, HydroWindowDataset
from maelab.data.hydro.layout import PatchLayout, check_patch_size, lat_lon_to_patch, load_land_mask
from maelab.data.hydro.sources import HydroSource
from maelab.data.hydro.sources.base import check_splits_in_range
from maelab.data.hydro.store import PreparedStore, prepare_cached
from maelab.data.samplers import sharded_loader, worker_start_method

log = logging.getLogger(__name__)

GRID_NAMES = ("precipitation", "soil_moisture", "temperature")
SERIES_NAMES = ("evaporation", "riverflow")
SPLITS = ("train", "val", "test")
DEFAULT_SPLITS = {
    "train": {"start": "2000-01-01", "end": "2001-12-31"},
    "val": {"start": "2002-01-01", "end": "2002-06-30"},
    "test": {"start": "2002-07-01", "end": "2002-12-31"},
}
_EPOCH = np.datetime64("1970-01-01", "D")
MIN_EVAL_WINDOWS = 10  # fewer windows in a split: warned
MAX_EVAL_COVER = 3  # val/test days in more consecutive windows of a catchment: warned


def as_plain(obj: Any) -> Any:
    """OmegaConf containers → plain Python (dicts/lists); anything else unchanged."""
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, Mapping):
        return {k: as_plain(v) for k, v in obj.items()}
    return obj


def pairwise_correlation(x: np.ndarray) -> np.ndarray:
    """(C, D) series with NaN gaps → (C, C) Pearson correlations, each pair over the days where
    both are finite; NaN where a pair shares fewer than 2 days or one is constant there."""
    ok = np.isfinite(x)
    v, m = np.where(ok, x, 0.0), ok.astype(np.float64)
    n = m @ m.T  # (C, C) common days
    sx, sy = v @ m.T, m @ v.T  # sums of x (row) and y (column) over the common days
    sxx, syy, sxy = (v * v) @ m.T, m @ (v * v).T, v @ v.T
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        var_x, var_y = sxx - sx * sx / n, syy - sy * sy / n
        r = cov / np.sqrt(var_x * var_y)
    return np.where((n >= 2) & (var_x > 0) & (var_y > 0), r, np.nan)


def _parse_donors(donors: Mapping[str, Any] | None, series: Sequence[str],
                  present: Mapping[str, bool]) -> tuple[list[str], int]:
    """`data.donors` ({series: [...], count: K}) → (series, K); no series: ([], 0)."""
    donors = dict(donors or {})
    unknown = sorted(set(donors) - {"series", "count"})
    if unknown:
        raise ConfigError(f"data.donors.{unknown[0]}", donors[unknown[0]], ["series", "count"])
    names = donors.get("series") or []
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError("data.donors.series", names, "a list of series names, e.g. "
                          "'data.donors.series=[catchment_precipitation]'")
    for n in names:
        if n not in series or not present.get(n):
            raise ConfigError("data.donors.series", n, [k for k in series if present.get(k)])
    if not names:
        return [], 0
    return list(names), positive_int("data.donors.count", donors.get("count", 5))


def _parse_splits(splits: Mapping[str, Any], seq_len: int) -> dict[str, tuple[np.datetime64, ...]]:
    """{split: (start, end)} as datetime64[D], checked: ordered, disjoint, ≥ seq_len days."""
    if set(splits) != set(SPLITS):
        raise ConfigError("data.splits", sorted(splits), f"exactly the splits {SPLITS}")
    out = {}
    for name in SPLITS:
        rng = splits[name]
        if not isinstance(rng, Mapping) or set(rng) != {"start", "end"}:
            raise ConfigError(f"data.splits.{name}", rng, "a mapping {start: date, end: date}")
        try:
            lo, hi = (np.datetime64(str(rng[k]), "D") for k in ("start", "end"))
        except ValueError as exc:
            raise ConfigError(f"data.splits.{name}", dict(rng), "ISO dates YYYY-MM-DD") from exc
        if hi < lo:
            raise ConfigError(f"data.splits.{name}.end", str(rng["end"]),
                              f"a date on or after data.splits.{name}.start={lo}")
        out[name] = (lo, hi)
    order = sorted(SPLITS, key=lambda s: out[s][0])
    for a, b in zip(order[:-1], order[1:], strict=True):
        if out[b][0] <= out[a][1]:
            raise ConfigError(f"data.splits.{b}.start", str(out[b][0]),
                              f"a date after data.splits.{a}.end={out[a][1]} (splits must "
                              "not overlap)")
    shortest = min(SPLITS, key=lambda s: out[s][1] - out[s][0])
    n_short = int((out[shortest][1] - out[shortest][0]).astype(np.int64)) + 1
    if seq_len > n_short:
        raise ConfigError("data.seq_len", seq_len,
                          f"at most {n_short} days (split `{shortest}` {out[shortest][0]} … "
                          f"{out[shortest][1]} holds {n_short} days)")
    return out


class HydroDataModule(L.LightningDataModule):
    """Hydrology windows for MM-MAE from registered sources (`data.source`: synthetic, netcdf,
    zarr, camels_gb; maelab.data.hydro.sources), one for everything or one per modality group
    (`data.sources` naming `data.catalog` entries; maelab.data.hydro.assemble).

    Cheap checks (patch size, land mask, splits, names, the sources' own settings) run in
    `__init__`; the sources are opened, checked, converted to the model's units and aligned,
    then prepared into a cached store, in `prepare_data`.
    """

    def __init__(
        self,
        source: str = "synthetic",
        root: str | None = None,
        grids: Mapping[str, str | None] | None = None,
        series: Mapping[str, str | None] | None = None,
        static: str | None = "static",
        location: Sequence[str] | None = None,
        dims: Mapping[str, str] | None = None,
        log_series: Sequence[str] = ("riverflow",),
        synthetic: Mapping[str, Any] | None = None,
        units: Mapping[str, str] | None = None,
        options: Mapping[str, Any] | None = None,
        calendar_align: str | None = None,
        sources: Mapping[str, str | None] | None = None,
        catalog: Mapping[str, Mapping[str, Any]] | None = None,
        missing: Sequence[Mapping[str, Any]] | None = None,
        land_mask: str | None = None,
        land_mask_var: str = "land_mask",
        patch_size: int = 10,
        land_threshold: float = 0.5,
        seq_len: int = 90,
        splits: Mapping[str, Mapping[str, str]] | None = None,
        train_stride: int = 1,
        eval_stride: int = 30,
        cache_dir: str = ".cache/hydro",
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        shuffle_seed: int = 0,
        donors: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        grids = as_plain(grids) if grids is not None else {g: g for g in GRID_NAMES}
        series = as_plain(series) if series is not None else {s: s for s in SERIES_NAMES}
        clash = set(grids) & set(series)
        if clash:
            raise ConfigError(f"data.series.{sorted(clash)[0]}", None,
                              "a name not used by data.grids (grid and series names differ)")
        log_series = list(as_plain(log_series) or [])
        for name in log_series:
            if name not in series:
                raise ConfigError("data.log_series", name, list(series))
        self.seq_len = positive_int("data.seq_len", seq_len)
        self.train_stride = positive_int("data.train_stride", train_stride)
        self.eval_stride = positive_int("data.eval_stride", eval_stride)
        self.batch_size = positive_int("data.batch_size", batch_size)
        positive_int("data.num_workers", num_workers, minimum=0)
        self.patch_size = check_patch_size(patch_size)
        self.layout = PatchLayout.build(load_land_mask(land_mask, land_mask_var), self.patch_size,
                                        land_threshold)
        self.splits = _parse_splits(as_plain(splits) or DEFAULT_SPLITS, self.seq_len)
        single = {"source": source, "root": None if root is None else str(root),
                  "dims": {**as_plain(dims or {})}, "synthetic": dict(as_plain(synthetic) or {}),
                  "units": dict(as_plain(units) or {}), "options": dict(as_plain(options) or {}),
                  "calendar_align": calendar_align}
        self.sources = SourceSet.build(single, as_plain(sources), as_plain(catalog), dict(grids),
                                       dict(series), static)
        self.sources.check_settings(self.splits)
        self.missing = parse_missing(as_plain(missing), list(series))
        location = as_plain(location)
        if location is not None and not (
            isinstance(location, (list, tuple)) and len(location) == 2
            and all(isinstance(v, str) for v in location)
        ):
            raise ConfigError("data.location", location,
                              "null or [latitude, longitude] static attribute names")
        self.location = None if location is None else tuple(location)
        known = self.sources.known_static_names()
        if known is not None:  # attribute names known without opening anything
            self._check_location(known)
        self.log_series = log_series
        self.cache_dir = Path(str(cache_dir)).expanduser()
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = bool(persistent_workers) and num_workers > 0
        self.shuffle_seed = positive_int("data.shuffle_seed", shuffle_seed, minimum=0)
        self.grid_names, self.series_names = list(grids), list(series)
        self.present = {n: v is not None for n, v in {**grids, **series}.items()}
        self.donor_series, self.n_donors = _parse_donors(as_plain(donors), self.series_names,
                                                        self.present)
        self._store_path: Path | None = None
        self._store: PreparedStore | None = None
        self.datasets: dict[str, HydroWindowDataset] = {}

    # -- patch layout (available right after __init__) ----------------------------------------
    @property
    def n_valid_patches(self) -> int:
        """P: land patches that become tokens."""
        return self.layout.n_valid

    @property
    def n_patches(self) -> int:
        """Patches on the full grid (522 for p = 10)."""
        return self.layout.n_patches

    @property
    def patch_grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the patch grid, (29, 18) for p = 10."""
        return self.layout.n_rows, self.layout.n_cols

    @property
    def valid_patch_idx(self) -> np.ndarray:
        """(P,) int64 index of each valid patch on the full patch grid."""
        return self.layout.valid_idx

    @property
    def valid_patch_rows(self) -> np.ndarray:
        """(P,) patch-grid row (0 = south) of each valid patch."""
        return self.layout.rows

    @property
    def valid_patch_cols(self) -> np.ndarray:
        """(P,) patch-grid column (0 = west) of each valid patch."""
        return self.layout.cols

    @property
    def pixel_land(self) -> np.ndarray:
        """(P, p*p) bool land cells of each valid patch."""
        return self.layout.pixel_land

    @property
    def source(self) -> HydroSource | None:
        """The one source (None when the modality groups come from several)."""
        sources = list(self.sources.sources.values())
        return sources[0] if len(sources) == 1 else None

    # -- store (prepared on first use) --------------------------------------------------------
    def _open_checked(self):
        """The assembled sources, checked before the long preparation: splits within the
        common dates, `data.location` names and a place for every catchment."""
        ds = self.sources.open(self.layout.land_mask, self.missing)
        days = ds["time"].values.astype("datetime64[D]")
        check_splits_in_range(self.splits, days[0], days[-1], self.sources.where())
        names = [str(v) for v in ds["attribute"].values] if STATIC in ds.data_vars else []
        self._check_location(names)
        if self.location is not None:
            lat, lon = (ds[STATIC].sel(attribute=v).values for v in self.location)
            bad = ~(np.isfinite(lat) & np.isfinite(lon))
            if bad.any():
                ids = [str(c) for c in ds["catchment"].values[bad]]
                raise DataError(
                    f"{self.sources.where('static')}: catchment(s) {', '.join(ids)} have no "
                    f"coordinates ({', '.join(self.location)}); data.location places every "
                    "catchment on the grid: add them, or set data.location=null")
        return ds

    def _check_location(self, names: list[str]) -> None:
        """Raise unless `data.location` is null or names two of the static attributes."""
        for name in self.location or ():
            if name not in names:
                raise ConfigError("data.location", list(self.location),
                                  f"null or two of the static attributes: {names}" if names else
                                  "null: the source has no static attributes (data.static)")

    def prepare_data(self) -> None:
        """Open, check and prepare the source into the cache (reused when already there)."""
        train = tuple(str(d) for d in self.splits["train"])
        missing = [[m.series, m.catchment, str(m.start), str(m.end)] for m in self.missing]
        self._store_path = prepare_cached(self.sources, self.layout, train, self.log_series,
                                          self.cache_dir, self._open_checked, extra=missing)

    @property
    def store(self) -> PreparedStore:
        """The prepared store (prepares it on first access)."""
        if self._store is None:
            if self._store_path is None:
                self.prepare_data()
            store = PreparedStore(self._store_path)
            check_splits_in_range(self.splits, store.days[0], store.days[-1],
                                  self.sources.where())
            self._store = store
        return self._store

    @property
    def stats(self) -> dict[str, dict[str, float]]:
        """Normalisation per present modality: {name: {mean, std, log}} (train period)."""
        return self.store.stats

    @property
    def static_names(self) -> list[str]:
        return list(self.store.meta["static_names"])

    @property
    def n_static(self) -> int:
        """A: static attributes per catchment (0 when the source has none)."""
        return len(self.static_names)

    @property
    def catchment_locations(self) -> np.ndarray:
        """(C, 2) float32 (row, col) of each catchment on the patch grid (nearest cell to its
        `data.location` latitude/longitude), NaN without `data.location` or a missing value."""
        n = len(self.catchment_ids)
        if self.location is None:
            return np.full((n, 2), np.nan, dtype=np.float32)
        names = self.static_names
        self._check_location(names)
        lat, lon = (self.store.static[:, names.index(v)] for v in self.location)
        return lat_lon_to_patch(lat, lon, self.patch_size).astype(np.float32)

    @property
    def catchment_ids(self) -> list[str]:
        return list(self.store.meta["catchments"])

    @property
    def catchment_names(self) -> list[str]:
        """Gauge name of each catchment ('' where the source has none)."""
        return list(self.store.meta.get("catchment_names", [""] * len(self.catchment_ids)))

    @property
    def units(self) -> dict[str, str]:
        """The model's unit of each present modality (physical values after `denormalise`)."""
        return dict(self.store.meta.get("units", {}))

    def info(self) -> HydroInfo:
        """What a model needs to know about this data, in plain types (prepares the store on
        first use: the static attributes and statistics come from it)."""
        rows, cols = self.patch_grid_shape
        return HydroInfo(
            batch_size=int(self.batch_size),
            grid_names=list(self.grid_names), series_names=list(self.series_names),
            present={k: bool(v) for k, v in self.present.items()},
            patch_size=int(self.patch_size), seq_len=int(self.seq_len),
            n_valid_patches=int(self.n_valid_patches), n_patches=int(self.n_patches),
            patch_grid_shape=[int(rows), int(cols)],
            valid_patch_rows=[int(r) for r in self.valid_patch_rows],
            valid_patch_cols=[int(c) for c in self.valid_patch_cols],
            n_static=int(self.n_static), static_names=list(self.static_names),
            stats={k: {"mean": float(v["mean"]), "std": float(v["std"]), "log": bool(v["log"])}
                   for k, v in self.stats.items()},
            units=self.units, donor_series=list(self.donor_series), n_donors=self.n_donors,
        )

    # -- windows and loaders ------------------------------------------------------------------
    def windows(self, split: str) -> np.ndarray:
        """(N, 2) int64 [catchment, start] of every window of `split`."""
        store, t = self.store, self.seq_len
        lo_s, hi_s = (store.day_index(d) for d in self.splits[split])
        ranges = np.array([store.data_range(c) for c in range(store.n_catchments)])  # (C, 2)
        lo, hi = np.maximum(ranges[:, 0], lo_s), np.minimum(ranges[:, 1], hi_s)
        stride = self.train_stride if split == "train" else self.eval_stride
        n = max(int(((hi - lo - t + 1) // stride).max()) + 1, 0)
        starts = lo[:, None] + stride * np.arange(n)[None, :]  # (C, n)
        ok = starts + t - 1 <= hi[:, None]
        catchment = np.broadcast_to(np.arange(store.n_catchments)[:, None], starts.shape)
        win = np.stack([catchment[ok], starts[ok]], axis=1).astype(np.int64)
        if len(win) == 0:
            a, b = self.splits[split]
            raise DataError(f"{self.sources.where()}: split `{split}` ({a} … {b}) holds no "
                            f"{t}-day window inside the data of every present modality")
        return win

    def setup(self, stage: str | None = None) -> None:
        """Build the window datasets of every split (once)."""
        if self.datasets:
            return
        locations = self.catchment_locations  # (C, 2)
        donors = self.donor_table()
        for split in SPLITS:
            win = self.windows(split)
            self.datasets[split] = HydroWindowDataset(self.store, win, self.seq_len, locations,
                                                      donors)
            self._check_split(split, win)

    def donor_table(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per series of `data.donors.series`: (C, K) int64 indices of each catchment's K donors,
        the other catchments whose series has the highest Pearson correlation with its own over
        the training period's days where both are valid (ranked, best first), and (C, K) float32
        those correlations clipped at 0 (a catchment pair with no common day: 0)."""
        store = self.store
        c = store.n_catchments
        if self.donor_series and self.n_donors >= c:
            raise ConfigError("data.donors.count", self.n_donors,
                              f"fewer than the {c} catchments of the data")
        lo, hi = (store.day_index(d) for d in self.splits["train"])
        out = {}
        for name in self.donor_series:
            r = pairwise_correlation(np.asarray(store.series[name][:, lo:hi + 1], dtype=np.float64))
            np.fill_diagonal(r, -np.inf)  # never its own donor
            idx = np.argsort(-r, axis=1, kind="stable")[:, :self.n_donors]  # (C, K)
            w = np.take_along_axis(r, idx, 1)
            out[name] = (idx.astype(np.int64), np.clip(np.nan_to_num(w, nan=0.0), 0, None)
                         .astype(np.float32))
        return out

    def _check_split(self, split: str, win: np.ndarray) -> None:
        """Log the split's windows; warn when it holds fewer than MIN_EVAL_WINDOWS or, for
        val/test, when a day lies in more than MAX_EVAL_COVER consecutive windows of a catchment
        (each scored under that window's own masks: up to 3, as with the default stride of 30
        days for 90-day windows, is the test's design; training windows overlap by design)."""
        a, b = self.splits[split]
        n_catchments = len(np.unique(win[:, 0]))
        log.info("hydro %s (%s … %s): %d windows of %d days over %d catchments", split, a, b,
                 len(win), self.seq_len, n_catchments)
        if len(win) < MIN_EVAL_WINDOWS:
            log.warning("hydro %s: only %d windows (%s … %s, %d-day windows): its metrics rest on "
                        "few samples; lengthen the split or shorten data.seq_len", split, len(win),
                        a, b, self.seq_len)
        if split != "train" and len(win) > n_catchments:
            cover = -(-self.seq_len // self.eval_stride)  # windows a day can lie in
            if cover > MAX_EVAL_COVER:
                log.warning("hydro %s: a day lies in up to %d consecutive windows of a catchment "
                            "(data.eval_stride=%d, data.seq_len=%d): the same days are scored "
                            "many times over; raise data.eval_stride to at least %d", split,
                            cover, self.eval_stride, self.seq_len,
                            -(-self.seq_len // MAX_EVAL_COVER))

    def collate(self) -> HydroCollate:
        """The collate function of every split."""
        day0 = int((self.store.start_day - _EPOCH).astype(np.int64))
        return HydroCollate(self.grid_names, self.series_names, self.present, self.stats,
                            self.layout, self.seq_len, day0)

    def _loader(self, split: str) -> DataLoader:
        """Training: this rank's share of an order drawn from `shuffle_seed` + epoch
        (maelab.data.samplers), so DDP ranks train on disjoint windows. Validation and test: every
        window in order on every rank: MM-MAE's losses and test evaluation are not gathered over
        ranks, so each rank computes the one-process result (and rank 0 writes it)."""
        self.setup()
        kwargs = {"num_workers": self.num_workers, "pin_memory": self.pin_memory,
                  "persistent_workers": self.persistent_workers, "collate_fn": self.collate(),
                  "multiprocessing_context": worker_start_method(self.num_workers)}
        if split == "train":
            return sharded_loader(self.datasets[split], self.batch_size, True,
                                  seed=self.shuffle_seed, **kwargs)
        return DataLoader(self.datasets[split], batch_size=self.batch_size, **kwargs)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train")
        self._log_steps(len(loader))
        return loader

    def _log_steps(self, n_batches: int) -> None:
        """Say the real optimiser steps when the data holds fewer batches than the trainer's
        `limit_train_batches` (an epoch then ends early)."""
        trainer = getattr(self, "trainer", None)
        limit = getattr(trainer, "limit_train_batches", None)
        if trainer is None or not isinstance(limit, int) or isinstance(limit, bool):
            return
        if n_batches < limit:
            epochs = trainer.max_epochs
            log.warning("hydro train: %d windows make %d batches of %d per epoch, fewer than "
                        "trainer.limit_train_batches=%d: %d steps per epoch%s", len(
                            self.datasets["train"]), n_batches, self.batch_size, limit, n_batches,
                        f", {n_batches * epochs} in {epochs} epochs" if epochs and epochs > 0
                        else "")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
