"""Console tables (rich) for the metrics a run prints."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

COLUMNS = ("auroc", "auroc_visible_in_context", "auroc_hidden_only", "auroc_context_only", "auprc",
           "vus_pr", "f1", "precision", "recall", "best_f1_oracle")
HYDRO_COLUMNS = ("rmse", "mae", "nse_median", "kge_median", "log_nse_median", "fhv_median",
                 "flv_median")  # the rest (KGE's r, α, β, …) stays in metrics.json
HEADERS = {"best_f1_oracle": "best F1 (oracle)", "auroc_visible_in_context": "auroc: visible in ctx",
           "auroc_hidden_only": "auroc: hidden only", "auroc_context_only": "auroc: ctx only",
           "nse_median": "NSE", "kge_median": "KGE", "log_nse_median": "log NSE",
           "fhv_median": "FHV %", "flv_median": "FLV %"}


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def print_metrics_table(metrics: dict[str, Any], console: Console | None = None) -> None:
    """One row per entry of `metrics["test"]` (score type, modality, ...), numeric columns, and
    a units column when rows state their `units`; hydrology rows show HYDRO_COLUMNS (medians over
    catchments).

    SD-MAE: F1 etc. are at the validation threshold; best F1 (oracle) uses the test labels and
    is not a deployable figure. The primary score is marked with *.
    """
    rows = metrics["test"]
    numeric = {k for r in rows.values() for k, v in r.items() if isinstance(v, int | float)}
    cols = ([c for c in COLUMNS if c in numeric] or [c for c in HYDRO_COLUMNS if c in numeric]
            or sorted(numeric - {"n", "n_anomalous"}))
    split = "validation" if metrics.get("split") == "val" else "test"
    title = f"{metrics['model']} {split} metrics"
    if "mask_last_n" in metrics:
        title += f" ({metrics['level']} level, last {metrics['mask_last_n']} steps scored"
        if "label_scope" in metrics:
            where = "in the scored region" if metrics["label_scope"] == "scored" else "anywhere"
            title += f"; labels: anomaly {where}; inference: {metrics['inference']}"
        title += ")"
    with_units = any(isinstance(r.get("units"), str) for r in rows.values())
    table = Table(title=title)
    table.add_column("")
    if with_units:
        table.add_column("units")
    for c in cols:
        table.add_column(HEADERS.get(c, c), justify="right")
    for name, r in rows.items():
        mark = " *" if name == metrics.get("score") else ""
        lead = [name + mark, *([str(r.get("units") or "")] if with_units else [])]
        table.add_row(*lead, *(_fmt(r.get(c)) for c in cols))
    (console or Console(width=max(120, Console().width))).print(table)
