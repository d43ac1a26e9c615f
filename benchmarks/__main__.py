"""`make bench`: run the benchmark suite, print one table, write `bench.json`.

    python -m benchmarks [--quick] [--out PATH] [--only NAME,…] [--threads N]
                                [--isolate | --no-isolate]
                                [--reference DIR [--reference-python EXE]]

Every figure is a median of repetitions after warm-up and every comparison a ratio of
measurements interleaved in one run (see each module's docstring). By default each benchmark
runs in a fresh Python process, so its peak RSS (VmHWM) is its own; `--no-isolate` (the default
with `--quick`, which saves an interpreter start per benchmark) runs them here and resets the
peak before each. `--threads` sets torch's intra-op threads (default 1: on a shared machine
more threads than free cores make OpenMP spin; 0 keeps torch's default). `--quick` is a smoke
run with tiny sizes: the figures are not meaningful. `phases` profiles a default `make train`
run (about 8 minutes on 2 shared cores); `reference` runs maelab and the design's code side by
side when `--reference` names a checkout of it (skipped otherwise).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, machine, rss_mb

log = logging.getLogger("benchmarks")

TINY_SDMAE = ["data.n_train=256", "data.n_val=64", "data.n_test=64", "model.net.d_model=32",
              "model.net.encoder_depth=1", "model.net.teacher_depth=1"]
TINY_MMMAE = {"d_model": 32, "depth": 1, "heads": 2, "batch_size": 1}

# name: (module, full-run kwargs, --quick kwargs)
SUITE: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "sdmae_throughput": ("benchmarks.sdmae_throughput", {},
                         {"strategies": ["patch"], "steps": 2, "warmup": 1, "rounds": 2,
                          "overrides": TINY_SDMAE}),
    "sdmae_inference": ("benchmarks.sdmae_inference", {"length": 30_000},
                        {"length": 1_000, "repeats": 2, "overrides": TINY_SDMAE}),
    "sdmae_all_positions": ("benchmarks.sdmae_all_positions", {},
                            {"batch_size": 16, "repeats": 2, "overrides": TINY_SDMAE}),
    "mmmae_encoder": ("benchmarks.mmmae_encoder", {"batch_size": 4, "repeats": 5},
                      {**TINY_MMMAE, "temporal_patch": 30, "repeats": 2, "warmup": 1}),
    "mmmae_step": ("benchmarks.mmmae_step", {"batch_size": 1, "repeats": 3, "full_repeats": 1},
                   {"seq_len": 30, "repeats": 1, "warmup": 0,
                    "overrides": ["model.net.d_model=16", "model.net.depth=1", "model.net.heads=2",
                                  "model.net.decoder_dim=16", "model.net.decoder_depth=1",
                                  "model.net.decoder_heads=2"]}),
    "mfu": ("benchmarks.mfu", {},
            {**TINY_MMMAE, "repeats": 2, "gemm_n": 256}),
    "hydro_loader": ("benchmarks.hydro_loader", {"days": 365, "repeats": 5},
                     {"days": 120, "windows": 8, "repeats": 2, "batch_size": 4}),
    "hydro_step": ("benchmarks.hydro_step", {},
                   {"repeats": 2, "overrides": ["model.net.d_model=32", "model.net.depth=1",
                                                "model.net.decoder_depth=1", "data.batch_size=2"]}),
    "memory": ("benchmarks.memory", {},
               {"years": [1, 2], "windows": 16, "seq_len": 30, "concurrent": True,
                "prepare_here": True}),
    "config_error": ("benchmarks.config_error", {}, {"repeats": 1, "warmup": 0}),
    "phases": ("benchmarks.phases", {},
               {"overrides": ["debug=fast", *TINY_SDMAE]}),
    "reference": ("benchmarks.reference", {},
                  {"runs": 1, "epochs": 2, "n_train": 128, "n_val": 64, "n_test": 64,
                   "default_batch_epochs": 2}),
}


def set_threads(threads: int) -> None:
    """Intra-op threads of torch here and in child processes (0: leave torch's default)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # no spinning on a shared machine
    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def _reset_peak_rss() -> None:
    """Restart VmHWM from the current RSS (Linux; ignored elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def run_here(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One benchmark in this process: its result, seconds and RSS."""
    module = importlib.import_module(SUITE[name][0])
    _reset_peak_rss()
    before = rss_mb()["rss"]
    t0 = time.perf_counter()
    result = module.run(**kwargs)
    result["seconds"] = time.perf_counter() - t0
    result["memory"] = {"rss_before_mb": before, "peak_rss_mb": rss_mb()["peak"]}
    return result


def run_isolated(name: str, kwargs: dict[str, Any], threads: int) -> dict[str, Any]:
    """One benchmark in a fresh Python process, via a temporary JSON file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks", "--child", name, "--kwargs",
               json.dumps(kwargs), "--out", str(out), "--threads", str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode or not out.exists():
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                               else f"exit status {proc.returncode}")
        return json.loads(out.read_text())


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


Row = dict[str, Any]  # benchmark, label, measured, ratio, target, met (True / False / None)


def _rows_of(name: str, r: dict[str, Any]) -> list[Row]:
    """Table rows of one benchmark's results."""
    def row(label: str, measured: str, ratio: str = "", target: str = "",
            met: bool | None = None) -> Row:
        return {"benchmark": name, "label": label, "measured": measured, "ratio": ratio,
                "target": target, "met": met}

    if "error" in r:
        return [row(name, f"not available: {r['error']}")]
    if "skipped" in r:
        return [row(name, r["skipped"])]
    if name == "phases":
        p = {x["phase"]: x for x in r["profile"]}
        parts = [(k, p[k]["wall"]) for k in ("import", "fit · training", "fit · validation",
                                              "figures") if k in p]
        return [row("make train · phases",
                    f"{r['wall']:.0f} s wall ({r['cpu']:.0f} s CPU): "
                    + ", ".join(f"{k.replace('fit · ', '')} {v:.1f} s" for k, v in parts),
                    "table below")]
    if name == "reference":
        e, st, sd = r["end_to_end_wall"], r["steady_cpu"], r["settings"]
        return [row("vs design · end to end",
                    f"maelab {e['maelab_s']:.1f} s · design {e['design_s']:.1f} s "
                    f"(median of {sd['runs']}, wall)",
                    f"{e['speedup']:.2f}× faster (CPU time {r['end_to_end_cpu']['speedup']:.2f}×)",
                    "≥ 2×", e["speedup"] >= 2),
                row("vs design · steady state",
                    f"batch {sd['batch_size']}: maelab {_fmt_rate(st['maelab_windows_per_s'])} · "
                    f"design {_fmt_rate(st['design_windows_per_s'])} windows/s; maelab at batch "
                    f"{sd['default_batch_size']}: {_fmt_rate(st['maelab_default_batch_windows_per_s'])}",
                    f"{st['speedup_same_batch']:.2f}× same batch (CPU time; "
                    f"{st['speedup_default_batches']:.2f}× at each default)",
                    "≥ 2.5×", st["speedup_same_batch"] >= 2.5)]
    if name == "sdmae_throughput":
        out = []
        for strategy, s in r.items():
            if strategy not in ("settings", "seconds", "memory"):
                w = s["wall"]
                out.append(row(
                    f"SD-MAE train · {strategy}",
                    f"Lightning {_fmt_rate(w['lightning_windows_per_s'])} · plain "
                    f"{_fmt_rate(w['plain_windows_per_s'])} windows/s",
                    f"{s['overhead_ratio']:.3f} overhead (CPU time; wall {w['overhead_ratio']:.3f})",
                    "≤ 1.05", s["overhead_ratio"] <= 1.05))
        return out
    if name == "sdmae_inference":
        s, v = r["settings"], r["vus_pr"]
        return [row(f"SD-MAE scoring · {s['strategy']}",
                    f"{_fmt_rate(r['points_per_s'])} points/s · {_fmt_rate(r['windows_per_s'])} "
                    f"windows/s ({s['length']:,}-step series)"),
                row(f"VUS-PR · buffers ≤ {v['max_window']}",
                    f"{v['points']:,} points in {v['seconds']:.3f} s",
                    f"{v['seconds_per_25k_points']:.2f} s per 25,000 points", "≤ 1 s",
                    v["seconds_per_25k_points"] <= 1.0)]
    if name == "sdmae_all_positions":
        sec = r["median_seconds"]
        return [row(f"SD-MAE all_positions · {r['passes']} passes",
                    f"last_n {sec['last_n'] * 1e3:.0f} ms · all_positions "
                    f"{sec['all_positions'] * 1e3:.0f} ms · naive loop over {r['blocks']} blocks "
                    f"{sec['naive_loop'] * 1e3:.0f} ms (batch {r['batch_size']})",
                    f"{r['ratio_all_positions']:.2f}× last_n (naive {r['ratio_naive_loop']:.2f}×)",
                    "≤ 3×", r["met"])]
    if name == "mmmae_encoder":
        s, bs = r["settings"], r["settings"]["batch_size"]
        vis, full = r["visible_only"], r["all_tokens"]
        return [row(f"MM-MAE encoder · {s['ratio']:.0%} hidden",
                    f"visible-only {vis['step_s']:.3f} s ({_fmt_rate(bs * vis['tokens'] / vis['step_s'])}"
                    f" tok/s) · all tokens {full['step_s']:.3f} s "
                    f"({_fmt_rate(bs * full['tokens'] / full['step_s'])} tok/s)",
                    f"{r['speedup']:.1f}× faster", "≥ 3×", r["speedup"] >= 3)]
    if name == "mmmae_step":
        s, rs = r["settings"], r["rows"]
        names = list(rs)
        base = rs[names[0]]
        return [row(f"MM-MAE step · {n}",
                    f"{rs[n]['step_s']:.3f} s per step of {s['batch_size']} × {s['seq_len']}-day "
                    f"window{'s' if s['batch_size'] > 1 else ''} (median of {rs[n]['steps_timed']})",
                    "" if n == names[0] else f"{rs[n]['over_default']:.2f}× the default's "
                    f"{base['step_s']:.3f} s") for n in names]
    if name == "mfu":
        s = r["settings"]
        return [row(f"MFU · MM-MAE d={s['d_model']}",
                    f"{r['flops']['model'] / 1e9:.1f} GFLOP/step in {r['step_s']:.2f} s = "
                    f"{r['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s; peak "
                    f"{s.get('gemm_dtype', 'float32')} GEMM "
                    f"{r['peak_gemm_flops_per_s'] / 1e9:.1f} GFLOP/s",
                    f"{r['mfu']:.0%} MFU", "≥ 30 %", r["mfu"] >= 0.30)]
    if name == "hydro_loader":
        st, nc = r["store"], r["netcdf"]
        return [row("Hydro windows · store vs NetCDF",
                    f"store {_fmt_rate(st['windows_per_s'])} w/s, {st['mb_per_window']:.1f} MB/w · "
                    f"NetCDF {_fmt_rate(nc['windows_per_s'])} w/s, {nc['mb_per_window']:.1f} MB/w",
                    f"{r['speedup']:.1f}× faster, {r['bytes_ratio']:.0%} of the bytes")]
    if name == "hydro_step":
        return [row("Hydro loader vs MM-MAE step",
                    f"batch of {r['settings']['batch_size']}: loader {r['loader_batch_s'] * 1e3:.0f} ms"
                    f" · step {r['step_s'] * 1e3:.0f} ms",
                    f"loader {r['step_over_loader']:.0f}× faster", "≥ 5×", r["step_over_loader"] >= 5)]
    if name == "config_error":
        return [row(f"Config error · {r['settings']['override']}",
                    f"{r['cpu_s']:.2f} s CPU to the message · importing the pipeline "
                    f"{r['import_pipeline_cpu_s']:.2f} s",
                    f"{r['import_over_error']:.1f}× less than the import alone", "≤ 3 s CPU",
                    r["cpu_s"] <= 3.0)]
    ys = r["settings"]["years"]  # memory
    lo, hi = (r[f"{y}y"] for y in (min(ys), max(ys)))
    q = r["ratios"]
    return [row(f"Hydro archive {min(ys)} y → {max(ys)} y",
                f"store {lo['prepare']['store_mb']:.0f} → {hi['prepare']['store_mb']:.0f} MB; read "
                f"peak RSS {lo['read']['peak_rss_mb']:.0f} → {hi['read']['peak_rss_mb']:.0f} MB "
                f"(anon {lo['read']['peak_anon_mb']:.0f} → {hi['read']['peak_anon_mb']:.0f})",
                f"×{q['peak_anon_mb']:.2f} anon (×{q['peak_rss_mb']:.2f} total)", "anon ≈ 1",
                q["peak_anon_mb"] <= 1.1)]


def rows(results: dict[str, Any]) -> list[Row]:
    """Every table row of a suite run, in run order."""
    return [row for name, r in results["benchmarks"].items() for row in _rows_of(name, r)]


def print_table(results: dict[str, Any]) -> None:
    """The rich table of the run, with peak RSS per benchmark and the machine."""
    from rich.console import Console
    from rich.table import Table

    m, s = results["machine"], results["settings"]
    table = Table(title=f"maelab benchmarks{' (--quick: smoke sizes)' if s['quick'] else ''}")
    for col, just in (("benchmark", "left"), ("measured (median)", "left"), ("ratio", "left"),
                      ("target", "left"), ("met", "center"), ("peak RSS MB", "right")):
        table.add_column(col, justify=just)
    seen: set[str] = set()
    for r in rows(results):
        rss = results["benchmarks"][r["benchmark"]].get("memory", {}).get("peak_rss_mb")
        show = rss is not None and r["benchmark"] not in seen
        seen.add(r["benchmark"])
        table.add_row(r["label"], r["measured"], r["ratio"], r["target"],
                      {True: "✓", False: "✗", None: ""}[r["met"]], f"{rss:,.0f}" if show else "")
    console = Console(width=200)
    console.print(table)
    phases = results["benchmarks"].get("phases", {})
    if "profile" in phases:
        from benchmarks.phases import format_profile

        console.print(format_profile(phases["profile"], "make train: phase profile "
                                     f"({' '.join(phases['settings']['overrides']) or 'default run'})"),
                      markup=False)
    console.print(f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM; GPU: {m['gpu'] or 'none'};"
                  f" torch {m['torch']}; {s['threads'] or 'default'} thread(s); load average at start "
                  f"{m['load_average']}; {'one process per benchmark' if s['isolate'] else 'one process'};"
                  f" {results['seconds']:.0f} s; results in {s['out']}")


def run_suite(quick: bool, out: Path, only: list[str] | None, threads: int,
              isolate: bool, reference: str | None = None,
              reference_python: str | None = None) -> dict[str, Any]:
    """Run the selected benchmarks, write `out`; the results dict."""
    names = only or list(SUITE)
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(SUITE)}")
    set_threads(threads)
    runner: Callable[[str, dict[str, Any]], dict[str, Any]] = (
        functools.partial(run_isolated, threads=threads) if isolate else run_here)
    results: dict[str, Any] = {
        "machine": machine(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"quick": quick, "threads": threads, "isolate": isolate, "out": str(out),
                     "benchmarks": names, "reference": reference},
        "benchmarks": {},
    }
    t0 = time.perf_counter()
    for name in names:
        kwargs = SUITE[name][2 if quick else 1]
        if name == "reference":
            if not reference:
                from benchmarks.reference import SKIP

                log.info("reference %s", SKIP)
                results["benchmarks"][name] = {"skipped": SKIP}
                continue
            kwargs = {**kwargs, "reference": reference, "reference_python": reference_python}
        log.info("running %s %s", name, kwargs)
        try:
            results["benchmarks"][name] = runner(name, kwargs)
        except Exception as exc:  # reported in the table; the other benchmarks still run
            log.warning("%s failed: %s", name, exc)
            results["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
    results["seconds"] = time.perf_counter() - t0
    results["targets"] = [{k: r[k] for k in ("benchmark", "label", "ratio", "target", "met")}
                          for r in rows(results) if r["met"] is not None]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run with tiny sizes (< 1 min)")
    p.add_argument("--out", type=Path, default=ROOT / "bench.json", help="JSON results path")
    p.add_argument("--only", type=lambda s: s.split(","), help=f"subset of {','.join(SUITE)}")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: default)")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                   help="one fresh process per benchmark (default: on, off with --quick)")
    p.add_argument("--reference", help="checkout of the design's code (yunkio/anomaly_mae "
                   "@942b94e) for the side-by-side row; skipped without it")
    p.add_argument("--reference-python", help="interpreter with the design's requirements "
                   "(default: this one)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:  # one benchmark inside a fresh process started by run_isolated
        set_threads(args.threads)
        result = run_here(args.child, json.loads(args.kwargs))
        args.out.write_text(json.dumps(result, default=str))
        return result
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    isolate = not args.quick if args.isolate is None else args.isolate
    results = run_suite(args.quick, args.out, args.only, args.threads, isolate, args.reference,
                        args.reference_python)
    print_table(results)
    return results


if __name__ == "__main__":
    main()
