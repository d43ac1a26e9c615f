"""Anomaly scores, normalisation, thresholds and metrics (pure functions, no Lightning)."""

from maelab.scoring.mahalanobis import (
    Whitening,
    cross_fitted_mahalanobis,
    fit_whitening,
    mahalanobis,
)
from maelab.scoring.metrics import detection_metrics, point_adjust
from maelab.scoring.normalization import (
    NormalStats,
    fit_normal_stats,
    standardize,
    to_unit_interval,
)
from maelab.scoring.point_scores import (
    assemble_point_scores,
    scored_mask,
    sliding_window_starts,
)
from maelab.scoring.thresholds import (
    THRESHOLD_METHODS,
    f1_optimal_threshold,
    percentile_threshold,
    predict,
    select_threshold,
)
from maelab.scoring.vus import range_pr_auc, soft_labels, vus_pr

__all__ = [
    "THRESHOLD_METHODS",
    "NormalStats",
    "Whitening",
    "assemble_point_scores",
    "cross_fitted_mahalanobis",
    "detection_metrics",
    "f1_optimal_threshold",
    "fit_normal_stats",
    "fit_whitening",
    "mahalanobis",
    "percentile_threshold",
    "point_adjust",
    "predict",
    "range_pr_auc",
    "scored_mask",
    "select_threshold",
    "sliding_window_starts",
    "soft_labels",
    "standardize",
    "to_unit_interval",
    "vus_pr",
]
