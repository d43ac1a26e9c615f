"""Decision thresholds, chosen on the validation split only.

Prediction rule everywhere in maelab: a sample is anomalous iff ``score > threshold``
(the same strict inequality torchmetrics uses for hard predictions).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from maelab.core.errors import ConfigError
from maelab.scoring._arrays import ArrayLike, as_labels, as_scores, check_scores

THRESHOLD_METHODS = ("f1", "percentile")


def predict(scores: ArrayLike, threshold: float) -> torch.Tensor:
    """Hard predictions (N,) bool: ``score > threshold``."""
    return as_scores(scores) > float(threshold)


def f1_optimal_threshold(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``score > threshold`` over every distinct cut.

    The threshold is an observed score (the highest one predicted normal), or just below the
    minimum when flagging everything is best. Ties in F1 go to the highest threshold. Use it on
    validation data only; raises ValueError when there is no labelled anomaly (F1 would be 0 at
    every cut and the choice arbitrary).
    """
    s, y = as_scores(scores), as_labels(labels)
    check_scores(s, y)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("F1-optimal threshold needs at least one labelled anomaly")
    order = torch.argsort(s, descending=True, stable=True)
    s_desc, y_desc = s[order], y[order].to(torch.float64)  # (N,)
    tp = torch.cumsum(y_desc, 0)  # (N,) true positives when flagging the top k+1
    # Cut only after the last of a run of tied scores: flag all of a tied value or none of it.
    last_of_value = torch.ones_like(y)
    last_of_value[:-1] = s_desc[:-1] != s_desc[1:]
    idx = torch.nonzero(last_of_value).squeeze(1)  # (C,) candidate cut positions
    k = (idx + 1).to(torch.float64)  # (C,) number flagged
    f1 = 2.0 * tp[idx] / (k + n_pos)  # (C,)
    best = int(torch.argmax(f1))  # first maximum = fewest flagged = highest threshold
    cut = int(idx[best])
    if cut + 1 < s_desc.numel():
        threshold = float(s_desc[cut + 1])  # highest score left normal
    else:
        threshold = float(np.nextafter(float(s_desc[-1]), -math.inf))  # flag everything
    return threshold, float(f1[best])


def percentile_threshold(normal_scores: ArrayLike, q: float = 99.0) -> float:
    """The q-th percentile (linear interpolation) of scores of normal samples."""
    if not 0.0 <= float(q) <= 100.0:
        raise ConfigError("threshold.percentile", q, "a percentile in [0, 100]")
    s = as_scores(normal_scores)
    check_scores(s)
    return float(np.percentile(s.numpy(), float(q)))


def select_threshold(
    scores: ArrayLike, labels: ArrayLike, method: str = "f1", percentile: float = 99.0
) -> tuple[float, str]:
    """(threshold, method_used) from *validation* scores/labels.

    ``"f1"``: F1-optimal threshold; if validation holds no labelled anomaly, warns (UserWarning)
    and falls back to the percentile rule. ``"percentile"``: the `percentile`-th percentile of
    the validation scores labelled normal.
    """
    if method not in THRESHOLD_METHODS:
        raise ConfigError("threshold.method", method, THRESHOLD_METHODS)
    s, y = as_scores(scores), as_labels(labels)
    check_scores(s, y)
    if method == "f1":
        if bool(y.any()):
            return f1_optimal_threshold(s, y)[0], "f1"
        warnings.warn(
            "validation split has no labelled anomalies: F1-optimal threshold is undefined; "
            f"using the {percentile}th percentile of validation normal scores instead",
            UserWarning,
            stacklevel=2,
        )
    normal = s[~y]
    if normal.numel() == 0:
        raise ValueError("percentile threshold needs validation samples labelled normal")
    return percentile_threshold(normal, percentile), "percentile"
