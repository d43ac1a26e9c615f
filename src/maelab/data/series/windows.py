"""The batch format every SD-MAE DataModule yields, as a torch Dataset over in-memory arrays.

Batch dict (B windows of T steps, F features):
    x             float32 (B, T, F)   normalised values
    point_labels  int64   (B, T)      1 = anomalous step (0 when unknown)
    labelled      bool    (B,)        window label known to the training loss
    label         int64   (B,)        1 if any anomaly in the window (0 when unknown)
    anomaly_type  int64   (B,)        index into the DataModule's `anomaly_types`; -1 unknown
    start         int64   (B,)        first step of the window in its series (window index here)
    series        int64   (B,)        which series the window comes from
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class WindowDataset(Dataset):
    """Windows held as arrays; `__getitem__` returns one sample of the batch dict above."""

    def __init__(
        self, x: np.ndarray, point_labels: np.ndarray, anomaly_type: np.ndarray,
        labelled: np.ndarray, start: np.ndarray | None = None, series: np.ndarray | None = None,
    ) -> None:
        n = len(x)
        self.x = torch.as_tensor(x, dtype=torch.float32)  # (N, T, F)
        self.point_labels = torch.as_tensor(point_labels, dtype=torch.int64)  # (N, T)
        self.label = self.point_labels.amax(dim=1)  # (N,)
        self.anomaly_type = torch.as_tensor(anomaly_type, dtype=torch.int64)
        self.labelled = torch.as_tensor(labelled, dtype=torch.bool)
        self.start = torch.as_tensor(np.arange(n) if start is None else start, dtype=torch.int64)
        self.series = torch.as_tensor(
            np.zeros(n) if series is None else series, dtype=torch.int64
        )

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "x": self.x[i], "point_labels": self.point_labels[i], "labelled": self.labelled[i],
            "label": self.label[i], "anomaly_type": self.anomaly_type[i],
            "start": self.start[i], "series": self.series[i],
        }
