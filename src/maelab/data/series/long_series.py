"""Windows over long multivariate series (SMD and alike) as a LightningDataModule.

Each selected series (one per machine) is split into train / validation / test:

- normalisation (z-score, min-max or none) is fitted per series on its training part only
  (train minus the validation tail) and applied to every split, then clipped to ``±clip``;
- training windows slide with ``train_stride`` (a tail shorter than one stride is left out);
- validation is the last ``val_fraction`` of train, or a labelled slice file;
- training labels are optional (``train_labels``, one 0/1 per train step): without them every
  training window counts as normal and the discrepancy loss has no anomaly term; with them a
  training window is a labelled anomaly when any of its steps is, and the validation tail
  carries its labels too;
- validation and test windows move by ``mask_last_n``; the scored region of a window is its
  last ``mask_last_n`` steps, so every point after the warm-up is scored once, causally.

Remainder of a scored series of length T: with ``L = seq_length`` and ``n = mask_last_n``,
``r = (T - L) mod n`` leading steps are skipped, i.e. the first window starts at ``r`` (0 when
``n`` divides ``T - L``) and the last one ends exactly at ``T``. Points ``[0, r + L - n)`` are
context only and never scored; every point from ``r + L - n`` to ``T - 1`` is in exactly one
scored region. Windows never straddle two series: each carries its ``series`` id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from maelab.core.checks import positive_int
from maelab.core.errors import ConfigError, DataError
from maelab.data.series.smd import load_smd_machines
from maelab.data.series.windows import SeriesDataModule

log = logging.getLogger(__name__)

NORMALIZATIONS = ("zscore", "minmax", "none")


class SeriesSource(Protocol):
    """What a long-series loader returns per series (`SMDMachine` fits)."""

    name: str
    train: np.ndarray  # (T_train, F)
    test: np.ndarray  # (T_test, F)
    test_labels: np.ndarray  # (T_test,) 0/1
    features: np.ndarray  # (F,) column indices in the source files
    train_labels: np.ndarray | None  # (T_train,) 0/1, or None when not supplied


def sliding_starts(length: int, seq_length: int, stride: int) -> np.ndarray:
    """Window starts 0, stride, 2·stride, … that fit in `length` steps; (W,) int64."""
    return np.arange(0, length - seq_length + 1, stride, dtype=np.int64)


def scoring_starts(length: int, seq_length: int, mask_last_n: int) -> np.ndarray:
    """Starts of windows whose last `mask_last_n` steps tile the series up to its end; (W,).

    The first window starts at ``(length - seq_length) % mask_last_n`` so the last one ends at
    ``length`` and no point is scored twice.
    """
    span = length - seq_length
    return np.arange(span % mask_last_n, span + 1, mask_last_n, dtype=np.int64)


def fit_normalization(train: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (loc, scale) from `train` (T, F); a zero scale becomes 1."""
    if method == "zscore":
        loc, scale = train.mean(axis=0), train.std(axis=0)
    elif method == "minmax":
        loc, scale = train.min(axis=0), np.ptp(train, axis=0)
    elif method == "none":
        loc, scale = np.zeros(train.shape[1]), np.ones(train.shape[1])
    else:
        raise ConfigError("data.normalization", method, NORMALIZATIONS)
    scale = np.where(scale > 0, scale, 1.0)
    return loc.astype(np.float32), scale.astype(np.float32)  # (F,), (F,)


class SeriesWindowDataset(Dataset):
    """Fixed-length windows cut on access from one (N, F) block of concatenated series.

    A window's label is 1 when any of its last `label_span` steps is anomalous: the scored
    region (`mask_last_n`) for validation and test, the whole window for training.
    """

    def __init__(
        self,
        values: np.ndarray,
        point_labels: np.ndarray | None,
        offsets: np.ndarray,
        starts: np.ndarray,
        series: np.ndarray,
        seq_length: int,
        label_span: int,
    ) -> None:
        self.values = torch.as_tensor(values, dtype=torch.float32)  # (N, F)
        self.labelled = point_labels is not None
        labels = point_labels if self.labelled else np.zeros(len(values), dtype=np.int64)
        self.point_labels = torch.as_tensor(labels, dtype=torch.int64)  # (N,)
        self.offsets = torch.as_tensor(offsets, dtype=torch.int64)  # (W,) row of window start
        self.starts = torch.as_tensor(starts, dtype=torch.int64)  # (W,) start within series
        self.series = torch.as_tensor(series, dtype=torch.int64)  # (W,)
        self.steps = torch.arange(seq_length)  # (L,)
        # window label = any anomaly in [off + L - label_span, off + L)
        csum = np.concatenate([[0], np.cumsum(labels)])  # (N + 1,)
        end = offsets + seq_length
        self.label = torch.as_tensor(csum[end] - csum[end - label_span] > 0).long()  # (W,)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """A whole batch by index arithmetic: x (B, L, F), point_labels (B, L), rest (B,)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)  # (B,)
        rows = self.offsets[idx, None] + self.steps  # (B, L)
        label = self.label[idx]  # (B,)
        return {
            "x": self.values[rows],  # (B, L, F)
            "point_labels": self.point_labels[rows],  # (B, L)
            "labelled": torch.full((len(idx),), self.labelled),
            "label": label,
            "anomaly_type": label if self.labelled else torch.full_like(label, -1),
            "start": self.starts[idx],
            "series": self.series[idx],
        }

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """One window: x (L, F), point_labels (L,), scalars."""
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def _window_dataset(
    blocks: list[tuple[int, np.ndarray, np.ndarray | None, np.ndarray]],
    seq_length: int,
    label_span: int,
) -> SeriesWindowDataset:
    """Concatenate (series id, values (T, F), labels (T,) | None, starts (W,)) blocks."""
    offsets, series, row = [], [], 0
    for sid, values, _, starts in blocks:
        offsets.append(starts + row)
        series.append(np.full(len(starts), sid, dtype=np.int64))
        row += len(values)
    labels = [b[2] for b in blocks]
    return SeriesWindowDataset(
        values=np.concatenate([b[1] for b in blocks]),
        point_labels=None if labels[0] is None else np.concatenate(labels),
        offsets=np.concatenate(offsets),
        starts=np.concatenate([b[3] for b in blocks]),
        series=np.concatenate(series),
        seq_length=seq_length,
        label_span=label_span,
    )


class LongSeriesDataModule(SeriesDataModule):
    """Windows over long series for point-level anomaly detection; see the module docstring.

    Subclasses implement `_load_series`. Besides `info()`: `series_lengths`, `series_names`.
    """

    eval_level = "point"

    def __init__(
        self,
        seq_length: int = 100,
        train_stride: int = 10,
        val_fraction: float = 0.1,
        mask_last_n: int = 10,
        batch_size: int = 64,
        num_workers: int = 0,
        normalization: str = "zscore",
        clip: float | None = 10.0,
        labelled_slice: str | None = None,
        train_labels: bool = False,
    ) -> None:
        super().__init__()
        self.seq_length = positive_int("data.seq_length", seq_length, minimum=2)
        self.mask_last_n = positive_int("data.mask_last_n", mask_last_n)
        if self.mask_last_n >= self.seq_length:
            raise ConfigError("data.mask_last_n", mask_last_n, f"< seq_length={seq_length}")
        self.train_stride = positive_int("data.train_stride", train_stride)
        self.batch_size = positive_int("data.batch_size", batch_size)
        self.num_workers = positive_int("data.num_workers", num_workers, minimum=0)
        if normalization not in NORMALIZATIONS:
            raise ConfigError("data.normalization", normalization, NORMALIZATIONS)
        self.normalization = normalization
        if clip is not None and not clip > 0:
            raise ConfigError("data.clip", clip, "a positive number or null")
        self.clip = None if clip is None else float(clip)
        self.labelled_slice = None if labelled_slice in (None, "", "none") else labelled_slice
        if self.labelled_slice is None and not (
            isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1
        ):
            raise ConfigError("data.val_fraction", val_fraction, "a number in (0, 1)")
        self.val_fraction = float(val_fraction)
        self.anomaly_types = ["normal", "anomaly"]
        if not isinstance(train_labels, bool):
            raise ConfigError("data.train_labels", train_labels, (True, False))
        self.train_has_labels = train_labels
        self.val_has_labels = self.labelled_slice is not None or train_labels
        self.norm_stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id -> (loc, scale)
        self._datasets: dict[str, SeriesWindowDataset] | None = None
        self._features = np.zeros(0, dtype=np.int64)
        self._lengths: dict[int, int] = {}
        self._names: dict[int, str] = {}

    def _load_series(self) -> Sequence[SeriesSource]:
        """Return the selected series, all with the same features."""
        raise NotImplementedError

    # --- attributes that need the data -------------------------------------------------
    @property
    def num_features(self) -> int:
        """Features per step after dropping constant columns."""
        self._build()
        return len(self._features)

    @property
    def feature_names(self) -> list[str]:
        """`feature_<i>` with `i` the column in the source files."""
        self._build()
        return [f"feature_{i}" for i in self._features]

    @property
    def series_lengths(self) -> dict[int, int]:
        """Test length per series id."""
        self._build()
        return dict(self._lengths)

    @property
    def series_names(self) -> dict[int, str]:
        """Name per series id."""
        self._build()
        return dict(self._names)

    # --- building ------------------------------------------------------------------------
    def _normalize(self, values: np.ndarray, sid: int) -> np.ndarray:
        loc, scale = self.norm_stats[sid]
        out = (values - loc) / scale  # (T, F)
        if self.clip is not None:
            np.clip(out, -self.clip, self.clip, out=out)
        return out.astype(np.float32, copy=False)

    def _read_labelled_slice(
        self, series: Sequence[SeriesSource]
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """(series id, x (T, F) normalised, labels (T,)) from the `labelled_slice` .npz."""
        path = Path(self.labelled_slice).expanduser()
        if not path.is_file():
            raise ConfigError("data.labelled_slice", str(path), "an existing .npz file or null")
        with np.load(path, allow_pickle=False) as npz:
            missing = {"x", "labels"} - set(npz.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)} (has {npz.files})")
            x, labels = npz["x"], npz["labels"].astype(np.int64)
            name = str(npz["series"]) if "series" in npz.files else None
        names = [s.name for s in series]
        if name is None and len(series) > 1:
            raise DataError(f"{path}: several series selected, so it must name one in `series`")
        if name is not None and name not in names:
            raise DataError(f"{path}: series {name!r} is not among the selected {names}")
        sid = 0 if name is None else names.index(name)
        feats = series[sid].features
        if x.ndim != 2 or len(x) != len(labels):
            raise DataError(f"{path}: x {x.shape} and labels {labels.shape} must be (T, F), (T,)")
        if x.shape[1] != len(feats):
            if x.shape[1] <= feats.max():
                raise DataError(f"{path}: {x.shape[1]} columns, expected {len(feats)} or all")
            x = x[:, feats]
        if not np.isfinite(x).all() or not np.isin(labels, (0, 1)).all():
            raise DataError(f"{path}: x must be finite and labels 0/1")
        if len(x) < self.seq_length:
            raise DataError(f"{path}: {len(x)} steps, shorter than seq_length={self.seq_length}")
        return sid, self._normalize(x.astype(np.float32), sid), labels

    def _build(self) -> None:
        """Load, normalise and index every split once (cheap, deterministic)."""
        if self._datasets is not None:
            return
        series = list(self._load_series())
        sl, n = self.seq_length, self.mask_last_n
        self.norm_stats, self._lengths, self._names = {}, {}, {}
        train, val, test = [], [], []
        for sid, s in enumerate(series):
            if not np.array_equal(s.features, series[0].features):
                raise DataError(f"series {s.name} has other features than {series[0].name}")
            n_val = 0 if self.labelled_slice else int(round(self.val_fraction * len(s.train)))
            n_fit = len(s.train) - n_val
            if n_fit < sl or (not self.labelled_slice and n_val < sl):
                raise ConfigError(
                    "data.val_fraction",
                    self.val_fraction,
                    f"a split of {s.name}'s {len(s.train)} train steps leaving at least "
                    f"seq_length={sl} steps on each side",
                )
            if len(s.test) < sl:
                raise DataError(f"{s.name}: test has {len(s.test)} steps < seq_length={sl}")
            labels = s.train_labels if self.train_has_labels else None  # (T_train,) | None
            if self.train_has_labels and labels is None:
                raise DataError(f"{s.name}: data.train_labels=true but no training labels were read")
            self.norm_stats[sid] = fit_normalization(s.train[:n_fit], self.normalization)
            fit_part = self._normalize(s.train[:n_fit], sid)  # (n_fit, F)
            fit_labels = None if labels is None else labels[:n_fit]
            train.append((sid, fit_part, fit_labels, sliding_starts(n_fit, sl, self.train_stride)))
            if n_val:
                val_part = self._normalize(s.train[n_fit:], sid)  # (n_val, F)
                val_labels = None if labels is None else labels[n_fit:]
                val.append((sid, val_part, val_labels, scoring_starts(n_val, sl, n)))
            x_test = self._normalize(s.test, sid)  # (T_test, F)
            test.append((sid, x_test, s.test_labels, scoring_starts(len(s.test), sl, n)))
            self._lengths[sid], self._names[sid] = len(s.test), s.name
        if self.labelled_slice:
            sid, x, labels = self._read_labelled_slice(series)
            val = [(sid, x, labels, scoring_starts(len(x), sl, n))]
            log.info("validation: labelled slice %s; val_fraction unused", self.labelled_slice)
        self._features = np.asarray(series[0].features)
        self._datasets = {
            "train": _window_dataset(train, sl, sl),
            "val": _window_dataset(val, sl, n),
            "test": _window_dataset(test, sl, n),
        }
        if self.train_has_labels:
            labelled = self._datasets["train"].label
            log.info(
                "%s: training labels read (data.train_labels=true): %d of %d training windows "
                "hold an anomaly, and the discrepancy loss pushes their gap above the margin",
                type(self).__name__, int(labelled.sum()), len(labelled),
            )
        else:
            log.info(
                "%s: training windows carry no labels (data.train_labels=false), so the "
                "discrepancy loss runs in its unlabelled mode: every training window counts as "
                "normal",
                type(self).__name__,
            )
        log.info(
            "%s: %d series, %d features, windows train/val/test = %d/%d/%d",
            type(self).__name__,
            len(series),
            len(self._features),
            *(len(d) for d in self._datasets.values()),
        )

    # --- LightningDataModule hooks ------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build all splits (idempotent)."""
        self._build()

    def dataset(self, split: str) -> SeriesWindowDataset:
        """Training windows slide by `train_stride` (labelled only with `train_labels`);
        validation and test windows by `mask_last_n`, with point labels."""
        self._build()
        return self._datasets[split]

    def state_dict(self) -> dict:
        """Normalisation statistics, saved in checkpoints for the record."""
        if self._datasets is None:
            return {}
        ids = sorted(self.norm_stats)
        return {
            "normalization": self.normalization,
            "series_names": [self._names[i] for i in ids],
            "norm_loc": torch.as_tensor(np.stack([self.norm_stats[i][0] for i in ids])),
            "norm_scale": torch.as_tensor(np.stack([self.norm_stats[i][1] for i in ids])),
        }


class SMDDataModule(LongSeriesDataModule):
    """Server Machine Dataset windows; `machine` is a name, a list of names, or ``"all"``."""

    def __init__(self, root: str, machine: str | Sequence[str] = "machine-1-2", **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = str(root)
        self.machine = machine if isinstance(machine, str) else [str(m) for m in machine]

    def _load_series(self) -> Sequence[SeriesSource]:
        return load_smd_machines(self.root, self.machine, train_labels=self.train_has_labels)
