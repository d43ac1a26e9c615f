"""Hydrology loading: prepared store vs full grids read straight from compressed NetCDF.

One run writes a synthetic source as compressed NetCDF (zlib, monthly time chunks, like the
HadUK-Grid files), prepares the store from it, then reads the same random (catchment, 90-day)
windows both ways, plus full batches through the DataModule's dataset + collate (normalisation
included; the model draws the masks). Reported: windows/s (median of `repeats` timed rounds after
a warm-up) and MB per window.

    python -m benchmarks.hydro_loader [days=365] [windows=24] [repeats=5] [workdir=…]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from maelab.core.errors import ConfigError
from maelab.data.hydro.collate import HydroCollate, HydroWindowDataset
from maelab.data.hydro.layout import PatchLayout, default_land_mask
from maelab.data.hydro.sources import SourceSpec, open_source
from maelab.data.hydro.sources.synthetic import GRIDS, SERIES, generate_hydrology, write_dataset
from maelab.data.hydro.store import PreparedStore, prepare_cached


def _rate(fn: Callable[[int, int], int], windows: np.ndarray, repeats: int,
          warmup: int = 3) -> dict[str, float]:
    """windows/s (median over rounds) and MB per window of `fn(catchment, start) -> bytes`."""
    for c, s in windows[:warmup]:
        fn(int(c), int(s))
    rates, nbytes = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        nbytes = sum(fn(int(c), int(s)) for c, s in windows)
        rates.append(len(windows) / (time.perf_counter() - t0))
    return {"windows_per_s": statistics.median(rates), "mb_per_window": nbytes / len(windows) / 1e6}


def run(days: int = 365, windows: int = 24, repeats: int = 5, seq_len: int = 90,
        batch_size: int = 8, workdir: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Run the benchmark; returns {method: {windows_per_s, mb_per_window}, ratios, settings}."""
    if days < seq_len + 1:
        raise ConfigError("days", days, f"at least seq_len + 1 = {seq_len + 1}")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        end = pd.Timestamp("2001-01-01") + pd.Timedelta(days=days - 1)
        nc = write_dataset(generate_hydrology("2001-01-01", end.strftime("%Y-%m-%d"), seed=seed,
                                              n_catchments=8), tmp / "source.nc")
        spec = SourceSpec(kind="netcdf", root=str(nc), grids={g: g for g in GRIDS},
                          series={s: s for s in SERIES}, static="static")
        layout = PatchLayout.build(default_land_mask(), 10, 0.5)
        train = ("2001-01-01", end.strftime("%Y-%m-%d"))
        store = PreparedStore(prepare_cached(spec, layout, train, ["riverflow"], tmp / "cache",
                                             lambda: open_source(spec)))
        rng = np.random.default_rng(seed)
        win = np.stack([rng.integers(0, store.n_catchments, windows),
                        rng.integers(0, store.n_days - seq_len + 1, windows)], axis=1)

        def read_store(c: int, s: int) -> int:
            arrays = [np.array(a[s:s + seq_len]) for a in store.grids.values()]
            arrays += [np.array(a[c, s:s + seq_len]) for a in store.series.values()]
            return sum(a.nbytes for a in arrays)

        src = xr.open_dataset(nc)

        def read_netcdf(c: int, s: int) -> int:
            sel = src[[*GRIDS, *SERIES]].isel(time=slice(s, s + seq_len))
            arrays = [sel[g].values for g in GRIDS] + [sel[n].values[:, c] for n in SERIES]
            return sum(a.nbytes for a in arrays)

        dataset = HydroWindowDataset(store, win, seq_len,
                                     np.full((store.n_catchments, 2), np.nan, np.float32))
        collate = HydroCollate(GRIDS, SERIES, dict.fromkeys((*GRIDS, *SERIES), True),
                               store.stats, layout, seq_len, day0=0)
        starts = list(range(0, windows - batch_size + 1, batch_size))

        def batches(i: int, _: int) -> int:
            if i == 0:  # one call per round: all windows as batches
                for b in starts:
                    collate([dataset[j] for j in range(b, b + batch_size)])
            return 0

        results = {"store": _rate(read_store, win, repeats),
                   "netcdf": _rate(read_netcdf, win, repeats)}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker process
        try:
            per_round = _rate(batches, np.zeros((1, 2), dtype=np.int64), repeats, warmup=1)
        finally:
            torch.set_num_threads(threads)
        results["store_batches"] = {
            "windows_per_s": per_round["windows_per_s"] * len(starts) * batch_size,
            "mb_per_window": results["store"]["mb_per_window"],
        }
        src.close()
    results["bytes_ratio"] = results["store"]["mb_per_window"] / results["netcdf"]["mb_per_window"]
    results["speedup"] = results["store"]["windows_per_s"] / results["netcdf"]["windows_per_s"]
    results["settings"] = {"days": days, "windows": windows, "repeats": repeats,
                           "seq_len": seq_len, "batch_size": batch_size, "n_valid": layout.n_valid}
    return results


def format_table(results: dict[str, Any]) -> str:
    """Side-by-side table of `run` results."""
    lines = [f"{'method':<38}{'windows/s':>12}{'MB/window':>12}"]
    labels = {"store": "prepared store (memmap slice)",
              "netcdf": "full grids from compressed NetCDF",
              "store_batches": "store → batches (normalise + masks)"}
    for key, label in labels.items():
        r = results[key]
        lines.append(f"{label:<38}{r['windows_per_s']:>12.1f}{r['mb_per_window']:>12.2f}")
    lines.append(f"bytes per window: store / full grids = {results['bytes_ratio']:.1%}; "
                 f"read speed-up {results['speedup']:.1f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI: ``key=value`` for days, windows, repeats, workdir; prints the table."""
    kw: dict[str, Any] = {}
    for arg in sys.argv[1:] if argv is None else argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("days", "windows", "repeats", "workdir"):
            raise ConfigError(key, value, "key=value with key one of days, windows, repeats, "
                              "workdir")
        kw[key] = value if key == "workdir" else int(value)
    results = run(**kw)
    print(format_table(results))
    return results


if __name__ == "__main__":
    main()
