"""Classical point-scoring baselines for long series.

The field's standard detectors come from pyod with its defaults (`PyODBaseline`: PCA,
IsolationForest, ECOD, COPOD, KNN, LOF, HBOS); beside them the squared PCA reconstruction error
(`pca_recon`, scikit-learn: the floor the SMD target was set against) and a seeded random floor.
Common interface: ``fit(train (T, F)) -> self`` then ``score(series (T, F)) -> (T,)``, higher
meaning more anomalous. `BASELINES` lists the names; `make_baseline` builds one.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np

from maelab.core.errors import ConfigError, DataError


def _check(series: np.ndarray, num_features: int | None = None) -> np.ndarray:
    arr = np.asarray(series, dtype=np.float64)
    if arr.ndim != 2 or len(arr) == 0:
        raise DataError(f"expected a non-empty (time, features) array, got shape {arr.shape}")
    if num_features is not None and arr.shape[1] != num_features:
        raise DataError(f"expected {num_features} features (as fitted), got {arr.shape[1]}")
    if not np.isfinite(arr).all():
        raise DataError("series holds non-finite values")
    return arr


class Baseline:
    """Fit on a train series, score any series of the same features point by point."""

    num_features: int | None = None

    def fit(self, train: np.ndarray) -> Baseline:
        """Fit on `train` (T, F); returns self."""
        train = _check(train)
        self._fit(train)
        self.num_features = train.shape[1]
        return self

    def _fit(self, train: np.ndarray) -> None:
        """Model-specific fitting on a checked (T, F) float64 array."""

    def _inputs(self, series: np.ndarray) -> np.ndarray:
        if self.num_features is None:
            raise RuntimeError(f"{type(self).__name__}.score called before fit")
        return _check(series, self.num_features)

    def score(self, series: np.ndarray) -> np.ndarray:
        """Point scores (T,) for `series` (T, F)."""
        raise NotImplementedError


class PCAReconstructionBaseline(Baseline):
    """Squared PCA reconstruction error (mean over features) of train-z-scored points."""

    def __init__(self, variance: float = 0.9) -> None:
        if not 0 < variance <= 1:
            raise ConfigError("variance", variance, "a share of explained variance in (0, 1]")
        self.variance = variance

    def _fit(self, train: np.ndarray) -> None:
        """Z-score with train statistics; keep components explaining `variance` of it."""
        from sklearn.decomposition import PCA

        self.loc = train.mean(axis=0)  # (F,)
        std = train.std(axis=0)
        self.scale = np.where(std > 0, std, 1.0)  # (F,)
        n_components = self.variance if self.variance < 1 else None
        self.pca = PCA(n_components=n_components, svd_solver="full")
        self.pca.fit((train - self.loc) / self.scale)

    def score(self, series: np.ndarray) -> np.ndarray:
        """Mean squared reconstruction error per point; (T,)."""
        z = (self._inputs(series) - self.loc) / self.scale  # (T, F)
        recon = self.pca.inverse_transform(self.pca.transform(z))  # (T, F)
        return ((z - recon) ** 2).mean(axis=1)


# name: (pyod module, detector class); each with pyod's default settings
PYOD_DETECTORS = {
    "pca": ("pyod.models.pca", "PCA"),
    "iforest": ("pyod.models.iforest", "IForest"),
    "ecod": ("pyod.models.ecod", "ECOD"),
    "copod": ("pyod.models.copod", "COPOD"),
    "knn": ("pyod.models.knn", "KNN"),
    "lof": ("pyod.models.lof", "LOF"),
    "hbos": ("pyod.models.hbos", "HBOS"),
}


class PyODBaseline(Baseline):
    """A pyod detector fitted on the training series; score = its `decision_function` (higher =
    more anomalous). Randomised detectors (IsolationForest) take `seed` as `random_state`."""

    def __init__(self, detector: str, seed: int = 0, **kwargs: Any) -> None:
        if detector not in PYOD_DETECTORS:
            raise ConfigError("baseline", detector, list(PYOD_DETECTORS))
        module, name = PYOD_DETECTORS[detector]
        cls = getattr(importlib.import_module(module), name)
        if "random_state" in inspect.signature(cls).parameters:
            kwargs.setdefault("random_state", seed)
        self.detector = cls(**kwargs)

    def _fit(self, train: np.ndarray) -> None:
        """Fit the detector on `train` (T, F)."""
        self.detector.fit(train)

    def score(self, series: np.ndarray) -> np.ndarray:
        """The detector's outlier score per point; (T,)."""
        return np.asarray(self.detector.decision_function(self._inputs(series)), dtype=np.float64)


class RandomBaseline(Baseline):
    """Uniform random scores, seeded: the same series length gives the same scores."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, series: np.ndarray) -> np.ndarray:
        """Random scores in [0, 1); (T,)."""
        return np.random.default_rng(self.seed).random(len(self._inputs(series)))


BASELINES = (*PYOD_DETECTORS, "pca_recon", "random")


def make_baseline(name: str, seed: int = 0, **kwargs: Any) -> Baseline:
    """The baseline registered under `name` (`seed` for those that draw random numbers)."""
    if name in PYOD_DETECTORS:
        return PyODBaseline(name, seed=seed, **kwargs)
    if name == "pca_recon":
        return PCAReconstructionBaseline(**kwargs)
    if name == "random":
        return RandomBaseline(seed=seed, **kwargs)
    raise ConfigError("baseline", name, list(BASELINES))
