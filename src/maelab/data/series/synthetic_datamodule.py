"""DataModule for the embedded synthetic anomaly default (train / validation / test splits)."""

from __future__ import annotations

import numpy as np

from maelab.core.checks import positive_int
from maelab.core.errors import ConfigError
from maelab.data.series.synthetic import (
    ANOMALY_TYPES,
    DESIGN_ANOMALY_TYPES,
    DESIGN_FEATURES,
    feature_names,
    generate_design_windows,
    generate_windows,
)
from maelab.data.series.windows import SeriesDataModule, WindowDataset

STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                "predict": ("test",)}
GENERATORS = ("maelab", "design")
NORMALISATIONS = ("zscore", "none")


class SyntheticAnomalyDataModule(SeriesDataModule):
    """Contaminated train split (unlabelled + a few labelled anomalies), labelled val and test.

    `generator`: `maelab` (six anomaly types, placed to overlap the scored region with probability
    `focus_share`) or `design` (the seed study's five types in [0, 1] metrics, placed as the study
    places them; `focus_*` do not apply). `normalise`: `zscore` per feature with train statistics,
    or `none` (the values as generated).
    """

    eval_level = "window"

    def __init__(
        self,
        seq_length: int = 100,
        num_features: int = 5,
        n_train: int = 5000,
        n_val: int = 1000,
        n_test: int = 2000,
        train_contamination: float = 0.05,
        train_labelled_share: float = 0.03,
        val_anomaly_share: float = 0.1,
        test_anomaly_share: float = 0.25,
        focus_last: int = 10,
        focus_share: float = 0.8,
        seed: int = 1234,
        batch_size: int = 64,
        num_workers: int = 0,
        generator: str = "maelab",
        normalise: str = "zscore",
    ) -> None:
        super().__init__()
        if generator not in GENERATORS:
            raise ConfigError("data.generator", generator, GENERATORS)
        if normalise not in NORMALISATIONS:
            raise ConfigError("data.normalise", normalise, NORMALISATIONS)
        if generator == "design" and num_features != len(DESIGN_FEATURES):
            raise ConfigError("data.num_features", num_features,
                              f"{len(DESIGN_FEATURES)} with data.generator=design (its metrics: "
                              f"{', '.join(DESIGN_FEATURES)})")
        for key, value in {"seq_length": seq_length, "num_features": num_features,
                           "n_train": n_train, "n_val": n_val, "n_test": n_test,
                           "batch_size": batch_size}.items():
            positive_int(f"data.{key}", value)
        for key, value in {"train_contamination": train_contamination,
                           "train_labelled_share": train_labelled_share,
                           "val_anomaly_share": val_anomaly_share,
                           "test_anomaly_share": test_anomaly_share,
                           "focus_share": focus_share}.items():
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"data.{key}", value, "a share in [0, 1]")
        if not 0 < focus_last <= seq_length:
            raise ConfigError("data.focus_last", focus_last, f"an integer in [1, {seq_length}]")
        self.seq_length, self.num_features = int(seq_length), int(num_features)
        self.generator, self.normalise = generator, normalise
        self.feature_names = (list(DESIGN_FEATURES) if generator == "design"
                              else feature_names(self.num_features))
        self.anomaly_types = list(DESIGN_ANOMALY_TYPES if generator == "design" else ANOMALY_TYPES)
        self.train_has_labels = train_labelled_share > 0
        self.val_has_labels = val_anomaly_share > 0
        self.kw = dict(seq_length=seq_length, num_features=num_features, focus_last=focus_last,
                       focus_share=focus_share)
        self.splits = {
            "train": (n_train, train_contamination + train_labelled_share, train_labelled_share),
            "val": (n_val, val_anomaly_share, 0.0),
            "test": (n_test, test_anomaly_share, 0.0),
        }
        self.seed, self.batch_size, self.num_workers = seed, batch_size, num_workers
        self.loader_seed = seed  # training order: seed + epoch
        self.datasets: dict[str, WindowDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Generate the splits `stage` needs (fit: train + val; validate: val; test: test; None:
        all), each once. Training statistics z-score every split, so train comes first."""
        for split in STAGE_SPLITS.get(stage, tuple(self.splits)):
            self._build(split)

    def _build(self, split: str) -> None:
        if split in self.datasets:
            return
        if split != "train":
            self._build("train")
        n, share, lab = self.splits[split]
        seed = self.seed + list(self.splits).index(split)
        w = (generate_design_windows(n, self.seq_length, share, lab, seed) if self.generator == "design"
             else generate_windows(n, anomaly_share=share, labelled_share=lab, seed=seed, **self.kw))
        if split == "train":
            flat = w.x.reshape(-1, self.num_features)
            self.mean, self.std = flat.mean(axis=0), flat.std(axis=0) + 1e-6  # (F,) train statistics
            if self.normalise == "none":
                self.mean, self.std = np.zeros_like(self.mean), np.ones_like(self.std)
        x = ((w.x - self.mean) / self.std).astype(np.float32)
        self.datasets[split] = WindowDataset(x, w.point_labels, w.anomaly_type, w.labelled)

    def dataset(self, split: str) -> WindowDataset:
        self._build(split)
        return self.datasets[split]
