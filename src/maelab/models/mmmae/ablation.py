"""MM-MAE ablation table of a finished multirun: mean ± std over seeds of the test metrics.

    python -m maelab.models.mmmae.ablation <sweep dir>

Every completed job folder (`maelab.report.sweep.find_job_dirs`) gives its overrides and the
`test` rows of its `metrics.json`; jobs are grouped by the swept keys other than `seed`. Columns:
RMSE per grid (MM-MAE), riverflow NSE and KGE on hidden days (median over catchments), the
cross-modal riverflow NSE (all days hidden) and the job's wall time. Below the settings, the
baselines of the same jobs (each seed has its own fixed test masks, hence their spread): the
visible-neighbour mean and climatology per grid, `interpolation_log` and climatology for
riverflow. Prints a markdown table and writes `mmmae_ablation.{md,csv}` into the sweep folder.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from maelab.core.io import atomic_write_text
from maelab.report.sweep import SEED_KEY, find_job_dirs, parse_overrides, swept_keys

GRIDS = ("precipitation", "soil_moisture", "temperature")
CROSS = "riverflow (all days hidden)"
# column: (heading, row name without the method, metric)
COLUMNS = {
    **{g: (f"{g} RMSE", g, "rmse") for g in GRIDS},
    "riverflow_nse": ("riverflow NSE", "riverflow", "nse_median"),
    "riverflow_kge": ("riverflow KGE", "riverflow", "kge_median"),
    "cross_nse": ("cross-modal NSE", CROSS, "nse_median"),
}
BASELINES = {  # column: the baseline rows shown under the settings
    **{g: ("neighbour_mean", "climatology") for g in GRIDS},
    "riverflow_nse": ("interpolation_log", "climatology"),
    "riverflow_kge": ("interpolation_log", "climatology"),
    "cross_nse": ("climatology",),
}
LOWER_IS_BETTER = set(GRIDS)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def collect(sweep_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per completed job: overrides, each column for "mmmae" and every baseline method
    (`<column>/<method>`), wall time; and the keys the rows are grouped by."""
    rows, keys = [], {}
    for job in find_job_dirs(sweep_dir):
        overrides = parse_overrides(list(OmegaConf.load(job / ".hydra" / "overrides.yaml")))
        test = _read(job / "metrics.json").get("test")
        status = _read(job / "status.json")
        if not test or status.get("status", "COMPLETED") != "COMPLETED":
            continue
        keys |= dict.fromkeys(overrides)
        row: dict[str, Any] = {"job": job.name, **overrides,
                               "wall_min": (status.get("wall_time_s") or math.nan) / 60}
        for col, (_, name, metric) in COLUMNS.items():
            for method in ("mmmae", *BASELINES[col]):
                value = test.get(f"{name} / {method}", {}).get(metric)
                row[f"{col}/{method}"] = math.nan if value is None else float(value)
        rows.append(row)
    jobs = pd.DataFrame(rows)
    group = [k for k in swept_keys(jobs, list(keys)) if k != SEED_KEY] if len(jobs) else []
    if group:
        jobs[group] = jobs[group].fillna("(default)")
    return jobs, group


def _cell(values: pd.Series) -> str:
    v = values.dropna()
    if v.empty:
        return "—"
    return f"{v.mean():.4f}" if len(v) == 1 else f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def table(jobs: pd.DataFrame, group: list[str]) -> str:
    """Markdown: a row per setting (mean ± std over its seeds, n, wall minutes) and a row per
    baseline; the best mean of each column among the settings in bold."""
    header = ["setting", "n", *(h for h, _, _ in COLUMNS.values()), "wall (min)"]
    groups = list(jobs.groupby(group, sort=False)) if group else [(("all",), jobs)]
    means = {col: [g[f"{col}/mmmae"].mean() for _, g in groups] for col in COLUMNS}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for i, (values, g) in enumerate(groups):
        values = values if isinstance(values, tuple) else (values,)
        label = " ".join(f"{k}={v}" for k, v in zip(group, values, strict=True)) or "all"
        cells = []
        for col in COLUMNS:
            best = (min if col in LOWER_IS_BETTER else max)(m for m in means[col] if m == m) \
                if any(m == m for m in means[col]) else None
            text = _cell(g[f"{col}/mmmae"])
            cells.append(f"**{text}**" if len(groups) > 1 and means[col][i] == best else text)
        lines.append(f"| {label} | {len(g)} | " + " | ".join(cells)
                     + f" | {_cell(g['wall_min']).replace('.0000', '')} |")
    methods = dict.fromkeys(m for ms in BASELINES.values() for m in ms)
    for method in methods:
        cells = [_cell(jobs[f"{col}/{method}"]) if method in BASELINES[col] else ""
                 for col in COLUMNS]
        lines.append(f"| baseline: {method} | {len(jobs)} | " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"


def write(sweep_dir: str | Path) -> str:
    """Collect, write `mmmae_ablation.{md,csv}`, return the markdown."""
    sweep_dir = Path(sweep_dir)
    jobs, group = collect(sweep_dir)
    if jobs.empty:
        raise SystemExit(f"no completed MM-MAE job with metrics.json under {sweep_dir}")
    seeds = sorted(jobs[SEED_KEY].unique()) if SEED_KEY in jobs else []
    md = (f"MM-MAE ablation, {sweep_dir}: {len(jobs)} completed jobs, mean ± std (ddof=1) over "
          f"seeds {', '.join(map(str, seeds)) or '—'}; test period, RMSE in physical units, "
          "NSE/KGE medians over catchments.\n\n" + table(jobs, group))
    atomic_write_text(sweep_dir / "mmmae_ablation.md", md)
    atomic_write_text(sweep_dir / "mmmae_ablation.csv", jobs.to_csv(index=False))
    return md


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m maelab.models.mmmae.ablation",
                                description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", type=Path)
    print(write(p.parse_args(argv).sweep_dir))


if __name__ == "__main__":
    main()
