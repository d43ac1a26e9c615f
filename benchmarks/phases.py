"""Phase profile of a `make train` run: where its wall-clock and CPU seconds go.

Runs `python train.py [overrides]` in a fresh process (the default run when no overrides are
given; its output goes to a log file), measures the process's wall-clock time here and its CPU
time from the kernel's accounting, and reads the run's `timings.json` (`maelab.core.phases`):

    start-up            interpreter, Hydra's config composition and run directory
    import              torch, Lightning, torchmetrics, the model code
    data                building the DataModule (generating or loading train + validation)
    model               building the LightningModule (twice: training, then evaluation)
    fit · sanity check  Lightning's two validation batches before training
    fit · training      the training epochs (first batch fetch to last optimiser step)
    fit · validation    the per-epoch validation passes
    fit · other         loop set-up, checkpoints, logging between epochs
    checkpoint load     reading best.ckpt back for the evaluation
    calibration         the validation pass that fits thresholds and score normalisation
    test data / test    building the test split / the test pass
    figures             the evaluation figures (PNG)
    other               config checks, trainer set-up, results written
    exit                after the results: Hydra's callbacks, interpreter shutdown

    python -m benchmarks.phases [override ...]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, log_tail, run_process

# (phase name in timings.json, row label); fit's children are listed under it
TOP = ["import", "data", "model", "fit", "checkpoint load", "calibration", "test data", "test",
       "figures"]
FIT_CHILDREN = ["sanity check", "train", "validation"]
LABELS = {"sanity check": "fit · sanity check", "train": "fit · training",
          "validation": "fit · validation"}


def run_train(overrides: Sequence[str], out_dir: Path, env: dict[str, str] | None = None,
              python: str = sys.executable) -> dict[str, Any]:
    """One `train.py` process: exit code, wall and CPU seconds, and its timings.json records."""
    cmd = [python, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={out_dir}"]
    job = run_process(cmd, out_dir / "train.log", env)
    if job["returncode"]:
        raise RuntimeError(f"train.py {' '.join(overrides)} failed ({job['returncode']}): "
                           f"{log_tail(out_dir / 'train.log')}")
    job["timings"] = json.loads((out_dir / "timings.json").read_text())
    job["metrics"] = json.loads((out_dir / "metrics.json").read_text())
    return job


def profile(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows {phase, wall, cpu, detail} of one run, in run order, ending with `total`."""
    t = job["timings"]
    records = t["records"]

    def total(name: str) -> tuple[float, float, list[dict]]:
        rs = [r for r in records if r["phase"] == name]
        return sum(r["wall"] for r in rs), sum(r["cpu"] for r in rs), rs

    first = min(records, key=lambda r: r["start"])
    rows = [{"phase": "start-up", "wall": first["start"], "cpu": first["cpu_start"], "detail":
             "interpreter, Hydra" if t["since_process_start"] else "not measured on this OS"}]
    for name in TOP:
        wall, cpu, rs = total(name)
        if not rs:
            continue
        if name != "fit":
            rows.append({"phase": name, "wall": wall, "cpu": cpu, "detail": ""})
            continue
        inner_wall = inner_cpu = 0.0
        for child in FIT_CHILDREN:
            w, c, crs = total(child)
            inner_wall, inner_cpu = inner_wall + w, inner_cpu + c
            detail = ""
            if child == "train" and crs:
                steps = [r["step_cpu"] for r in crs[1:] if r["step_cpu"] is not None] or \
                        [r["step_cpu"] for r in crs if r["step_cpu"] is not None]
                detail = (f"{len(crs)} epochs × {crs[0]['steps']} steps, median epoch "
                          f"{statistics.median(r['wall'] for r in crs):.2f} s, step "
                          f"{statistics.median(steps) * 1e3:.1f} ms CPU")
            elif child == "validation" and crs:
                detail = f"{len(crs)} passes, median {statistics.median(r['wall'] for r in crs):.2f} s"
            rows.append({"phase": LABELS[child], "wall": w, "cpu": c, "detail": detail})
        rows.append({"phase": "fit · other", "wall": wall - inner_wall, "cpu": cpu - inner_cpu,
                     "detail": "loop set-up, checkpoints, logging"})
    timed_wall = sum(r["wall"] for r in records if r["phase"] in TOP)
    timed_cpu = sum(r["cpu"] for r in records if r["phase"] in TOP)
    rows.append({"phase": "other", "wall": t["taken_at"] - first["start"] - timed_wall,
                 "cpu": t["cpu_at_take"] - first["cpu_start"] - timed_cpu,
                 "detail": "config checks, trainer set-up, results written"})
    rows.append({"phase": "exit", "wall": job["wall"] - t["taken_at"],
                 "cpu": job["cpu"] - t["cpu_at_take"], "detail": "Hydra callbacks, shutdown"})
    rows.append({"phase": "total", "wall": job["wall"], "cpu": job["cpu"], "detail": ""})
    return rows


def run(overrides: Sequence[str] = (), env: dict[str, str] | None = None) -> dict[str, Any]:
    """Profile one `train.py` run (the default run without overrides)."""
    with tempfile.TemporaryDirectory() as tmp:
        job = run_train(list(overrides), Path(tmp) / "run", env)
    m = job["metrics"]
    return {"profile": profile(job), "wall": job["wall"], "cpu": job["cpu"],
            "metrics": {"score": m.get("score"), **m.get("primary", {})},
            "timings": job["timings"], "settings": {"overrides": list(overrides)}}


def format_profile(rows: list[dict[str, Any]], title: str = "") -> str:
    """Markdown table of a profile: seconds, share of the total, detail."""
    wall, cpu = rows[-1]["wall"], rows[-1]["cpu"]
    out = [title] if title else []
    out += ["| phase | wall s | share | CPU s | share | |", "|---|---|---|---|---|---|"]
    for r in rows:
        bold = "**" if r["phase"] == "total" else ""
        out.append(f"| {bold}{r['phase']}{bold} | {r['wall']:.2f} | {r['wall'] / wall:.0%} | "
                   f"{r['cpu']:.2f} | {r['cpu'] / cpu:.0%} | {r['detail']} |")
    return "\n".join(out)


if __name__ == "__main__":
    result = run(sys.argv[1:])
    print(format_profile(result["profile"], f"train.py {' '.join(sys.argv[1:])}".strip()))
