"""Detection metrics against hand-computed and sklearn values."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from maelab.scoring import detection_metrics, fit_normal_stats, point_adjust

KEYS = {"auroc", "auprc", "precision", "recall", "f1", "best_f1_oracle",
        "best_f1_oracle_threshold", "n", "n_anomalous"}


def test_perfect_and_inverted_scores():
    labels = np.r_[np.zeros(50), np.ones(10)]
    scores = np.r_[np.linspace(0, 1, 50), np.linspace(2, 3, 10)]
    m = detection_metrics(scores, labels, threshold=1.5, norm_mean=0.5, norm_std=0.3)
    assert set(m) == KEYS and all(isinstance(v, float) for v in m.values())
    assert m["auroc"] == 1.0 and m["auprc"] == 1.0
    assert m["precision"] == m["recall"] == m["f1"] == m["best_f1_oracle"] == 1.0
    assert (m["n"], m["n_anomalous"]) == (60.0, 10.0)
    inv = detection_metrics(-scores, labels, threshold=0.0, norm_mean=-0.5, norm_std=0.3)
    assert inv["auroc"] == 0.0


def test_random_scores_give_chance_auroc_and_prevalence_auprc():
    rng = np.random.default_rng(0)
    labels = rng.random(20000) < 0.1
    scores = rng.normal(size=20000)
    m = detection_metrics(scores, labels, 1.0, *fit_normal_stats(scores, labels))
    assert m["auroc"] == pytest.approx(0.5, abs=0.02)
    assert m["auprc"] == pytest.approx(labels.mean(), abs=0.02)


def test_f1_at_threshold_hand_example():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    # score > 0.3 flags 0.4(FP) 0.35(TP) 0.8(TP) 0.7(TP): P = 3/4, R = 1, F1 = 6/7
    m = detection_metrics(scores, labels, threshold=0.3, norm_mean=0.2, norm_std=0.1)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(6 / 7)
    # the boundary is strict: a score equal to the threshold is normal
    m = detection_metrics(scores, labels, threshold=0.35, norm_mean=0.2, norm_std=0.1)
    assert m["recall"] == pytest.approx(2 / 3)
    # oracle: threshold 0.4 flags 0.8, 0.7 only -> F1 = 0.8; or 0.2 flags 4 -> 6/7 (best)
    assert m["best_f1_oracle"] == pytest.approx(6 / 7)
    assert m["best_f1_oracle_threshold"] == pytest.approx(0.2)


def test_huge_raw_scores_keep_their_ranking():
    rng = np.random.default_rng(3)
    scores = 10 ** rng.uniform(3, 9, size=2000)  # raw errors 1e3..1e9
    labels = rng.random(2000) < (np.log10(scores) - 3) / 6  # higher score, likelier anomaly
    stats = fit_normal_stats(scores, labels)
    m = detection_metrics(scores, labels, float(np.median(scores)), *stats)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert m["auprc"] == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    precision, recall, _ = precision_recall_curve(labels, scores)
    f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    assert m["best_f1_oracle"] == pytest.approx(f1.max())


def test_per_type_recall():
    scores = np.array([0.0, 0.1, 0.9, 0.2, 0.8, 0.7, 0.95])
    labels = np.array([0, 0, 1, 1, 1, 1, 0])
    types = np.array([0, 0, 1, 1, 2, 2, 0])
    m = detection_metrics(scores, labels, 0.5, 0.0, 1.0, anomaly_types=types,
                          type_names=["normal", "spike", "drift", "noise"])
    assert m["recall_spike"] == 0.5 and m["recall_drift"] == 1.0
    assert math.isnan(m["recall_noise"])  # absent type: undefined, not 0
    assert "recall_normal" not in m
    unnamed = detection_metrics(scores, labels, 0.5, 0.0, 1.0, anomaly_types=torch.tensor(types))
    assert unnamed["recall_1"] == 0.5 and unnamed["recall_2"] == 1.0


def test_single_class_does_not_crash():
    with pytest.warns(UserWarning, match="one class"):
        m = detection_metrics(np.arange(5.0), np.zeros(5), 2.5, 2.0, 1.0)
    assert math.isnan(m["auroc"]) and math.isnan(m["auprc"]) and math.isnan(m["best_f1_oracle"])
    assert m["precision"] == 0.0 and m["n_anomalous"] == 0.0
    with pytest.warns(UserWarning):
        m = detection_metrics(np.arange(5.0), np.ones(5), 2.5, 2.0, 1.0)
    assert math.isnan(m["auroc"]) and m["recall"] == pytest.approx(0.4)


def test_point_adjust_standard_definition():
    labels = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 1])
    preds = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    adjusted = point_adjust(preds, labels)
    assert adjusted.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # FP outside kept, 2nd segment missed
    assert point_adjust(np.zeros(0), np.zeros(0)).numel() == 0
    assert point_adjust([1, 0, 0], [0, 0, 0]).tolist() == [True, False, False]


def test_point_adjusted_metrics_reported_beside_honest_ones():
    labels = np.array([0, 1, 1, 1, 1, 0, 0, 0])
    scores = np.array([0.0, 0.9, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = detection_metrics(scores, labels, 0.5, 0.0, 1.0, point_adjust=True)
    assert m["recall"] == 0.25 and m["recall_point_adjusted"] == 1.0
    assert m["f1"] == pytest.approx(0.4) and m["f1_point_adjusted"] == 1.0
    assert m["precision_point_adjusted"] == 1.0
    assert "f1_point_adjusted" not in detection_metrics(scores, labels, 0.5, 0.0, 1.0)
