"""VUS-PR (Paparrizos et al. 2022) on hand-computable cases."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from maelab.scoring import range_pr_auc, soft_labels, vus_pr


def test_soft_labels_sqrt_buffers():
    labels = np.zeros(12)
    labels[5:7] = 1
    soft = soft_labels(labels, window=4)  # 2 buffer points each side
    expected = np.zeros(12)
    expected[5:7] = 1
    expected[[7, 4]] = np.sqrt(1 - 1 / 4)
    expected[[8, 3]] = np.sqrt(1 - 2 / 4)
    np.testing.assert_allclose(soft, expected)
    np.testing.assert_array_equal(soft_labels(labels, 0), labels)
    np.testing.assert_array_equal(soft_labels(labels, 1), labels)  # ℓ // 2 = 0
    close = np.zeros(8)
    close[[2, 5]] = 1  # overlapping buffers add up, capped at 1
    assert soft_labels(close, 6)[[3, 4]].max() == 1.0


def test_perfect_scores_give_one():
    labels = np.zeros(500)
    for s in (50, 200, 400):
        labels[s : s + 10] = 1
    assert range_pr_auc(labels * 2.0 + 1.0, labels, window=0) == pytest.approx(1.0)
    assert vus_pr(labels, labels, max_window=1) == pytest.approx(1.0)  # ℓ = 0, 1: no buffer
    # with buffers too: no buffer point is flagged, so the recall denominator is #true points
    assert vus_pr(labels, labels, 40) == pytest.approx(1.0)


def test_buffered_range_pr_hand_example():
    # one segment of P = 4 points in n = 20; ℓ = 2 gives one buffer point per side, soft sqrt(1/2)
    n, p, b = 20, 4, np.sqrt(0.5)
    labels = np.zeros(n)
    labels[8:12] = 1
    scores = np.zeros(n)
    scores[7], scores[8:12] = 3.0, 2.0  # the left buffer point first, then the segment
    # score >= 3 flags the buffer point: TP = b, P' = (p + p + b) / 2, precision b / 1
    tpr_1 = b / (p + b / 2)
    # score >= 2 adds the segment: TP = p + b >= P', so recall (and TPR) reaches 1
    expected = tpr_1 * b + (1 - tpr_1) * (p + b) / 5
    assert range_pr_auc(scores, labels, window=2) == pytest.approx(expected)
    assert range_pr_auc(scores, labels, window=2, n_thresholds=None) == pytest.approx(expected)
    # without buffers the first flag is a false positive: TPR 0, then 1 at precision 4 / 5
    assert range_pr_auc(scores, labels, window=0) == pytest.approx(0.8)


def test_window_zero_with_one_segment_is_average_precision():
    # one segment: existence is 1 whenever recall > 0, so ℓ = 0 reduces to the step-wise
    # average precision, as scikit-learn computes it
    rng = np.random.default_rng(0)
    labels = np.zeros(200)
    labels[120:140] = 1
    scores = rng.normal(size=200) + labels
    expected = average_precision_score(labels, scores)
    assert range_pr_auc(scores, labels, 0, n_thresholds=None) == pytest.approx(expected)
    assert range_pr_auc(scores, labels, 0) == pytest.approx(expected)  # 250 >= n covers all
    assert vus_pr(scores, labels, max_window=0) == pytest.approx(expected)


def test_random_scores_approach_anomaly_share():
    rng = np.random.default_rng(1)
    n = 25000
    labels = np.zeros(n)
    for s in rng.choice(np.arange(0, n - 50, 100), 40, replace=False):
        labels[s : s + 50] = 1
    scores = rng.random(n)
    assert range_pr_auc(scores, labels, 0) == pytest.approx(labels.mean(), abs=0.02)
    # with buffers, chance level is the share of soft-label mass
    windows = range(0, 51)
    chance = np.mean([soft_labels(labels, w).mean() for w in windows])
    assert vus_pr(scores, labels, max_window=50) == pytest.approx(chance, abs=0.03)


def test_buffers_reward_near_misses():
    labels = np.zeros(300)
    labels[100:110] = 1
    scores = np.zeros(300)
    scores[111:114] = 1.0  # fires just after the anomaly
    assert range_pr_auc(scores, labels, 0) < 0.05
    assert vus_pr(scores, labels, max_window=20) > range_pr_auc(scores, labels, 0) + 0.1


def test_no_anomalies_is_nan_with_warning():
    with pytest.warns(UserWarning, match="no anomalies"):
        assert math.isnan(vus_pr(np.arange(10.0), np.zeros(10)))
    with pytest.raises(ValueError):
        vus_pr(np.arange(10.0), np.ones(10), max_window=-1)


def test_equals_the_reference_implementation():
    """The authors' code (package `vus`, TheDatumOrg/VUS) where it is importable: its full
    install pulls TensorFlow, so the project does not depend on it; `pip install --no-deps vus`
    is enough for the module used here (numpy, pandas, scikit-learn, tqdm)."""
    reference = pytest.importorskip("vus.utils.metrics")
    rng = np.random.default_rng(0)
    for trial in range(4):
        labels = np.zeros(1500, dtype=int)
        for s in rng.choice(1440, 5, replace=False):
            labels[s : s + rng.integers(1, 40)] = 1
        scores = rng.normal(size=1500) + 1.5 * labels + np.convolve(labels, np.ones(15) / 30, "same")
        if trial == 3:
            scores = np.round(scores, 1)  # ties
        for window in (0, 7, 30):
            expected = reference.metricor().RangeAUC_volume_opt(labels, scores, window, thre=250)[-1]
            assert vus_pr(scores, labels, max_window=window) == pytest.approx(expected, abs=1e-12)
