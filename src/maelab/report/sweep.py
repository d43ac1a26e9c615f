"""Aggregate a finished Hydra multirun into an ablation table and a bar chart.

    python -m maelab.report <sweep dir>

Every job folder (one holding `.hydra/overrides.yaml`) becomes a row of `ablation.csv`: its
overrides, status (`status.json`, written by `maelab.report.callbacks.JobStatusCallback`),
primary test metrics, the best value of its checkpoint-selection metric (`metrics.json`; the
run's `optimized_metric` in `.hydra/config.yaml`, e.g. val/auroc or val/loss, names the column)
and the error of a failed job. Jobs are grouped by the swept keys (override keys whose value
differs between jobs) except `seed`; `ablation.md` and `ablation_summary.csv` give mean ± std
(ddof=1) over seeds per group, the best group marked by mean test AUROC, and list every job
that did not complete. Columns no job has a value for (the anomaly metrics of MM-MAE jobs) are
left out of the table and plot. `ablation.png` plots the means with std error bars. `--score
reconstruction` (or discrepancy, combined) reports that score's test metrics instead of each
run's primary one, into ablation_<score>.* files.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import OmegaConf

from maelab.core.io import atomic_write_bytes, atomic_write_text

SEED_KEY = "seed"
# column -> (heading, path into metrics.json); the first one ranks the groups
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "test_auroc": ("test AUROC", ("primary", "auroc")),
    "test_auprc": ("test AUPRC", ("primary", "auprc")),
    "test_f1": ("test F1", ("primary", "f1")),
    "best_val_metric": ("best val metric", ("optimized_metric",)),
}
SELECTION = "best_val_metric"  # its heading and direction come from the jobs' optimized_metric
RANK_METRIC = next(iter(METRICS))
COMPLETED = "COMPLETED"
DEFAULT = "(default)"


@dataclass
class Report:
    """What `write_report` produced."""

    jobs: pd.DataFrame
    summary: pd.DataFrame
    group_keys: list[str]
    markdown: str
    csv_path: Path
    summary_csv_path: Path
    markdown_path: Path
    plot_path: Path


def _natural_key(text: Any) -> list[Any]:
    """Sort key that orders "2" before "10" (job folders, seeds)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(text))]


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders under `sweep_dir` (those with `.hydra/overrides.yaml`), in job order."""
    dirs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    return sorted(dirs - {sweep_dir}, key=lambda p: _natural_key(p.relative_to(sweep_dir)))


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """`["masking=patch", "+x=1", "~y"]` -> `{"masking": "patch", "x": "1", "y": "(deleted)"}`."""
    out = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        out[key.lstrip("+~")] = value if sep else "(deleted)"
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _dig(obj: Any, path: tuple[str, ...]) -> float:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return float(obj) if isinstance(obj, (int, float)) else math.nan


def _read_config(job_dir: Path) -> dict[str, Any]:
    """The job's composed config (`.hydra/config.yaml`) as a dict, unresolved; {} if unreadable."""
    try:
        return OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "config.yaml")) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return {}


def selection_metric(jobs: pd.DataFrame) -> tuple[str, str | None]:
    """(heading, "min" | "max" | None) of the selection-metric column: the completed jobs' shared
    `optimized_metric` and its mode; a generic heading and no direction if they differ."""
    done = jobs[jobs["status"] == COMPLETED]
    names = set(done["val_metric_name"].dropna()) - {""}
    modes = set(done["val_metric_mode"].dropna()) - {""}
    heading = f"best {names.pop()}" if len(names) == 1 else METRICS[SELECTION][0]
    return heading, (modes.pop() if len(modes) == 1 else None)


def load_job(job_dir: Path, score: str | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """(overrides, record) of one job: status, error line, score name and the test metrics of
    `score` (None: the run's primary score)."""
    overrides = parse_overrides(list(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")))
    status = _read_json(job_dir / "status.json") or {}
    metrics = _read_json(job_dir / "metrics.json")
    state = status.get("status") or (COMPLETED if metrics else "INCOMPLETE")
    error = ""
    if state != COMPLETED:
        error = status.get("error_type", "no status.json: still running, killed or crashed")
        if status.get("error"):
            error += f": {status['error']}"
        if status.get("error_location"):
            error += f" ({status['error_location']})"
    elif metrics is None:
        state, error = "NO_METRICS", "completed but wrote no metrics.json"
    metrics = metrics or {}
    run_cfg = _read_config(job_dir)
    if score is None:
        name = metrics.get("score", "")
    else:
        name = score if score in metrics.get("test", {}) else ""
    record = {"status": state, "error": error, "score_type": name,
              "wall_time_s": status.get("wall_time_s"),
              "val_metric_name": str(run_cfg.get("optimized_metric") or ""),
              "val_metric_mode": str(run_cfg.get("optimized_metric_mode") or "")}
    for col, (_, path) in METRICS.items():
        record[col] = _dig(metrics, ("test", score, *path[1:]) if score and path[0] == "primary" else path)
    return overrides, record


def collect_jobs(sweep_dir: str | Path, score: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per job (`job`, override columns, status, error, metrics of `score`, None: the
    primary one) and the override keys."""
    sweep_dir = Path(sweep_dir)
    rows, keys = [], {}
    for job_dir in find_job_dirs(sweep_dir):
        overrides, record = load_job(job_dir, score)
        keys |= dict.fromkeys(overrides)
        rows.append({"job": str(job_dir.relative_to(sweep_dir)), **overrides, **record})
    override_keys = list(keys)
    columns = ["job", *override_keys, "status", "score_type", *METRICS, "val_metric_name",
               "val_metric_mode", "wall_time_s", "error"]
    jobs = pd.DataFrame(rows, columns=columns)
    jobs[override_keys] = jobs[override_keys].fillna(DEFAULT)
    return jobs, override_keys


def expected_job_count(sweep_dir: Path) -> int | None:
    """Jobs a basic-sweeper multirun launches, from its `multirun.yaml`; None if unknown."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        hydra_cfg = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
        if not str(hydra_cfg.sweeper._target_).endswith(".BasicSweeper"):
            return None
        params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.params or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *hydra_cfg.overrides.task])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # no or unreadable multirun.yaml: the folders are all there is to go by
        return None


def swept_keys(jobs: pd.DataFrame, override_keys: list[str]) -> list[str]:
    """Override keys whose value differs between jobs."""
    return [k for k in override_keys if jobs[k].nunique() > 1]


def summarize(jobs: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group: n completed, failed count, mean/std (ddof=1) of each metric; `best` by test AUROC."""
    ok = jobs["status"] == COMPLETED
    keyed = jobs.assign(_all="all") if not group_keys else jobs
    by = group_keys or ["_all"]
    rows = []
    for values, group in keyed.groupby(by, sort=False):
        values = values if isinstance(values, tuple) else (values,)
        done = group[ok[group.index]]
        row: dict[str, Any] = dict(zip(group_keys, values, strict=False))
        row |= {"score_type": ", ".join(sorted(set(done["score_type"]) - {""})),
                "n": int(len(done)), "failed": int(len(group) - len(done))}
        for col in METRICS:
            vals = done[col].dropna()
            row[f"{col}_mean"] = vals.mean() if len(vals) else math.nan
            row[f"{col}_std"] = vals.std(ddof=1) if len(vals) > 1 else math.nan
        rows.append(row)
    summary = pd.DataFrame(rows)
    rank = summary[f"{RANK_METRIC}_mean"]
    summary["best"] = rank.notna() & (rank == rank.max())
    return summary


def shown_metrics(summary: pd.DataFrame) -> list[str]:
    """The METRICS columns some group has a value for (MM-MAE jobs have no anomaly metrics)."""
    return [c for c in METRICS if summary[f"{c}_mean"].notna().any()]


def column_headings(selection_heading: str) -> dict[str, str]:
    """METRICS column → heading, the selection metric's given (`selection_metric`)."""
    return {c: h for c, (h, _) in METRICS.items()} | {SELECTION: selection_heading}


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]


def to_markdown(jobs: pd.DataFrame, summary: pd.DataFrame, group_keys: list[str],
                constants: dict[str, str], title: str, expected: int | None = None) -> str:
    """The summary table (best column values bold, best row ★) and the list of jobs that failed;
    `expected`: jobs the sweep launches, to flag jobs that never started."""
    lines = [f"## {title}", ""]
    if expected is not None and expected > len(jobs):
        lines += [f"**{expected - len(jobs)} of {expected} jobs never started** (the multirun "
                  "stopped early); they are missing from the table.", ""]
    seeds = sorted(set(jobs[SEED_KEY]), key=_natural_key) if SEED_KEY in jobs else []
    over = f"seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else "the jobs of each group"
    lines.append(f"{len(jobs)} jobs, {int((jobs['status'] == COMPLETED).sum())} completed; "
                 f"mean ± std (ddof=1) over {over}.")
    if constants:
        lines.append("Fixed overrides: " + " ".join(f"`{k}={v}`" for k, v in constants.items()) + ".")
    wall = pd.to_numeric(jobs["wall_time_s"], errors="coerce").sum()
    if wall > 0:
        lines.append(f"Total job time {wall / 60:.1f} min.")
    lines.append("")
    shown = shown_metrics(summary)
    selection_heading, selection_mode = selection_metric(jobs)
    headings = column_headings(selection_heading)
    best_of = {}
    for c in shown:
        means = summary[f"{c}_mean"]
        if c != SELECTION:
            best_of[c] = means.max()
        elif selection_mode is not None:  # mixed directions: nothing is "best"
            best_of[c] = means.min() if selection_mode == "min" else means.max()
    header = ["", *(group_keys or ["group"]), "score type", "n", "failed",
              *(headings[c] for c in shown)]
    rows = []
    for _, r in summary.iterrows():
        cells = ["★" if r["best"] else "", *(r[k] for k in group_keys or []), r["score_type"],
                 r["n"], r["failed"]]
        for c in shown:
            text = _fmt(r[f"{c}_mean"], r[f"{c}_std"])
            cells.append(f"**{text}**" if c in best_of and r[f"{c}_mean"] == best_of[c] else text)
        rows.append(cells if group_keys else [cells[0], "all", *cells[1:]])
    lines += _md_table(header, rows)
    notes = []
    if RANK_METRIC in shown:
        notes.append(f"★ best mean {METRICS[RANK_METRIC][0]}; bold: best mean per column. "
                     "Test metrics of the score shown (F1 at the validation threshold)")
    if SELECTION in shown:
        direction = {"min": " (lower is better)", "max": " (higher is better)"}.get(
            selection_mode or "", "")
        notes.append(f"{headings[SELECTION]} is the checkpoint-selection metric{direction}")
    if len(shown) < len(METRICS):
        left = ", ".join(METRICS[c][0] for c in METRICS if c not in shown)
        notes.append(f"no job has {left}: left out")
    lines += ["", "; ".join(notes) + "."]
    failed = jobs[jobs["status"] != COMPLETED]
    if len(failed):
        lines += ["", f"### Jobs that did not complete ({len(failed)})", ""]
        swept = [k for k in jobs.columns if k in group_keys or k == SEED_KEY]
        lines += _md_table(["job", "overrides", "status", "error"], [
            [r["job"], " ".join(f"{k}={r[k]}" for k in swept), r["status"], r["error"]]
            for _, r in failed.iterrows()])
    return "\n".join(lines) + "\n"


def _group_label(row: pd.Series, group_keys: list[str]) -> str:
    if not group_keys:
        return "all"
    if len(group_keys) == 1:
        return str(row[group_keys[0]])
    return "\n".join(f"{k}={row[k]}" for k in group_keys)


def plot_summary(summary: pd.DataFrame, group_keys: list[str], title: str,
                 headings: dict[str, str] | None = None) -> bytes:
    """Grouped bars (one per metric that has values) of the group means with std error bars, as
    PNG bytes; `headings`: legend labels by column (default: METRICS')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [_group_label(r, group_keys) + (" ★" if r["best"] else "") for _, r in summary.iterrows()]
    headings = headings or {c: h for c, (h, _) in METRICS.items()}
    shown = shown_metrics(summary) or list(METRICS)
    x = np.arange(len(summary))
    width = 0.8 / len(shown)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(summary) + 2), 4.2))
    for i, col in enumerate(shown):
        mean = summary[f"{col}_mean"].to_numpy(float)
        std = summary[f"{col}_std"].to_numpy(float)  # NaN (one seed): no error bar
        ax.bar(x + (i - (len(shown) - 1) / 2) * width, np.nan_to_num(mean), width, yerr=std,
               capsize=3, label=headings[col])
    for xi, (_, r) in zip(x, summary.iterrows(), strict=True):
        if r["n"] == 0:
            ax.text(xi, 0.02, "all failed", ha="center", va="bottom", rotation=90, color="tab:red")
    ax.set_xticks(x, labels)
    ax.set_xlabel(", ".join(group_keys) or "all jobs")
    tops = [(summary[f"{c}_mean"] + summary[f"{c}_std"].fillna(0)).max() for c in shown]
    ax.set_ylim(0, max([1.15, *(1.1 * t for t in tops if t == t)]))  # a loss may exceed 1
    ax.set_ylabel("mean ± std over seeds")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=len(shown), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_report(sweep_dir: str | Path, title: str | None = None, score: str | None = None) -> Report:
    """Aggregate the multirun in `sweep_dir`; write ablation.csv, ablation_summary.csv,
    ablation.md and ablation.png there (ablation_<score>.* for a `score` other than each run's
    primary one). Raises FileNotFoundError if it holds no job folder."""
    sweep_dir = Path(sweep_dir).resolve()
    jobs, override_keys = collect_jobs(sweep_dir, score)
    if jobs.empty:
        raise FileNotFoundError(f"{sweep_dir}: no job folders (with .hydra/overrides.yaml) found")
    swept = swept_keys(jobs, override_keys)
    group_keys = [k for k in swept if k != SEED_KEY]
    constants = {k: jobs[k].iloc[0] for k in override_keys if k not in swept}
    if title is None:
        title = f"Ablation: {sweep_dir.parent.name}/{sweep_dir.name}" + (f", {score} score" if score else "")
    summary = summarize(jobs, group_keys)
    markdown = to_markdown(jobs, summary, group_keys, constants, title, expected_job_count(sweep_dir))
    stem = f"ablation_{score}" if score else "ablation"
    paths = {name: sweep_dir / f"{stem}{name}" for name in (".csv", "_summary.csv", ".md", ".png")}
    atomic_write_text(paths[".csv"], jobs.to_csv(index=False))
    atomic_write_text(paths["_summary.csv"], summary.to_csv(index=False))
    atomic_write_text(paths[".md"], markdown)
    png = plot_summary(summary, group_keys, title, column_headings(selection_metric(jobs)[0]))
    atomic_write_bytes(paths[".png"], png)
    return Report(jobs, summary, group_keys, markdown, paths[".csv"], paths["_summary.csv"],
                  paths[".md"], paths[".png"])


def main(argv: list[str] | None = None) -> int:
    """CLI: aggregate a finished multirun folder and print its markdown table."""
    parser = argparse.ArgumentParser(prog="python -m maelab.report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder (hydra.sweep.dir)")
    parser.add_argument("--title", default=None, help="table and plot title")
    parser.add_argument("--score", default=None, help="report this score type's test metrics "
                        "(discrepancy, reconstruction, combined) instead of each run's primary one")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir}: not a directory")
    try:
        report = write_report(args.sweep_dir, args.title, args.score)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    print(report.markdown)
    print(f"wrote {report.csv_path}, {report.summary_csv_path}, {report.markdown_path}, {report.plot_path}")
    return 0
