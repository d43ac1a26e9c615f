"""Windows of a prepared hydrology store as samples, and their collation into a `HydroBatch`.

A sample holds raw (physical-unit) memory-mapped window views; `HydroCollate` stacks a batch,
normalises it with the training statistics (log1p first for log series) and flags validity.
Absent modalities become NaN values with False validity and presence (stride-0 views).
With `data.donors`, a sample also holds its donor catchments' values of those series
(`HydroDonors`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from maelab.data.contracts import HydroBatch
from maelab.data.hydro.layout import PatchLayout
from maelab.data.hydro.store import PreparedStore


def _stack_normalised(arrays: list[np.ndarray], st: Mapping[str, Any]) -> np.ndarray:
    """Stack raw windows into one float32 batch array, then (x [log1p] − mean) / std in place;
    NaN stays NaN."""
    out = np.stack(arrays).astype(np.float32, copy=False)
    if st["log"]:
        np.log1p(np.maximum(out, 0, out=out), out=out)
    out -= np.float32(st["mean"])
    out /= np.float32(st["std"])
    return out


class HydroWindowDataset(Dataset):
    """Windows `(catchment, start)` of a prepared store. A sample holds raw (physical-unit)
    memory-mapped window views; `HydroCollate` copies and normalises them batch-wise."""

    def __init__(self, store: PreparedStore, windows: np.ndarray, seq_len: int,
                 locations: np.ndarray,
                 donors: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> None:
        self.store, self.windows, self.seq_len = store, windows, int(seq_len)  # windows (N, 2)
        mean = np.asarray(store.meta["static_mean"], dtype=np.float32)
        std = np.asarray(store.meta["static_std"], dtype=np.float32)
        self.static = (store.static - mean) / std  # (C, A) normalised
        self.locations = locations  # (C, 2) patch-grid (row, col), NaN when unknown
        self.donors = dict(donors or {})  # series → (C, K) donor indices, (C, K) weights

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        c, s = (int(v) for v in self.windows[i])
        days = slice(s, s + self.seq_len)
        sample = {
            "grids": {g: a[days] for g, a in self.store.grids.items()},  # (T, P, p*p) each
            "series": {n: a[c, days] for n, a in self.store.series.items()},  # (T,) each
            "static": self.static[c],  # (A,)
            "location": self.locations[c],  # (2,)
            "catchment": c,
            "start": s,
        }
        if self.donors:  # per series: (K, T) raw values of its donors, their indices, weights
            sample["donors"] = {n: (self.store.series[n][idx[c], days], idx[c], w[c])
                                for n, (idx, w) in self.donors.items()}
        return sample


class HydroCollate:
    """Stack samples into the batch dict (module docstring)."""

    def __init__(
        self, grid_names: Sequence[str], series_names: Sequence[str], present: Mapping[str, bool],
        stats: Mapping[str, Mapping[str, Any]], layout: PatchLayout, seq_len: int, day0: int,
    ) -> None:
        self.grid_names, self.series_names = list(grid_names), list(series_names)
        self.present, self.stats = dict(present), dict(stats)
        self.n_valid, self.pp = layout.n_valid, layout.patch_size ** 2
        self.seq_len, self.day0 = int(seq_len), int(day0)

    def _stack(self, samples: list[dict], group: str, name: str,
               shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.present[name]:
            return (torch.full((), float("nan")).expand(shape),
                    torch.zeros((), dtype=torch.bool).expand(shape))
        x = _stack_normalised([s[group][name] for s in samples], self.stats[name])
        return torch.from_numpy(x), torch.from_numpy(np.isfinite(x))

    def __call__(self, samples: list[dict[str, Any]]) -> HydroBatch:
        b, t = len(samples), self.seq_len
        batch: dict[str, Any] = {"grids": {}, "grid_valid": {}, "series": {}, "series_valid": {}}
        for g in self.grid_names:
            batch["grids"][g], batch["grid_valid"][g] = self._stack(
                samples, "grids", g, (b, t, self.n_valid, self.pp))
        for n in self.series_names:
            batch["series"][n], batch["series_valid"][n] = self._stack(samples, "series", n, (b, t))
        static = np.stack([s["static"] for s in samples])  # (B, A)
        batch["static"] = torch.from_numpy(static)
        batch["static_valid"] = torch.from_numpy(np.isfinite(static))
        batch["location"] = torch.from_numpy(np.stack([s["location"] for s in samples]))  # (B, 2)
        batch["present"] = {k: torch.full((b,), v) for k, v in self.present.items()}
        catchment = torch.tensor([s["catchment"] for s in samples], dtype=torch.int64)
        start = torch.tensor([s["start"] for s in samples], dtype=torch.int64)
        batch["catchment"], batch["start"] = catchment, start
        batch["time"] = self.day0 + start[:, None] + torch.arange(t)  # (B, T)
        if "donors" in samples[0]:
            batch["donors"] = self._donors(samples)
        return batch

    def _donors(self, samples: list[dict[str, Any]]) -> dict[str, dict[str, torch.Tensor]]:
        """`HydroDonors`: each donor series normalised as the series is, (B, K, T)."""
        out: dict[str, dict[str, torch.Tensor]] = {"series": {}, "valid": {}, "catchment": {},
                                                   "weight": {}}
        for n in samples[0]["donors"]:
            x = torch.from_numpy(_stack_normalised([s["donors"][n][0] for s in samples],
                                                   self.stats[n]))  # (B, K, T)
            out["series"][n], out["valid"][n] = x, x.isfinite()
            out["catchment"][n] = torch.from_numpy(np.stack([s["donors"][n][1] for s in samples]))
            out["weight"][n] = torch.from_numpy(np.stack([s["donors"][n][2] for s in samples]))
        return out
