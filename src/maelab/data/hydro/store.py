"""Prepare an opened hydrology source (`maelab.data.hydro.sources`) into a fast, cached store.

The prepared store is a directory of uncompressed `.npy` files, memory-mapped for reading, so a
window is a slice:

    grid_<name>.npy    float32 (n_days, P, p*p)   valid land patches only, NaN off land / missing
    series_<name>.npy  float32 (n_catchments, n_days)
    static.npy         float32 (n_catchments, A)
    meta.json          days, names, valid patches, spans of data, normalisation statistics

Days form a complete daily axis (missing source days are NaN). Statistics are computed on the
training period only (land pixels only; series listed in `log_series` after log1p). The store
lives under `<cache_dir>/<key>`, key = hash of the sources' fingerprint and every setting. The
input is the assembled Dataset (`maelab.data.hydro.assemble`: canonical names and dims, the
model's units, grids south → north); meta.json keeps each variable's unit and the gauge names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from maelab.core.errors import DataError
from maelab.core.io import atomic_write_json
from maelab.data.hydro.assemble import STATIC, SourceSet
from maelab.data.hydro.layout import PatchLayout
from maelab.data.hydro.sources import SourceSpec

log = logging.getLogger(__name__)

STORE_VERSION = 2
_BLOCK_DAYS = 64


def store_key(sources: SourceSet, layout: PatchLayout, train: tuple[str, str],
              log_series: Sequence[str], extra: Any = None) -> str:
    """Cache key of the prepared store: the sources' fingerprint + every setting that shapes it
    (`extra`: further settings, e.g. the missing stretches)."""
    settings = {
        "version": STORE_VERSION, "sources": sources.fingerprint(),
        "layout": layout.fingerprint(), "train": list(train), "log": sorted(log_series),
        "extra": extra,
    }
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class _Moments:
    """Running count / sum / sum of squares (float64) of finite values."""

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        v = x[np.isfinite(x)].astype(np.float64)
        self.n += v.size
        self.s += float(v.sum())
        self.ss += float((v * v).sum())

    def result(self, name: str) -> tuple[float, float]:
        if self.n == 0:
            raise DataError(f"`{name}` has no finite values in the training period")
        mean = self.s / self.n
        std = float(np.sqrt(max(self.ss / self.n - mean * mean, 0.0)))
        return mean, std if std > 1e-6 else 1.0


def _span(finite_days: np.ndarray) -> list[int]:
    """[first, last] index of True in a (n_days,) bool array, [-1, -1] if none."""
    idx = np.flatnonzero(finite_days)
    return [int(idx[0]), int(idx[-1])] if idx.size else [-1, -1]


def _track(progress: Progress | None, items: Sequence, description: str) -> Sequence:
    return items if progress is None else progress.track(items, description=description)


def write_store(ds: xr.Dataset, names: Mapping[str, Sequence[str]], layout: PatchLayout,
                train: tuple[str, str], log_series: Sequence[str], out: Path,
                where: str, progress: Progress | None = None) -> None:
    """Prepare the assembled `ds` into the store directory `out` (see the module docstring):
    the grids `names["grids"]`, the series `names["series"]`, `static` if present; `progress`
    shows the blocks of days read per grid."""
    out.mkdir(parents=True)
    src_days = ds["time"].values.astype("datetime64[D]")  # daily, checked by daily_time
    if src_days.size == 0:
        raise DataError(f"{where}: no day in the data")
    days = np.arange(src_days[0], src_days[-1] + 1, dtype="datetime64[D]")
    pos = (src_days - days[0]).astype(np.int64)  # (n_src,) day index of each source step
    n_days, p, pp = days.size, layout.n_valid, layout.patch_size ** 2
    lo, hi = np.datetime64(train[0], "D"), np.datetime64(train[1], "D")
    in_train = (days >= lo) & (days <= hi)  # (n_days,)
    meta: dict[str, Any] = {
        "version": STORE_VERSION, "source": where, "start_day": str(days[0]),
        "n_days": int(n_days), "patch_size": layout.patch_size, "n_valid": p,
        "valid_idx": layout.valid_idx.tolist(), "train": list(train),
        "grids": [], "series": [], "stats": {}, "grid_span": {}, "series_span": {}, "units": {},
    }
    for name in names["grids"]:
        da = ds[name].transpose("time", "y", "x")
        mm = np.lib.format.open_memmap(out / f"grid_{name}.npy", mode="w+", dtype=np.float32,
                                       shape=(n_days, p, pp))
        if pos.size != n_days:
            mm[:] = np.nan
        mom, has = _Moments(), np.zeros(n_days, dtype=bool)
        bounds = np.cumsum((0, *da.chunks[0])) if da.chunks else np.arange(
            0, src_days.size + _BLOCK_DAYS, _BLOCK_DAYS).clip(max=src_days.size)
        blocks = list(zip(bounds[:-1], bounds[1:], strict=True))
        for i0, i1 in _track(progress, blocks, f"hydro store: {name}"):
            block = np.asarray(da.isel(time=slice(int(i0), int(i1))).values, dtype=np.float32)
            patches = layout.extract(block)  # (b, P, p*p), NaN off land
            rows = pos[i0:i1]
            mm[rows] = patches
            has[rows] = np.isfinite(patches).any(axis=(1, 2))
            mom.add(patches[in_train[rows]])
        mm.flush()
        del mm
        mean, std = mom.result(f"{where}:{name}")
        meta["grids"].append(name)
        meta["stats"][name] = {"mean": mean, "std": std, "log": False}
        meta["grid_span"][name] = _span(has)
        meta["units"][name] = str(da.attrs.get("units", ""))
    has_static = STATIC in ds.data_vars
    per_catchment = bool(names["series"]) or has_static
    catchments = ds["catchment"].values if per_catchment else np.array(["all"])  # one pseudo
    meta["catchments"] = [str(v) for v in catchments]
    meta["catchment_names"] = ([str(v) for v in ds["gauge_name"].values]
                               if "gauge_name" in ds.coords else [""] * len(catchments))
    for name in names["series"]:
        vals = ds[name].transpose("catchment", "time").values.astype(np.float32)  # (C, n_src)
        arr = np.full((catchments.size, n_days), np.nan, dtype=np.float32)
        arr[:, pos] = vals
        np.save(out / f"series_{name}.npy", arr)
        logged = name in log_series
        mom = _Moments()
        mom.add(np.log1p(np.maximum(arr[:, in_train], 0)) if logged else arr[:, in_train])
        mean, std = mom.result(f"{where}:{name}")
        meta["series"].append(name)
        meta["stats"][name] = {"mean": mean, "std": std, "log": logged}
        meta["series_span"][name] = [_span(r) for r in np.isfinite(arr)]
        meta["units"][name] = str(ds[name].attrs.get("units", ""))
    if has_static:
        da = ds[STATIC].transpose("catchment", "attribute")
        static = np.asarray(da.values, dtype=np.float32)  # (C, A)
        static_names = [str(v) for v in da["attribute"].values]
    else:
        static, static_names = np.zeros((catchments.size, 0), dtype=np.float32), []
    np.save(out / "static.npy", static)
    with warnings.catch_warnings():  # all-NaN attributes → mean 0, std 1
        warnings.simplefilter("ignore", RuntimeWarning)
        s_mean = np.nan_to_num(np.nanmean(static, axis=0)) if static.size else np.zeros(0)
        s_std = np.nan_to_num(np.nanstd(static, axis=0)) if static.size else np.zeros(0)
    meta["static_names"] = static_names
    meta["static_mean"] = s_mean.tolist()
    meta["static_std"] = np.where(s_std > 1e-6, s_std, 1.0).tolist()
    atomic_write_json(out / "meta.json", meta)


def prepare_cached(
    sources: SourceSet | SourceSpec, layout: PatchLayout, train: tuple[str, str],
    log_series: Sequence[str], cache_dir: str | Path, open_fn: Callable[[], xr.Dataset],
    extra: Any = None,
) -> Path:
    """Return the store for these settings under `cache_dir`, preparing it on a cache miss.

    `open_fn` (the assembled Dataset) is only called on a miss. Written to a temporary
    directory, then renamed. A single `SourceSpec` stands for `SourceSet.single(spec)`.
    """
    if isinstance(sources, SourceSpec):
        sources = SourceSet.single(sources)
    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / store_key(sources, layout, train, log_series, extra)
    if (path / "meta.json").is_file():
        log.info("hydro store cache hit: %s", path)
        return path
    tmp = cache_dir / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, transient=True) as progress:  # nothing is left on the console
        opening = progress.add_task(f"hydro data {escape(sources.description)}: opening",
                                    total=None)
        ds = open_fn()
        progress.update(opening, total=1, completed=1)
        try:
            names = {group: sources.names(group) for group in ("grids", "series")}
            write_store(ds, names, layout, train, log_series, tmp, sources.description, progress)
            try:
                os.rename(tmp, path)
            except OSError:  # prepared concurrently by another process: keep theirs
                if not (path / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            ds.close()
    log.info("hydro store prepared: %s", path)
    return path


class PreparedStore:
    """Read side of a prepared store: memory-mapped arrays plus metadata (cheap to pickle)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta: dict[str, Any] = json.loads((self.path / "meta.json").read_text())

    def __getstate__(self) -> dict[str, Any]:  # memmaps are reopened in worker processes
        return {"path": self.path, "meta": self.meta}

    @property
    def grid_names(self) -> list[str]:
        return list(self.meta["grids"])

    @property
    def series_names(self) -> list[str]:
        return list(self.meta["series"])

    @property
    def n_days(self) -> int:
        return int(self.meta["n_days"])

    @property
    def start_day(self) -> np.datetime64:
        return np.datetime64(self.meta["start_day"], "D")

    @property
    def days(self) -> np.ndarray:
        """(n_days,) datetime64[D]."""
        return self.start_day + np.arange(self.n_days)

    @property
    def n_catchments(self) -> int:
        return len(self.meta["catchments"])

    @property
    def stats(self) -> dict[str, dict[str, float]]:
        return self.meta["stats"]

    def day_index(self, day: str | np.datetime64) -> int:
        return int((np.datetime64(day, "D") - self.start_day).astype(np.int64))

    @cached_property
    def grids(self) -> dict[str, np.ndarray]:
        """name → memmap float32 (n_days, P, p*p)."""
        return {g: np.load(self.path / f"grid_{g}.npy", mmap_mode="r") for g in self.grid_names}

    @cached_property
    def series(self) -> dict[str, np.ndarray]:
        """name → memmap float32 (n_catchments, n_days)."""
        return {s: np.load(self.path / f"series_{s}.npy", mmap_mode="r")
                for s in self.series_names}

    @cached_property
    def static(self) -> np.ndarray:
        """float32 (n_catchments, A) raw attribute values."""
        return np.load(self.path / "static.npy")

    def data_range(self, catchment: int) -> tuple[int, int]:
        """[first, last] day index with data of every present modality for `catchment`
        (series entirely missing for it are ignored); (0, -1) when there is none."""
        spans = list(self.meta["grid_span"].values())
        spans += [self.meta["series_span"][s][catchment] for s in self.series_names]
        spans = [s for s in spans if s[0] >= 0]
        if not spans:
            return 0, -1
        return max(s[0] for s in spans), min(s[1] for s in spans)
