"""MM-MAE figures (matplotlib, Agg): maps of one day per grid and a riverflow hydrograph.

Maps: truth, visible input and reconstruction (model at hidden patches, input elsewhere) on the
full 290 × 180 grid (row 0 south, drawn at the bottom), hidden patches outlined. Hydrograph: one
test window of the catchment with the median model NSE: observed flow, visible days, hidden days
shaded, the model's and the baselines' reconstructions, and the cross-modal reconstruction (the
series hidden on every day) when the run made one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from maelab.data.hydro.layout import PatchLayout
from maelab.scoring.hydro_metrics import row_key
from maelab.viz.common import save, segments

_EPOCH = np.datetime64("1970-01-01", "D")


def _label(name: str, units: str) -> str:
    return f"{name} ({units})" if units else name


def plot_grid_day(true: np.ndarray, pred: np.ndarray, hidden: np.ndarray, layout: PatchLayout,
                  name: str, date: str, path: Path | None = None, units: str = "") -> Figure:
    """Truth, visible input and reconstruction of one day: true, pred (P, p²) physical units
    (`units`), hidden (P,) bool."""
    visible = np.where(hidden[:, None], np.nan, true)
    recon = np.where(hidden[:, None], pred, true)
    maps = [layout.scatter(a.astype(np.float32)) for a in (true, visible, recon)]  # (H, W) each
    finite = maps[0][np.isfinite(maps[0])]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    fig = Figure(figsize=(11, 5.6), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    p, cols = layout.patch_size, layout.n_cols
    hidden_idx = layout.valid_idx[hidden]
    for ax, m, title in zip(axes, maps, ("truth", "visible input", "reconstruction"), strict=True):
        im = ax.imshow(m, origin="lower", cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
        for k in hidden_idx:
            r, c = divmod(int(k), cols)
            ax.add_patch(Rectangle((c * p - 0.5, r * p - 0.5), p, p, fill=False, lw=0.5,
                                   edgecolor="tab:red"))
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.8, label=_label(name, units))
    fig.suptitle(f"{name} on {date}: {int(hidden.sum())} of {hidden.size} land patches hidden "
                 "(outlined)")
    return save(fig, path)


def plot_hydrograph(data: dict[str, np.ndarray], row: int, name: str,
                    cross_modal: np.ndarray | None = None, path: Path | None = None,
                    units: str = "", catchment: str | None = None) -> Figure:
    """Window `row` of the collected series `data` ((W, T) arrays, physical units `units`);
    `catchment` labels the gauge (id and name; its index when None)."""
    dates = _EPOCH + data["time"][row].astype("timedelta64[D]")
    true, hidden = data["true"][row], data["hidden"][row]
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax = fig.subplots()
    for a, b in segments(hidden):
        ax.axvspan(dates[a] - np.timedelta64(12, "h"), dates[b - 1] + np.timedelta64(12, "h"),
                   color="0.88", lw=0)
    ax.plot(dates, true, color="black", lw=1.4, label="observed")
    ax.plot(dates[~hidden], true[~hidden], "o", color="black", ms=3, label="visible days")
    styles = {"climatology": ("tab:gray", ":"), "interpolation": ("tab:orange", "--"),
              "interpolation_log": ("tab:brown", "-."), "regression": ("tab:purple", ":"),
              "mmmae": ("tab:blue", "-")}
    for method, (color, ls) in ((m, st) for m, st in styles.items() if m in data):
        recon = np.where(hidden, data[method][row], true)
        ax.plot(dates, recon, color=color, ls=ls, lw=1.2, label=method)
    if cross_modal is not None:
        ax.plot(dates, cross_modal, color="tab:green", lw=1.0, alpha=0.8,
                label="mmmae, all days hidden")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Patch(color="0.88"))
    labels.append("hidden days")
    ax.legend(handles, labels, loc="upper right", fontsize=8, ncol=2)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_ylabel(_label(name, units))
    where = catchment or f"catchment {int(data['catchment'][row])}"
    ax.set_title(f"{name}, {where}: {int(hidden.sum())} of {hidden.size} days hidden")
    return save(fig, path)


def _median_catchment_row(data: dict[str, np.ndarray], per_catchment: dict[str, list]) -> int:
    """First window of the catchment whose model NSE is the median one (representative)."""
    nse = np.asarray(per_catchment["nse"], dtype=np.float64)
    groups = np.asarray(per_catchment["group"])
    ok = np.isfinite(nse)
    if not ok.any():
        return 0
    order = np.argsort(nse[ok])
    catchment = groups[ok][order[len(order) // 2]]
    return int(np.flatnonzero(data["catchment"] == catchment)[0])


def write_figures(outputs: dict[str, Any], layout: PatchLayout, out_dir: Path,
                  day: int | None = None, series: str = "riverflow",
                  catchment_labels: list[str] | None = None) -> dict[str, Figure]:
    """Write map_<grid>.png per grid and hydrograph.png into `out_dir`; return the figures.
    Units come from `outputs["units"]`; `catchment_labels` name the gauges (id and name)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Figure] = {}
    units = outputs.get("units") or {}
    ex = outputs.get("example")
    if ex is not None:
        for g, e in ex["grids"].items():
            t = e["true"].shape[0] // 2 if day is None else int(day)
            date = str(_EPOCH + np.timedelta64(int(ex["time"][t]), "D"))
            figs[f"map_{g}"] = plot_grid_day(e["true"][t], e["pred"][t], e["hidden"][t], layout, g,
                                             date, path=out_dir / f"map_{g}.png",
                                             units=units.get(g, ""))
    data = outputs["series"].get(series)
    if data is not None:
        per = outputs["summary"]["distributions"][row_key(series, "mmmae")]["per_catchment"]
        row = _median_catchment_row(data, per)
        full = outputs["series"].get(f"{series}:all_hidden")
        c = int(data["catchment"][row])
        label = catchment_labels[c] if catchment_labels and c < len(catchment_labels) else None
        figs["hydrograph"] = plot_hydrograph(
            data, row, series, None if full is None else full["mmmae"][row],
            path=out_dir / "hydrograph.png", units=units.get(series, ""), catchment=label)
    return figs
