"""Console tables (rich) for the metrics a run prints."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

COLUMNS = ("auroc", "auprc", "vus_pr", "f1", "precision", "recall", "best_f1_oracle")
HEADERS = {"best_f1_oracle": "best F1 (oracle)"}


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def print_metrics_table(metrics: dict[str, Any], console: Console | None = None) -> None:
    """One row per score type; the primary score marked with *. F1 etc. at the validation
    threshold; best_f1_oracle uses the test labels and is not a deployable figure."""
    rows = metrics["test"]
    cols = [c for c in COLUMNS if any(c in r for r in rows.values())]
    table = Table(title=f"{metrics['model']} test metrics ({metrics['level']} level, "
                        f"last {metrics['mask_last_n']} steps scored)")
    table.add_column("score")
    for c in cols:
        table.add_column(HEADERS.get(c, c), justify="right")
    for name, r in rows.items():
        mark = " *" if name == metrics["score"] else ""
        table.add_row(name + mark, *(_fmt(r.get(c)) for c in cols))
    (console or Console(width=max(120, Console().width))).print(table)
