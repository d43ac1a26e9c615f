"""VUS-PR (Paparrizos et al. 2022) on hand-computable cases."""

import math

import numpy as np
import pytest
from sklearn.metrics import auc, precision_recall_curve

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


def test_perfect_scores_give_one_without_buffers():
    labels = np.zeros(500)
    for s in (50, 200, 400):
        labels[s : s + 10] = 1
    assert range_pr_auc(labels * 2.0 + 1.0, labels, window=0) == pytest.approx(1.0)
    assert vus_pr(labels, labels, max_window=1) == pytest.approx(1.0)  # ℓ = 0, 1: no buffer
    # with buffers the published recall denominator holds half the buffer mass, so flagging
    # exactly the anomalous points stays below 1; scores that also rise nearby do better
    smooth = np.max([soft_labels(labels, w) for w in range(41)], axis=0)
    assert vus_pr(smooth, labels, 40) > 0.99 > vus_pr(labels, labels, 40) > 0.8


def test_buffered_range_pr_hand_example():
    # one segment of P = 4 points in n = 20; ℓ = 2 gives one buffer point per side, soft sqrt(1/2)
    n, p, b = 20, 4, np.sqrt(0.5)
    labels = np.zeros(n)
    labels[8:12] = 1
    p_new = (p + p + 2 * b) / 2
    r1 = p / p_new  # flag the 4 anomalous points: precision 1
    prec_all = (p + 2 * b) / n  # flag everything: recall capped at 1
    expected = r1 * 1.0 + (1 - r1) * (1.0 + prec_all) / 2  # trapezoids from (0, 1)
    assert range_pr_auc(labels, labels, window=2) == pytest.approx(expected)


def test_window_zero_is_trapezoid_pr_auc():
    # one segment: existence is 1 whenever recall > 0, so ℓ = 0 reduces to the ordinary
    # trapezoidal PR AUC (curve starting at recall 0, precision 1)
    rng = np.random.default_rng(0)
    labels = np.zeros(200)
    labels[120:140] = 1
    scores = rng.normal(size=200) + labels
    precision, recall, _ = precision_recall_curve(labels, scores)
    expected = auc(recall, precision)
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
