"""Peak memory as the hydrology archive grows: training windows from a 1-year vs a 4-year store.

Each synthetic archive is prepared into the cached store (`HydroDataModule.prepare_data`) in a
fresh subprocess, then the same number of training windows is read through the DataModule's
train loader (shuffled, in-process: `num_workers=0`) in another fresh subprocess, so every peak
RSS is that process's own. Besides the kernel's peak RSS (VmHWM) the loader child samples after
every batch its anonymous memory (private: arrays, batches) and its file-backed resident pages
(memory-mapped store pages it touched, reclaimable page cache): a lazily read store keeps the
anonymous peak flat; the file-backed part follows the pages touched, i.e. the span the windows
are drawn from. Also reported: the pickled size of the training dataset (what each DataLoader
worker receives before it opens its own memory maps).

    python -m benchmarks.memory
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, rss_mb

DEFAULT_CACHE = ROOT / ".cache" / "bench" / "hydro"


def store_kwargs(years: int, cache_dir: str | Path, seq_len: int = 90, batch_size: int = 8,
                 n_catchments: int = 20) -> dict[str, Any]:
    """HydroDataModule arguments for a synthetic archive of `years` years from 2000-01-01:
    the last six months are validation (Jul–Sep) and test (Oct–Dec), the rest is training."""
    last = 2000 + years - 1
    return {
        "source": "synthetic", "seq_len": seq_len, "batch_size": batch_size, "num_workers": 0,
        "persistent_workers": False, "pin_memory": False, "cache_dir": str(cache_dir),
        "synthetic": {"start": "2000-01-01", "end": f"{last}-12-31", "seed": 0,
                      "n_catchments": n_catchments},
        "splits": {"train": {"start": "2000-01-01", "end": f"{last}-06-30"},
                   "val": {"start": f"{last}-07-01", "end": f"{last}-09-30"},
                   "test": {"start": f"{last}-10-01", "end": f"{last}-12-31"}},
    }


def prepare(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Prepare (or find) the store; its path, size on disk, time and this process's peak RSS."""
    from maelab.data.hydro.datamodule import HydroDataModule

    t0 = time.perf_counter()
    dm = HydroDataModule(**kwargs)
    dm.prepare_data()
    path = Path(dm.store.path)
    return {"store": str(path), "store_mb": sum(f.stat().st_size for f in path.iterdir()) / 1e6,
            "n_days": dm.store.n_days, "seconds": time.perf_counter() - t0,
            "peak_rss_mb": rss_mb()["peak"]}


def iterate(kwargs: dict[str, Any], windows: int) -> dict[str, Any]:
    """Read `windows` training windows through the train loader; RSS before, during, peak."""
    from maelab.data.hydro.datamodule import HydroDataModule

    dm = HydroDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    before = rss_mb()
    anon, file, seen = before["anon"], before["file"], 0
    t0 = time.perf_counter()
    for batch in loader:
        seen += batch["static"].shape[0]
        now = rss_mb()
        anon, file = max(anon, now["anon"]), max(file, now["file"])
        if seen >= windows:
            break
    seconds = time.perf_counter() - t0
    return {"windows": seen, "train_windows": len(dm.datasets["train"]),
            "windows_per_s": seen / seconds, "rss_before_mb": before["rss"],
            "peak_rss_mb": rss_mb()["peak"], "peak_anon_mb": anon, "peak_file_mb": file,
            "dataset_pickle_kb": len(pickle.dumps(dm.datasets["train"])) / 1e3}


def _command(kind: str, kwargs: dict[str, Any], windows: int) -> list[str]:
    return [sys.executable, "-m", "benchmarks.memory", kind, json.dumps(kwargs), str(windows)]


def _result(proc: subprocess.Popen, cmd: list[str]) -> dict[str, Any]:
    """The JSON a child printed last, or an error with its stderr."""
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} … failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def children(jobs: Sequence[tuple[str, dict[str, Any], int]], concurrent: bool = False
             ) -> list[dict[str, Any]]:
    """Run (kind, kwargs, windows) jobs, `prepare` or `iterate`, each in a fresh Python process,
    one after another or all at once; their JSON results."""
    results, running = [], []
    for job in jobs:
        cmd = _command(*job)
        running.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True), cmd))
        if not concurrent:
            results.append(_result(*running.pop()))
    return results + [_result(*r) for r in running]


def run(years: Sequence[int] = (1, 4), windows: int = 256, seq_len: int = 90,
        batch_size: int = 8, cache_dir: str | Path | None = None, concurrent: bool = False,
        prepare_here: bool = False) -> dict[str, Any]:
    """Prepare, then read, each archive in fresh subprocesses; peak RSS per archive and ratios.

    Faster smoke options: `concurrent` runs the children of the archives side by side (RSS is
    per process either way, but the read rates then share the cores); `prepare_here` prepares
    in this process (its prepare peak RSS is then this process's, not the preparation's own).
    """
    cache = Path(cache_dir or DEFAULT_CACHE)
    kws = [store_kwargs(y, cache, seq_len, batch_size) for y in years]
    prepared = ([prepare(kw) for kw in kws] if prepare_here
                else children([("prepare", kw, 0) for kw in kws], concurrent))
    read = children([("iterate", kw, windows) for kw in kws], concurrent)
    results: dict[str, Any] = {f"{y}y": {"prepare": p, "read": r}
                               for y, p, r in zip(years, prepared, read, strict=True)}
    small, large = (results[f"{y}y"]["read"] for y in (min(years), max(years)))
    results["ratios"] = {k: large[k] / small[k] for k in
                         ("peak_rss_mb", "peak_anon_mb", "peak_file_mb", "dataset_pickle_kb")}
    results["ratios"]["store_mb"] = (results[f"{max(years)}y"]["prepare"]["store_mb"]
                                     / results[f"{min(years)}y"]["prepare"]["store_mb"])
    results["settings"] = {"years": list(years), "windows": windows, "seq_len": seq_len,
                           "batch_size": batch_size, "num_workers": 0, "cache_dir": str(cache),
                           "concurrent": concurrent, "prepare_here": prepare_here}
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [f"{'archive':<9}{'store MB':>10}{'read peak RSS':>15}{'anon':>8}{'file':>8}"
             f"{'prepare peak':>14}"]
    for y in results["settings"]["years"]:
        r = results[f"{y}y"]
        lines.append(f"{y} y{'':<6}{r['prepare']['store_mb']:>10.0f}{r['read']['peak_rss_mb']:>15.0f}"
                     f"{r['read']['peak_anon_mb']:>8.0f}{r['read']['peak_file_mb']:>8.0f}"
                     f"{r['prepare']['peak_rss_mb']:>14.0f}")
    q = results["ratios"]
    lines.append(f"largest / smallest: store ×{q['store_mb']:.2f}, read peak RSS ×{q['peak_rss_mb']:.2f}"
                 f", anon ×{q['peak_anon_mb']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1:  # child process: prepare|iterate '<kwargs json>' windows
        fn = {"prepare": lambda kw, _: prepare(kw), "iterate": iterate}[sys.argv[1]]
        print(json.dumps(fn(json.loads(sys.argv[2]), int(sys.argv[3]))))
    else:
        print(format_table(run()))
