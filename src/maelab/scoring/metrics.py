"""Detection metrics at a validation-chosen threshold, via torchmetrics' functional API.

Ranking metrics (AUROC, AUPRC) get scores mapped into (0, 1) with the validation-normal
statistics first (`to_unit_interval`), because torchmetrics applies a sigmoid to scores outside
[0, 1], which would tie large raw errors. Threshold metrics use ``score > threshold`` on the raw
scores. ``best_f1_oracle`` picks its threshold on the evaluated data itself: it is an upper
bound for reference, never a result.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_stat_scores,
)

from maelab.scoring._arrays import ArrayLike, as_ints, as_labels, as_scores, check_scores
from maelab.scoring.normalization import to_unit_interval
from maelab.scoring.thresholds import f1_optimal_threshold, predict


def point_adjust(preds: ArrayLike, labels: ArrayLike) -> torch.Tensor:
    """Point-adjusted predictions (N,) bool for a time-ordered series.

    Standard point adjustment: if any point of a contiguous true-anomaly segment is flagged,
    every point of that segment counts as flagged. Predictions outside segments are unchanged.
    """
    return _adjust_segments(as_labels(preds), as_labels(labels))


def _adjust_segments(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`point_adjust` on flat bool tensors."""
    if p.numel() != y.numel():
        raise ValueError(f"preds ({p.numel()}) and labels ({y.numel()}) differ in length")
    starts = y.clone()
    starts[1:] &= ~y[:-1]  # (N,) first point of each segment
    seg = torch.cumsum(starts.long(), 0) * y.long()  # (N,) segment id, 0 outside segments
    hit = torch.zeros(int(starts.sum()) + 1, dtype=torch.long)
    hit.scatter_reduce_(0, seg, p.long(), reduce="amax")  # (S+1,) any flag per segment
    return p | (y & hit[seg].bool())


def _ratio(num: int, den: int) -> float:
    """num / den, 0 when den is 0 (torchmetrics' and sklearn's zero_division=0)."""
    return num / den if den else 0.0


def _threshold_metrics(preds: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
    """(precision, recall, F1) of hard predictions, exact from integer confusion counts."""
    tp, fp, _, fn, _ = (int(v) for v in binary_stat_scores(preds.long(), labels.long()))
    return _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(2 * tp, 2 * tp + fp + fn)


def _type_names(types: torch.Tensor, type_names: Sequence[str] | None) -> dict[int, str]:
    """{type code: name} for anomaly types >= 1 (0 = normal is skipped)."""
    if type_names is None:
        return {int(t): str(int(t)) for t in torch.unique(types) if int(t) > 0}
    if int(types.max()) >= len(type_names) or int(types.min()) < 0:
        raise ValueError(f"anomaly type codes outside 0..{len(type_names) - 1} ({type_names})")
    return {t: name for t, name in enumerate(type_names) if t > 0}


def detection_metrics(
    scores: ArrayLike,
    labels: ArrayLike,
    threshold: float,
    norm_mean: float,
    norm_std: float,
    anomaly_types: ArrayLike | None = None,
    type_names: Sequence[str] | None = None,
    point_adjust: bool = False,
) -> dict[str, float]:
    """Metrics of `scores` (N,) against binary `labels` (N,) as a dict of plain floats.

    Keys: ``auroc``, ``auprc`` (NaN with a warning if only one class is present), ``precision``,
    ``recall``, ``f1`` at `threshold` (from validation; anomalous iff score > threshold),
    ``best_f1_oracle`` and ``best_f1_oracle_threshold`` (best F1 over all thresholds on this very
    data: an oracle, NaN without anomalies), ``recall_<type>`` for each anomaly type >= 1 (among
    labelled anomalies of that type; NaN if none; `type_names[t]` names code t, index 0 = normal),
    ``n``, ``n_anomalous``. With `point_adjust` (time-ordered point scores only) also
    ``precision_point_adjusted``, ``recall_point_adjusted``, ``f1_point_adjusted`` beside the
    unadjusted ones.
    """
    s, y = as_scores(scores), as_labels(labels)  # (N,), (N,)
    check_scores(s, y)
    n_pos = int(y.sum())
    out: dict[str, float] = {}
    if 0 < n_pos < y.numel():
        unit = to_unit_interval(s, norm_mean, norm_std)  # (N,) in (0, 1), float64
        out["auroc"] = float(binary_auroc(unit, y.long()))
        out["auprc"] = float(binary_average_precision(unit, y.long()))
    else:
        warnings.warn(
            f"only one class in labels ({n_pos} anomalous of {y.numel()}): AUROC/AUPRC are NaN",
            UserWarning,
            stacklevel=2,
        )
        out["auroc"] = out["auprc"] = math.nan
    preds = predict(s, threshold)  # (N,) bool
    out["precision"], out["recall"], out["f1"] = _threshold_metrics(preds, y)
    if n_pos > 0:
        oracle_threshold, oracle_f1 = f1_optimal_threshold(s, y)
        out["best_f1_oracle"], out["best_f1_oracle_threshold"] = oracle_f1, oracle_threshold
    else:
        out["best_f1_oracle"] = out["best_f1_oracle_threshold"] = math.nan
    if anomaly_types is not None:
        types = as_ints(anomaly_types)  # (N,)
        if types.numel() != y.numel():
            raise ValueError(f"anomaly_types ({types.numel()}) and labels ({y.numel()}) differ")
        for code, name in _type_names(types, type_names).items():
            of_type = (types == code) & y  # labelled anomalies of this type
            recall = preds[of_type].double().mean() if bool(of_type.any()) else math.nan
            out[f"recall_{name}"] = float(recall)
    out["n"], out["n_anomalous"] = float(y.numel()), float(n_pos)
    if point_adjust:
        pa = _threshold_metrics(_adjust_segments(preds, y), y)
        out["precision_point_adjusted"], out["recall_point_adjusted"] = pa[0], pa[1]
        out["f1_point_adjusted"] = pa[2]
    return out
