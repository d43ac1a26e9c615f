"""SD-MAE beside the field's standard detectors on SMD, one machine at a time.

    python -m benchmarks.smd [MACHINE ...] [--epochs N] [--out DIR] [--fast]
                             [--baselines NAME ...] [KEY=VALUE ...]
    make bench-smd ARGS="1-2 2-1 --epochs 2 model.net.d_model=32"

Baselines (`--baselines`, default all; `maelab.models.baselines`): pyod's PCA, IsolationForest,
ECOD, COPOD, KNN, LOF and HBOS with pyod's defaults, the squared PCA reconstruction error
(`pca_recon`, the floor the SD-MAE target was set against) and a seeded random floor.

Per machine, SD-MAE is trained and tested by `maelab.pipeline.train` on the Hydra config
``experiment=smd data.machine=<machine>`` plus the given overrides (run files in
``<out>/<machine>/``). The baselines are fitted on the same normalised training part, get their
threshold by the same rule on the same validation tail of train (unlabelled: a percentile), and
are scored on exactly the test points SD-MAE scored (every point after the first window), with
the same metrics (`detection_metrics`, `vus_pr`); point counts are checked to agree. Writes
``<out>/smd_benchmark.csv`` (a row per machine and method, then the means) and
``<out>/smd_benchmark.md``; prints a table per machine and the mean.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from benchmarks.common import CONF_DIR
from maelab.core.env import configure_environment
from maelab.core.io import atomic_write_text
from maelab.data.series.long_series import SeriesWindowDataset
from maelab.data.series.smd import resolve_machines
from maelab.models.baselines import make_baseline
from maelab.pipeline import train
from maelab.scoring import detection_metrics, fit_normal_stats, select_threshold, vus_pr

log = logging.getLogger(__name__)

SDMAE_SCORES = ("discrepancy", "reconstruction", "combined")
BASELINES = {"pca": "PCA", "iforest": "IsolationForest", "ecod": "ECOD", "copod": "COPOD",
             "knn": "KNN", "lof": "LOF", "hbos": "HBOS", "pca_recon": "PCA reconstruction",
             "random": "random"}
COLUMNS = {"auprc": "AUC-PR", "auroc": "AUC-ROC", "vus_pr": "VUS-PR",
           "best_f1_oracle": "best F1 (oracle)", "f1": "F1 @ val thr"}
CSV_COLUMNS = ["machine", "method", "primary", *COLUMNS, "precision", "recall", "threshold_rule",
               "n", "n_anomalous", "seconds"]
# debug=fast limits (a few training batches, one epoch), a tiny network, the whole test split
FAST = ["debug=fast", "trainer.limit_test_batches=1.0", "data.batch_size=128",
        "model.net.d_model=32", "model.net.encoder_depth=1", "model.net.teacher_depth=2"]
# Lightning's bar would fight the benchmark's display; `EpochProgress` shows training there instead
QUIET = ["callbacks.progress_bar=null", "++trainer.enable_progress_bar=false",
         "+callbacks.epoch_progress._target_=benchmarks.smd.EpochProgress"]


class EpochProgress(L.Callback):
    """The training steps of the machine being trained, as a task of the benchmark's display."""

    progress: Progress | None = None  # the benchmark's live display, while `run` shows it

    def __init__(self) -> None:
        self._task = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.progress is not None:
            self._task = self.progress.add_task("  training", total=trainer.estimated_stepping_batches)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._task is not None:
            self.progress.update(self._task, completed=trainer.global_step, description=(
                f"  epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._task is not None:
            self.progress.remove_task(self._task)
            self._task = None


def compose_config(overrides: Sequence[str], out_dir: Path | None = None,
                   config_dir: Path = CONF_DIR) -> DictConfig:
    """`conf/train.yaml` with ``experiment=smd`` and `overrides`; run outputs under `out_dir`."""
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=smd", *overrides])
    if out_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(out_dir)
            cfg.paths.log_dir = str(out_dir)
    return cfg


def scored_points(ds: SeriesWindowDataset, seq_length: int, mask_last_n: int) -> np.ndarray:
    """Rows of `ds.values` scored by its windows (their last `mask_last_n` steps), in order."""
    first = ds.offsets.numpy() + seq_length - mask_last_n  # (W,)
    return (first[:, None] + np.arange(mask_last_n)).ravel()  # (W * n,)


def evaluate_baselines(
    dm: L.LightningDataModule, names: Sequence[str], threshold: DictConfig | dict, n_test: int,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Fit each baseline on the normalised training part of `dm`'s one series and test it.

    The threshold follows `threshold` (method, percentile) on the validation windows' scored
    points; metrics use the first `n_test` scored test points, the ones SD-MAE was tested on.
    """
    if len(dm.series_names) != 1:
        raise ValueError(f"baselines run per machine, got series {list(dm.series_names.values())}")
    fit_part = dm.train_dataloader().dataset.values.numpy()  # (n_fit, F)
    val, test = dm.val_dataloader().dataset, dm.test_dataloader().dataset
    val_idx = scored_points(val, dm.seq_length, dm.mask_last_n)
    test_idx = scored_points(test, dm.seq_length, dm.mask_last_n)
    if n_test > len(test_idx):
        raise ValueError(f"{n_test} test points requested, the test windows score {len(test_idx)}")
    test_idx = test_idx[:n_test]
    y_val, y_test = val.point_labels.numpy()[val_idx], test.point_labels.numpy()[test_idx]
    results = {}
    for name in names:
        start = time.perf_counter()
        baseline = make_baseline(name, seed=seed).fit(fit_part)
        s_val = baseline.score(val.values.numpy())[val_idx]
        s_test = baseline.score(test.values.numpy())[test_idx]
        thr, rule = select_threshold(s_val, y_val, threshold["method"], threshold["percentile"])
        mean, std = fit_normal_stats(s_val, y_val)
        m = detection_metrics(s_test, y_test, thr, mean, std)
        m["vus_pr"] = vus_pr(s_test, y_test)
        m["threshold_rule"] = rule
        m["seconds"] = time.perf_counter() - start
        results[name] = m
    return results


def benchmark_machine(cfg: DictConfig, baselines: Sequence[str]) -> list[dict[str, Any]]:
    """Train and test SD-MAE with `cfg` (one machine), then the baselines on the same points."""
    machine = str(cfg.data.machine)
    start = time.perf_counter()
    metrics, objects = train(cfg, print_table=False)  # `run` prints it beside the baselines
    seconds = time.perf_counter() - start
    dm = objects["datamodule"]
    log.info("%s: SD-MAE trained with the discrepancy loss in its %s mode", machine,
             "labelled" if dm.train_has_labels else "unlabelled (no anomaly term)")
    rows = [{"machine": machine, "method": f"SD-MAE {name}", "primary": name == metrics["score"],
             **metrics["test"][name], "seconds": seconds}
            for name in SDMAE_SCORES if name in metrics["test"]]
    n_test, n_anomalous = int(metrics["primary"]["n"]), int(metrics["primary"]["n_anomalous"])
    results = evaluate_baselines(dm, baselines, cfg.threshold, n_test, int(cfg.seed))
    for name, m in results.items():
        if (int(m["n"]), int(m["n_anomalous"])) != (n_test, n_anomalous):
            raise RuntimeError(
                f"{machine}: {name} scored {int(m['n'])} points ({int(m['n_anomalous'])} "
                f"anomalous) but SD-MAE {n_test} ({n_anomalous}): point sets differ")
        rows.append({"machine": machine, "method": BASELINES[name], "primary": False, **m})
    return rows


def summarize(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per machine and method rows, then one `mean` row per method (NaN if any machine is NaN)."""
    df = pd.DataFrame(rows).reindex(columns=CSV_COLUMNS)
    methods = list(dict.fromkeys(df["method"]))
    means = df.groupby("method", sort=False)[[*COLUMNS, "precision", "recall", "seconds"]].agg(
        lambda s: s.mean(skipna=False))
    means = means.reindex(methods).reset_index()
    means.insert(0, "machine", "mean")
    means["primary"] = [bool(df.loc[df["method"] == m, "primary"].any()) for m in methods]
    return pd.concat([df, means.reindex(columns=CSV_COLUMNS)], ignore_index=True)


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _label(row: pd.Series) -> str:
    return f"{row['method']}{' *' if row['primary'] else ''}"


def rich_table(df: pd.DataFrame, title: str) -> Table:
    """A console table of the rows of `df` (one machine, or the means)."""
    table = Table(title=title)
    table.add_column("method")
    for heading in COLUMNS.values():
        table.add_column(heading, justify="right")
    for _, row in df.iterrows():
        table.add_row(_label(row), *(_fmt(row[c]) for c in COLUMNS))
    return table


def markdown_table(df: pd.DataFrame) -> list[str]:
    """The rows of `df` as a GitHub markdown table; the best AUC-PR in bold."""
    best = df["auprc"].max()
    lines = ["| method | " + " | ".join(COLUMNS.values()) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for _, row in df.iterrows():
        cells = [f"**{_fmt(row[c])}**" if c == "auprc" and row[c] == best else _fmt(row[c])
                 for c in COLUMNS]
        lines.append(f"| {_label(row)} | " + " | ".join(cells) + " |")
    return lines


def metric_matrix(table: pd.DataFrame, metric: str = "auprc") -> list[str]:
    """One metric as a markdown table: a row per machine and the mean, a column per method."""
    data = table.pivot(index="machine", columns="method", values=metric)
    methods, machines = list(dict.fromkeys(table["method"])), list(dict.fromkeys(table["machine"]))
    data = data.reindex(index=machines, columns=methods)
    lines = ["| machine | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for machine, row in data.iterrows():
        best = row.max()
        cells = [f"**{_fmt(v)}**" if v == best else _fmt(v) for v in row]
        lines.append(f"| {machine} | " + " | ".join(cells) + " |")
    return lines


def device_description(threads: int) -> str:
    """Where the benchmark ran, in words."""
    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    cpu = platform.processor() or platform.machine()
    plural = "s" if threads > 1 else ""
    return f"{os.cpu_count()}-core CPU ({cpu}), {gpu}, torch {torch.__version__} on {threads} thread{plural}"


def versus(table: pd.DataFrame, other: str = "PCA reconstruction", metric: str = "auprc"
           ) -> str | None:
    """SD-MAE's primary score against `other` on `metric`: means, machines where it is higher."""
    data = table[table["machine"] != "mean"]
    primary = data.loc[data["primary"].astype(bool), "method"].unique()
    data = data.pivot(index="machine", columns="method", values=metric)
    if len(primary) != 1 or other not in data:
        return None
    method = primary[0]
    mean = data[[method, other]].mean(skipna=False)
    wins = int((data[method] > data[other]).sum())
    return (f"{COLUMNS[metric]}, {method} vs {other}: mean {_fmt(mean[method])} vs "
            f"{_fmt(mean[other])}, higher on {wins} of {len(data)} machines")


def comparisons(table: pd.DataFrame, metric: str = "auprc") -> list[str]:
    """`versus` the PCA reconstruction floor and the baseline with the best mean `metric`."""
    means = table[(table["machine"] == "mean") & ~table["method"].str.startswith("SD-MAE")]
    best = means.sort_values(metric, ascending=False)["method"].head(1).tolist()
    others = list(dict.fromkeys(["PCA reconstruction", *best]))
    return [line for other in others if (line := versus(table, other, metric))]


def to_markdown(table: pd.DataFrame, cfg: DictConfig, overrides: Sequence[str], wall_s: float,
                device: str) -> str:
    """The benchmark report: settings, the mean table, then one table per machine."""
    machines = [m for m in dict.fromkeys(table["machine"]) if m != "mean"]
    data = table[table["machine"] != "mean"]
    first = data.groupby("machine", sort=False).first()
    net = cfg.model.net
    lines = [
        "# SMD benchmark: SD-MAE beside baselines (point level)", "",
        f"- machines: {', '.join(machines)}",
        f"- SD-MAE: `experiment=smd` {' '.join(f'`{o}`' for o in overrides) or '(no overrides)'}; "
        f"{cfg.trainer.max_epochs} epochs, seq_length {cfg.data.seq_length}, "
        f"patch_size {cfg.patch_size}, mask_last_n {cfg.mask_last_n}, d_model {net.d_model}, "
        f"depths encoder/teacher/student {net.encoder_depth}/{net.teacher_depth}/"
        f"{net.student_depth}, train stride {cfg.data.train_stride}, seed {cfg.seed}",
        "- training: SMD's train split has no labels, so the discrepancy loss runs in its "
        "unlabelled mode (no anomaly term); the checkpoint is chosen on "
        f"`{cfg.optimized_metric}` ({cfg.optimized_metric_mode})",
        f"- thresholds (SD-MAE and baselines): `{cfg.threshold.method}` rule "
        f"(percentile {cfg.threshold.percentile}) on the last {cfg.data.val_fraction:.0%} of "
        "each train split (unlabelled validation); never on test",
        "- metrics: on the test points after each machine's first window, the same points for "
        "every method; no point adjustment; best F1 is an oracle (threshold from the test "
        "labels), F1 @ val thr is the deployable one; * = SD-MAE's primary score",
        f"- wall time: {wall_s / 60:.1f} min in all (SD-MAE training and testing: "
        f"{first['seconds'].sum() / 60:.1f} min); {device}",
        "", "## Mean over machines", "",
        *markdown_table(table[table["machine"] == "mean"]), "",
        *[f"{line}." for line in comparisons(table)], "",
        "## AUC-PR per machine", "", *metric_matrix(table), "",
        "## Per machine",
    ]
    for machine in machines:
        rows = data[data["machine"] == machine]
        share = rows["n_anomalous"].iloc[0] / rows["n"].iloc[0]
        lines += ["", f"### {machine} ({int(rows['n'].iloc[0])} test points, "
                  f"{share:.1%} anomalous)", "", *markdown_table(rows)]
    return "\n".join(lines) + "\n"


def _split_args(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional arguments: machines, and Hydra overrides (those holding `=`)."""
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.smd", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="MACHINE|KEY=VALUE",
                   help="machines (1-2 or machine-1-2; default: every one under data.root) and "
                        "Hydra overrides of the SD-MAE config (e.g. model.net.d_model=32)")
    p.add_argument("--epochs", type=int, help="trainer.max_epochs (default: the experiment's)")
    p.add_argument("--out", type=Path, help="output folder (default: outputs/smd_benchmark/<time>)")
    p.add_argument("--fast", action="store_true",
                   help="debug=fast limits and a tiny network: a smoke run, not a result")
    p.add_argument("--baselines", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: the network is small, and on a busy "
                        "CPU more threads mostly wait on each other)")
    return p.parse_intermixed_args(argv)


def run(argv: Sequence[str] | None = None, console: Console | None = None) -> pd.DataFrame:
    """Run the benchmark for the command line `argv`; returns the table written to CSV."""
    args = parse_args(argv)
    machines, extra = _split_args(args.items)
    overrides = [*(FAST if args.fast else []),
                 *([f"trainer.max_epochs={args.epochs}"] if args.epochs else []), *extra]
    out = args.out or Path("outputs") / "smd_benchmark" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    base = compose_config([*overrides, *QUIET])
    machines = resolve_machines(base.data.root, machines or "all")
    console = console or Console()
    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            EpochProgress.progress = progress
            task = progress.add_task("[bold]SMD benchmark", total=len(machines))
            for machine in machines:
                progress.update(task, description=f"[bold]SMD benchmark[/] {machine}")
                cfg = compose_config([*overrides, *QUIET, f"data.machine={machine}"], out / machine)
                machine_rows = benchmark_machine(cfg, args.baselines)
                rows += machine_rows
                progress.console.print(rich_table(pd.DataFrame(machine_rows), machine))
                progress.advance(task)
        wall_s = time.perf_counter() - start
    finally:
        EpochProgress.progress = None
        torch.set_num_threads(threads)
    table = summarize(rows)
    console.print(rich_table(table[table["machine"] == "mean"],
                             f"mean over {len(machines)} machines ({wall_s / 60:.1f} min)"))
    for line in comparisons(table):
        console.print(line)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "smd_benchmark.csv", table.to_csv(index=False))
    atomic_write_text(out / "smd_benchmark.md", to_markdown(
        table, base, overrides, wall_s, device_description(args.threads)))
    console.print(f"wrote {out / 'smd_benchmark.csv'} and {out / 'smd_benchmark.md'}")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: logging through rich, Lightning's chatter at warning level only."""
    configure_environment()
    console = Console(width=max(110, Console().width))
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    logging.captureWarnings(True)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    run(argv, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
