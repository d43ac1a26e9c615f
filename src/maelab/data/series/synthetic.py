"""Seeded, numpy-vectorised generator of multivariate server-metric windows with labelled anomalies.

Each window is a (T, F) slice of correlated, periodic metrics. An anomalous window carries one
injected anomaly of a known type over a contiguous span; `point_labels` marks that span. With
probability `focus_share` the span overlaps the last `focus_last` steps (the region scored at
inference), so the default evaluation ("an anomaly overlaps the scored region") is meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

BASE_FEATURES = ("cpu", "memory", "disk_io", "network", "response_time")
ANOMALY_TYPES = (
    "normal", "spike", "noise_burst", "level_shift", "trend", "frequency_change",
    "correlation_break",
)


@dataclass
class AnomalyWindows:
    """A split of windows: values (N, T, F) float32, labels, anomaly type per window."""

    x: np.ndarray  # (N, T, F) float32
    point_labels: np.ndarray  # (N, T) uint8, 1 inside the injected anomaly
    anomaly_type: np.ndarray  # (N,) int64 index into ANOMALY_TYPES, 0 = normal
    labelled: np.ndarray  # (N,) bool, label known to training

    @property
    def label(self) -> np.ndarray:  # (N,) int64: any anomaly in the window
        return self.point_labels.any(axis=1).astype(np.int64)


def feature_names(num_features: int) -> list[str]:
    """Named base metrics first, then `extra_k` mixtures."""
    extra = [f"extra_{k}" for k in range(max(0, num_features - len(BASE_FEATURES)))]
    return (list(BASE_FEATURES) + extra)[:num_features]


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], phi: float, scale: float) -> np.ndarray:
    """AR(1) noise along the last axis, stationary variance scale²."""
    eps = rng.normal(0.0, scale * np.sqrt(1 - phi**2), size=shape)
    return lfilter([1.0], [1.0, -phi], eps, axis=-1)


def _normal_windows(rng: np.random.Generator, n: int, t: int, f: int) -> tuple[np.ndarray, dict]:
    """Correlated periodic metrics (n, t, f) plus the latent pieces anomalies need."""
    steps = np.arange(t, dtype=np.float64)[None, :]  # (1, T)
    period = rng.uniform(20.0, 50.0, size=(n, 1))
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    periodic = np.sin(2 * np.pi * steps / period + phase) + 0.3 * np.sin(
        4 * np.pi * steps / period + 2 * phase
    )  # (N, T)
    load = periodic + _ar1(rng, (n, t), 0.8, 0.3)  # (N, T) shared workload driver
    drift = np.cumsum(rng.normal(0, 0.02, size=(n, t)), axis=1)  # slow memory drift
    lagged = np.concatenate([load[:, :1].repeat(3, 1), load[:, :-3]], axis=1)  # disk lags load

    def noise(scale: float) -> np.ndarray:
        return _ar1(rng, (n, t), 0.5, scale)

    cpu = 0.8 * load + noise(0.2)
    memory = 0.3 * load + drift + noise(0.15)
    disk = 0.6 * lagged + noise(0.3)
    network = 0.7 * load + noise(0.25)
    response = np.log1p(np.exp(0.8 * cpu + 0.5 * network)) + noise(0.15)  # softplus coupling
    cols = [cpu, memory, disk, network, response]
    for _ in range(f - len(cols)):  # extra features: random mixtures of the base ones
        w = rng.normal(0, 0.5, size=len(BASE_FEATURES))
        cols.append(sum(wi * c for wi, c in zip(w, cols[:5], strict=True)) + noise(0.3))
    x = np.stack(cols[:f], axis=-1)  # (N, T, F)
    loading = np.array([0.8, 0.3, 0.6, 0.7, 0.5] + [0.5] * max(0, f - 5))[:f]
    return x, {"period": period, "phase": phase, "loading": loading}


def _inject(
    rng: np.random.Generator, x: np.ndarray, types: np.ndarray, latent: dict,
    focus_last: int, focus_share: float,
) -> np.ndarray:
    """Inject one anomaly per window with type > 0 (in place); return point labels (N, T)."""
    n, t, f = x.shape
    std = x.reshape(-1, f).std(axis=0)  # (F,) scale of each metric
    lo = np.array([0, 1, 5, 10, 10, 10, 15])  # span length range per type
    hi = np.array([0, 3, 20, 30, 40, 40, 40])
    length = rng.integers(lo[types], hi[types] + 1)  # (N,)
    length = np.where(types > 0, length, 0)
    # start: overlap the scored region [t - focus_last, t) with probability focus_share
    focus = rng.random(n) < focus_share
    first = np.maximum(t - focus_last - length + 1, 0)
    start_focus = rng.integers(first, t)  # span touches the last focus_last steps
    start_any = rng.integers(0, np.maximum(t - length, 0) + 1)
    start = np.where(focus, start_focus, start_any)
    steps = np.arange(t)[None, :]
    span = (steps >= start[:, None]) & (steps < (start + length)[:, None])  # (N, T)
    # features hit: 1-3 random features, always including one picked at random
    hit = rng.random((n, f)) < 0.35
    hit[np.arange(n), rng.integers(0, f, size=n)] = True  # (N, F)
    cells = span[:, :, None] & hit[:, None, :]  # (N, T, F)
    sign = rng.choice([-1.0, 1.0], size=(n, 1, f))
    rel = (steps - start[:, None]) / np.maximum(length, 1)[:, None]  # (N, T) position in span

    def apply(kind: int, delta: np.ndarray) -> None:
        sel = (types == kind)[:, None, None] & cells
        x[sel] += delta[sel]

    mag = rng.uniform(3.0, 6.0, size=(n, 1, f)) * std
    apply(1, np.broadcast_to(sign * mag, x.shape))
    apply(2, rng.normal(0, 1, size=x.shape) * rng.uniform(2.0, 4.0, size=(n, 1, f)) * std)
    apply(3, np.broadcast_to(sign * rng.uniform(2.0, 4.0, size=(n, 1, f)) * std, x.shape))
    apply(4, sign * rel[:, :, None] * rng.uniform(3.0, 5.0, size=(n, 1, f)) * std)
    # frequency change: the periodic component of the hit metrics runs 2-4x faster
    faster = latent["period"] / rng.uniform(2.0, 4.0, size=(n, 1))
    old = np.sin(2 * np.pi * steps / latent["period"] + latent["phase"])
    new = np.sin(2 * np.pi * steps / faster + latent["phase"])
    apply(5, ((new - old)[:, :, None] * 1.5 * latent["loading"][None, None, :]))
    # correlation break: one metric decouples, replaced by independent noise of its own scale
    mean = x.mean(axis=1, keepdims=True)
    indep = mean + _ar1(rng, (n, f, t), 0.8, 1.0).transpose(0, 2, 1) * std
    single = np.zeros((n, 1, f), dtype=bool)
    single[np.arange(n), 0, rng.integers(0, f, size=n)] = True
    sel = (types == 6)[:, None, None] & span[:, :, None] & single
    x[sel] = indep[sel]
    return span.astype(np.uint8)


def generate_windows(
    n: int,
    seq_length: int = 100,
    num_features: int = 5,
    anomaly_share: float = 0.25,
    labelled_share: float = 0.0,
    focus_last: int = 10,
    focus_share: float = 0.8,
    seed: int = 0,
) -> AnomalyWindows:
    """Generate `n` windows; `anomaly_share` of them anomalous (types uniform over the six).

    `labelled_share` (of all windows) marks that many anomalous windows as labelled for training;
    the remaining anomalies stay unlabelled (contamination).
    """
    rng = np.random.default_rng(seed)
    x, latent = _normal_windows(rng, n, seq_length, num_features)
    n_anom = round(anomaly_share * n)
    types = np.zeros(n, dtype=np.int64)
    types[:n_anom] = rng.integers(1, len(ANOMALY_TYPES), size=n_anom)
    labelled = np.zeros(n, dtype=bool)
    labelled[: min(round(labelled_share * n), n_anom)] = True
    order = rng.permutation(n)  # interleave normal and anomalous windows
    types, labelled = types[order], labelled[order]
    point_labels = _inject(rng, x, types, latent, focus_last, focus_share)
    return AnomalyWindows(x.astype(np.float32), point_labels, types, labelled)


# ---- the seed study's generator (yunkio/anomaly_mae), re-implemented vectorised ----------------
DESIGN_FEATURES = ("cpu", "memory", "disk_io", "network", "response_time")
DESIGN_ANOMALY_TYPES = ("normal", "spike", "memory_leak", "noise", "drift", "network_congestion")


def _design_normal(rng: np.random.Generator, n: int, t: int) -> np.ndarray:
    """(n, t, 5) server metrics over 4π, before clipping to [0, 1]: cpu a noisy sine, memory
    following cpu, disk with Poisson spikes, network a rectified sine, response from cpu and
    network."""
    s = np.linspace(0, 4 * np.pi, t)[None, :]  # (1, T)

    def u(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, size=(n, 1))

    def noise(scale: float) -> np.ndarray:
        return rng.normal(0, scale, size=(n, t))

    freq = u(0.5, 2.0)
    cpu = u(0.2, 0.4) + u(0.3, 0.7) * np.sin(freq * s) + noise(0.05)
    memory = u(0.4, 0.6) + 0.3 * cpu + 0.2 * np.sin(0.5 * freq * s) + noise(0.03)
    disk = u(0.1, 0.3) + 0.2 * memory + 0.2 * rng.poisson(0.1, size=(n, t)) + noise(0.05)
    network = u(0.2, 0.5) * np.abs(np.sin(u(1.0, 3.0) * s)) + noise(0.05)
    response = u(0.1, 0.3) + 0.3 * cpu + 0.2 * network + noise(0.05)
    return np.stack([cpu, memory, disk, network, response], axis=-1)


def _design_spans(rng: np.random.Generator, types: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) per window as the seed study places each type: a spike of 3–9 steps in
    [20, t−20); a memory leak from [20, t/2) to the end; noise of 20–39 steps from [20, t−40);
    a drift of 30–49 steps from [20, t−50); network congestion from [30, t−30) to the end."""
    n = len(types)

    def r(lo: int, hi: int) -> np.ndarray:
        return rng.integers(lo, max(lo + 1, hi), size=n)

    m4, m5, m3 = min(20, t // 4), min(20, t // 5), min(30, t // 3)
    spike, spike_len = r(m4, t - m4), r(3, min(10, t // 10 + 1))
    leak = r(m5, t // 2)
    noisy, noisy_len = r(m5, t - min(40, t // 2)), r(min(20, t // 4), min(40, t // 2))
    drift, drift_len = r(m5, t - min(50, t // 2)), r(min(30, t // 3), min(50, t // 2))
    change = r(m3, t - m3)
    kinds = [types == k for k in range(1, 6)]
    start = np.select(kinds, [spike, leak, noisy, drift, change], 0)
    end = np.select(kinds, [spike + spike_len, t, noisy + noisy_len, drift + drift_len, t], 0)
    return start, np.minimum(end, t)


def generate_design_windows(
    n: int, seq_length: int = 100, anomaly_share: float = 0.25, labelled_share: float = 0.0,
    seed: int = 0,
) -> AnomalyWindows:
    """The seed study's windows: 5 metrics in [0, 1], `int(anomaly_share × n)` anomalous windows
    with one of five anomalies (types uniform) placed as the study places them, never in the
    first 20 steps, so none lies only in the last steps. `labelled_share` as in
    `generate_windows`."""
    rng = np.random.default_rng(seed)
    t = seq_length
    x = _design_normal(rng, n, t)
    n_anom = int(n * anomaly_share)
    types = np.zeros(n, dtype=np.int64)
    types[:n_anom] = rng.integers(1, len(DESIGN_ANOMALY_TYPES), size=n_anom)
    labelled = np.zeros(n, dtype=bool)
    labelled[: min(round(labelled_share * n), n_anom)] = True
    order = rng.permutation(n)
    types, labelled = types[order], labelled[order]
    start, end = _design_spans(rng, types, t)
    steps = np.arange(t)[None, :]  # (1, T)
    span = (steps >= start[:, None]) & (steps < end[:, None]) & (types > 0)[:, None]  # (N, T)
    ramp = np.where(span, (steps - start[:, None]) / np.maximum(end - start - 1, 1)[:, None], 0.0)
    kind, cell = types[:, None, None], span[:, :, None]  # (N, 1, 1), (N, T, 1)
    feat = np.arange(5)[None, None, :]  # (1, 1, F)

    def lift(*ranges: tuple[float, float] | None) -> np.ndarray:  # (N, 1, 5) per-feature offsets
        cols = [rng.uniform(*r, size=n) if r else np.zeros(n) for r in ranges]
        return np.stack(cols, axis=-1)[:, None, :]

    add = np.where((kind == 1) & cell, lift((0.3, 0.5), None, None, (0.4, 0.6), (0.3, 0.5)), 0.0)
    leak = rng.uniform(0.3, 0.5, size=(n, 1, 1)) * ramp[:, :, None]  # memory up, disk by half
    add += np.where((kind == 2) & cell, np.where(feat == 1, leak, np.where(feat == 2, leak / 2, 0)), 0)
    add += np.where((kind == 3) & cell, rng.normal(0, 0.2, size=x.shape), 0)  # every metric
    drift = rng.uniform(0.2, 0.4, size=(n, 1, 1)) * ramp[:, :, None]  # cpu up, response by half
    add += np.where((kind == 4) & cell, np.where(feat == 0, drift, np.where(feat == 4, drift / 2, 0)), 0)
    add += np.where((kind == 5) & cell, lift(None, None, None, (0.3, 0.5), (0.2, 0.4)), 0)
    x = np.clip(np.clip(x, 0, 1) + add, 0, 1).astype(np.float32)
    return AnomalyWindows(x, span.astype(np.uint8), types, labelled)
