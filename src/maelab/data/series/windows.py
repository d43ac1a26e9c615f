"""What every window DataModule shares: `SeriesDataModule` (its `info()` and the three loaders)
and `WindowDataset`, windows held as in-memory arrays. Batches are `SeriesBatch` dicts
(maelab.data.contracts): x (B, T, F), point_labels (B, T), labelled, label, anomaly_type, start,
series (B,). The window datasets build a whole batch by indexing (`__getitems__`), so the loaders
pass it through (`whole_batch`) instead of collating one dict per window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from maelab.data.contracts import SeriesInfo
from maelab.data.samplers import sharded_loader


def whole_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate of datasets whose `__getitems__` already returns the batch: pass it through."""
    return batch


class SeriesDataModule(L.LightningDataModule):
    """Base of the window DataModules: subclasses set the attributes `info()` reads and
    implement `dataset(split)`; loaders shard by rank (maelab.data.samplers), shuffling training
    windows with `loader_seed` + epoch."""

    eval_level: ClassVar[str]  # "window" | "point"
    # None: torch's default collate (for datasets of single windows without `__getitems__`)
    collate: ClassVar[Callable[[Any], Any] | None] = staticmethod(whole_batch)
    seq_length: int
    num_features: int
    feature_names: list[str]
    anomaly_types: list[str]
    val_has_labels: bool
    train_has_labels: bool
    batch_size: int
    num_workers: int
    loader_seed: int = 0

    def dataset(self, split: str) -> Dataset:
        """The windows of `split` ("train", "val", "test"), built on first use."""
        raise NotImplementedError

    def info(self) -> SeriesInfo:
        """What a model needs to know about these windows (builds the data on first use)."""
        return SeriesInfo(
            batch_size=int(self.batch_size), seq_length=int(self.seq_length),
            num_features=int(self.num_features), feature_names=list(self.feature_names),
            anomaly_types=list(self.anomaly_types), eval_level=self.eval_level,
            val_has_labels=bool(self.val_has_labels), train_has_labels=bool(self.train_has_labels),
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        kwargs = {} if self.collate is None else {"collate_fn": self.collate}
        return sharded_loader(self.dataset(split), self.batch_size, shuffle, self.num_workers,
                              self.loader_seed, **kwargs)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training windows."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation windows in series order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test windows in series order."""
        return self._loader("test", shuffle=False)


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

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """A whole batch by indexing: x (B, T, F), point_labels (B, T), the rest (B,)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)  # (B,)
        return {
            "x": self.x[idx], "point_labels": self.point_labels[idx], "labelled": self.labelled[idx],
            "label": self.label[idx], "anomaly_type": self.anomaly_type[idx],
            "start": self.start[idx], "series": self.series[idx],
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """One window: x (T, F), point_labels (T,), scalars."""
        return {k: v[0] for k, v in self.__getitems__([i]).items()}
