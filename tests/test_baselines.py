"""Classical baselines: interface, determinism, and the detectors beating random on an easy case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from maelab.core.errors import ConfigError, DataError
from maelab.models.baselines import BASELINES, PyODBaseline, RandomBaseline, make_baseline

SMD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "smd"


def _correlated(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 8) points on a 2-D latent plane plus small noise."""
    latent = rng.normal(size=(n, 2))
    mixing = np.array([[1, 0.5, -1, 0.3, 2, 0, 1, -0.5], [0, 1, 0.5, -1, 0.2, 1.5, -1, 1]])
    return latent @ mixing + 0.05 * rng.normal(size=(n, 8))


def test_pca_beats_random_on_injected_anomaly() -> None:
    rng = np.random.default_rng(0)
    train, test = _correlated(2000, rng), _correlated(1000, rng)
    labels = np.zeros(1000, dtype=int)
    labels[400:450] = 1
    test[400:450, 3] += 1.5  # breaks the correlation without leaving the marginal range
    auc = {name: roc_auc_score(labels, make_baseline(name).fit(train).score(test))
           for name in BASELINES}
    assert auc["pca_recon"] > 0.95
    assert abs(auc["random"] - 0.5) < 0.1
    # the correlation break is found by what models the low-dimensional structure (PCA
    # reconstruction, neighbour distances); per-feature detectors (ECOD, COPOD, HBOS) see only
    # marginals, which it keeps, and pyod's default PCA weighs every component (0.56 here)
    for name in ("pca_recon", "knn", "lof"):
        assert auc[name] > auc["random"] + 0.3, (name, auc)


def test_isolation_forest_is_sklearns_forest() -> None:
    """pyod's IForest wraps scikit-learn's: the same scores up to a constant, so the same
    ranking, thresholds and metrics as the forest used before pyod."""
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(2)
    train, test = _correlated(600, rng), _correlated(200, rng)
    sklearn_scores = -IsolationForest(random_state=3).fit(train).score_samples(test)
    offset = make_baseline("iforest", seed=3).fit(train).score(test) - sklearn_scores
    np.testing.assert_allclose(offset, offset[0], atol=1e-12)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_interface_and_determinism(name: str) -> None:
    if SMD.is_dir():
        data = np.load(SMD / "machine-1-2_train.npy")[:500]
    else:
        data = np.random.default_rng(1).random((500, 38)).astype(np.float32)
    train, test = data[:300], data[300:]
    scores = make_baseline(name).fit(train).score(test)
    assert scores.shape == (200,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, make_baseline(name).fit(train).score(test))
    with pytest.raises(DataError, match="features"):
        make_baseline(name).fit(train).score(test[:, :5])


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="baseline"):
        make_baseline("lstm")
    with pytest.raises(RuntimeError, match="before fit"):
        RandomBaseline().score(np.zeros((5, 2)))
    with pytest.raises(DataError, match="non-finite"):
        make_baseline("pca").fit(np.full((5, 2), np.nan))
    with pytest.raises(ConfigError, match="baseline"):
        PyODBaseline("deep_svdd")
    assert not np.array_equal(
        RandomBaseline(seed=1).fit(np.zeros((5, 2))).score(np.zeros((50, 2))),
        RandomBaseline(seed=2).fit(np.zeros((5, 2))).score(np.zeros((50, 2))),
    )
