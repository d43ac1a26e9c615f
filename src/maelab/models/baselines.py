"""Classical point-scoring baselines for long series (scikit-learn).

Common interface: ``fit(train (T, F)) -> self`` then ``score(series (T, F)) -> (T,)``, higher
meaning more anomalous. `BASELINES` maps a name to its class; `make_baseline` builds one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest

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


class PCABaseline(Baseline):
    """Squared PCA reconstruction error (mean over features) of train-z-scored points."""

    def __init__(self, variance: float = 0.9) -> None:
        if not 0 < variance <= 1:
            raise ConfigError("variance", variance, "a share of explained variance in (0, 1]")
        self.variance = variance

    def _fit(self, train: np.ndarray) -> None:
        """Z-score with train statistics; keep components explaining `variance` of it."""
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


class IsolationForestBaseline(Baseline):
    """Isolation Forest; score = negative `score_samples` (higher = more anomalous)."""

    def __init__(self, n_estimators: int = 100, max_samples: int | str = "auto", seed: int = 0):
        self.forest = IsolationForest(
            n_estimators=n_estimators, max_samples=max_samples, random_state=seed
        )

    def _fit(self, train: np.ndarray) -> None:
        """Grow the forest on `train` (T, F)."""
        self.forest.fit(train)

    def score(self, series: np.ndarray) -> np.ndarray:
        """Negative isolation score per point; (T,)."""
        return -self.forest.score_samples(self._inputs(series))


class RandomBaseline(Baseline):
    """Uniform random scores, seeded: the same series length gives the same scores."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, series: np.ndarray) -> np.ndarray:
        """Random scores in [0, 1); (T,)."""
        return np.random.default_rng(self.seed).random(len(self._inputs(series)))


BASELINES: dict[str, type[Baseline]] = {
    "pca": PCABaseline,
    "iforest": IsolationForestBaseline,
    "random": RandomBaseline,
}


def make_baseline(name: str, **kwargs: Any) -> Baseline:
    """Instantiate the baseline registered under `name`."""
    if name not in BASELINES:
        raise ConfigError("baseline", name, list(BASELINES))
    return BASELINES[name](**kwargs)
