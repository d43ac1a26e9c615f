"""Thresholds come from validation only; anomalous iff score > threshold."""

import warnings

import numpy as np
import pytest
import torch

from maelab.core.errors import ConfigError
from maelab.scoring import (
    detection_metrics,
    f1_optimal_threshold,
    percentile_threshold,
    predict,
    select_threshold,
)


def test_f1_optimal_threshold_hand_example():
    # sorted desc: 0.9(1) 0.8(0) 0.7(1) 0.2(0) 0.1(0); cut after 0.7 -> tp=2, k=3, F1=4/5
    scores = np.array([0.1, 0.9, 0.7, 0.2, 0.8])
    labels = np.array([0, 1, 1, 0, 0])
    threshold, f1 = f1_optimal_threshold(scores, labels)
    assert threshold == 0.2  # highest score left normal
    assert f1 == pytest.approx(0.8)
    assert predict(scores, threshold).tolist() == [False, True, True, False, True]


def test_f1_threshold_never_splits_ties_and_can_flag_everything():
    threshold, f1 = f1_optimal_threshold(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0]))
    assert threshold == 0.1 and f1 == pytest.approx(2 / 3)  # both tied 0.5 flagged together
    threshold, f1 = f1_optimal_threshold(np.array([0.3, 0.4]), np.array([1, 1]))
    assert threshold < 0.3 and f1 == 1.0
    assert bool(predict(np.array([0.3, 0.4]), threshold).all())


def test_f1_threshold_needs_an_anomaly():
    with pytest.raises(ValueError, match="labelled anomaly"):
        f1_optimal_threshold(np.arange(4.0), np.zeros(4))


def test_percentile_threshold():
    assert percentile_threshold(np.arange(101.0), 99.0) == pytest.approx(99.0)
    assert percentile_threshold(torch.arange(11.0), 50) == pytest.approx(5.0)
    with pytest.raises(ConfigError):
        percentile_threshold(np.arange(3.0), 101)


def test_select_threshold_methods():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(500), np.ones(20)]
    scores = rng.normal(size=520) + 4 * labels
    threshold, method = select_threshold(scores, labels, method="f1")
    assert method == "f1" and threshold == f1_optimal_threshold(scores, labels)[0]
    threshold, method = select_threshold(scores, labels, method="percentile", percentile=95)
    assert method == "percentile"
    assert threshold == pytest.approx(np.percentile(scores[:500], 95))  # normals only
    with pytest.raises(ConfigError, match="threshold.method"):
        select_threshold(scores, labels, method="oracle")


def test_empty_anomaly_validation_warns_and_uses_percentile():
    scores = np.arange(200.0)
    with pytest.warns(UserWarning, match="no labelled anomalies"):
        threshold, method = select_threshold(scores, np.zeros(200), method="f1", percentile=99.0)
    assert method == "percentile"
    assert threshold == pytest.approx(np.percentile(scores, 99.0))
    assert threshold > scores.min()  # not the lowest threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_threshold(scores, np.zeros(200), method="percentile")  # asked for: no warning


def _split(rng, n_normal, n_anom, shift):
    labels = np.r_[np.zeros(n_normal), np.ones(n_anom)]
    return rng.normal(size=labels.size) + shift * labels, labels


def test_threshold_chosen_on_validation_ignores_test_data():
    rng = np.random.default_rng(1)
    val_scores, val_labels = _split(rng, 400, 40, 3.0)
    threshold, _ = select_threshold(val_scores, val_labels)
    stats = (float(val_scores[:400].mean()), float(val_scores[:400].std()))

    test_a = _split(rng, 400, 40, 3.0)
    test_b = (test_a[0] * 50 + 1e4, test_a[1])  # drastically different test scores
    for test_scores, test_labels in (test_a, test_b):
        m = detection_metrics(test_scores, test_labels, threshold, *stats)
        # metrics at the validation threshold are exactly the hand-computed counts
        pred = test_scores > threshold
        tp = int((pred & (test_labels == 1)).sum())
        assert m["precision"] == pytest.approx(tp / max(pred.sum(), 1))
        assert m["recall"] == pytest.approx(tp / 40)
    # the validation threshold is unchanged by the test data (select_threshold only sees val)
    assert select_threshold(val_scores, val_labels)[0] == threshold
    # on the shifted test set the val threshold flags everything; a leak would have re-tuned it
    m_b = detection_metrics(test_b[0], test_b[1], threshold, *stats)
    assert m_b["precision"] == pytest.approx(40 / 440) and m_b["recall"] == 1.0
    assert m_b["best_f1_oracle"] > 0.8 > m_b["f1"]
    assert m_b["best_f1_oracle_threshold"] != threshold
