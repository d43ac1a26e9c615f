"""What every figure shares: the Agg backend, numpy inputs, PNG output, anomaly shading.

Every plotting function of maelab builds a standalone `matplotlib.figure.Figure` (never
registered with pyplot, so no global state leaks), optionally saves it with `save`, and returns it.
`fixed_figure` gives margins in inches instead of a layout engine: with one, `savefig` draws the
figure twice (a layout pass, then the image), which was half the time of the SD-MAE figures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ArrayLike = torch.Tensor | np.ndarray
DPI = 120
NORMAL, ANOMALY = "tab:blue", "tab:red"


def to_numpy(x: ArrayLike) -> np.ndarray:
    """numpy copy of a tensor or array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def fixed_figure(width: float, height: float, left: float = 0.6, right: float = 0.2,
                 bottom: float = 0.5, top: float = 0.35) -> Figure:
    """A `width` × `height` inch Figure whose subplots leave fixed margins (inches) around them."""
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height)
    return fig


def save(fig: Figure, path: str | Path | None) -> Figure:
    """Save `fig` as PNG at `path` (parents created) when given; return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    return fig


def segments(flags: np.ndarray) -> list[tuple[int, int]]:
    """Half-open [start, end) runs of non-zero values of a 1-D array."""
    d = np.diff(np.concatenate(([0], (np.asarray(flags) != 0).astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def shade_anomalies(ax: Axes, labels: np.ndarray, label: str | None = "anomaly") -> None:
    """Shade each anomalous run of `labels` (indexed by position) in red."""
    for i, (start, end) in enumerate(segments(labels)):
        ax.axvspan(start - 0.5, end - 0.5, color=ANOMALY, alpha=0.15, lw=0,
                   label=label if i == 0 else None)
