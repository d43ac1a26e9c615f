"""A learned rainfall–runoff baseline for the cross-modal tests: gradient-boosted trees.

`ForcingRegression` predicts a series that is hidden on every day (riverflow) from what the
window shows of its forcing series (catchment precipitation and temperature) or grids (read at
the catchment's patch), day by day:
- each forcing series' value on the day (NaN where it is hidden or missing);
- a forcing grid's value at the valid patch nearest to the catchment's `location`: the mean of
  its visible valid cells, or on days the patch is hidden the visible neighbour mean
  (`value_at_patch`), with whether the patch itself was seen;
- its means over the visible valid days of the last k days of the window (k = 2 … 90), with
  the share of those days that were visible, and over the next 2, 7 and 30 days;
- with donors (`data.donors`), the hidden days of a forcing series filled by its donors'
  visible values (`donor_estimate`) before the above, and whether each day's value is its own;
- the day of the year (sine, cosine) and the day's place in the window;
- the catchment: its training-period climatology of the target on that day (log1p), its
  training standard deviation, and its index (a categorical feature, up to 255 catchments).

The target series is never an input, and a non-negative target (one normalised in log space,
such as a flow) is never predicted below 0. The trees (scikit-learn's `HistGradientBoostingRegressor`,
squared error) learn the target's departure from its climatology over its training spread, the
scale of NSE\\*, from training-period windows. Two are fitted: one on windows whose forcing
keeps its training masks (the cross-modal test), one on windows with the forcing visible on
every day (the `alone` and gap tests). The MAE sees the same windows, the same visible days and
the same climatology, so the baseline asks what a plain learner makes of that information.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from maelab.models.mmmae.masking import visible_donors
from maelab.models.mmmae.priors import donor_estimate, patch_at_location, value_at_patch
from maelab.scoring.hydro_metrics import day_of_year, denormalise

BACK_DAYS = (2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 90)  # trailing means (days, within the window)
AHEAD_DAYS = (2, 7, 30)  # leading means
MAX_CATEGORIES = 255  # scikit-learn's limit on a categorical feature's levels


def trailing_means(x: np.ndarray, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the seen values over days [t − k + 1, t] of each window (NaN where none was seen)
    and the seen share of the days there are; x, seen (B, T) → two (B, T)."""
    b, t = x.shape
    zero = np.zeros((b, 1))
    total = np.concatenate([zero, np.cumsum(np.where(seen, x, 0.0), 1)], 1)  # (B, T + 1)
    count = np.concatenate([zero, np.cumsum(seen, 1, dtype=np.float64)], 1)
    hi = np.arange(1, t + 1)
    lo = np.maximum(hi - k, 0)
    s, n = total[:, hi] - total[:, lo], count[:, hi] - count[:, lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / n, np.nan), n / (hi - lo)


def is_grid(batch: Mapping, name: str) -> bool:
    """Whether forcing `name` is one of the (masked) batch's grids (else a series)."""
    return name in batch.get("grid_mask", {})


def forcing_shown(batch: Mapping, forcing: Sequence[str]) -> torch.Tensor:
    """(B,) bool: every forcing series and grid of `forcing` visible on every day of the window
    (the `alone` state; else the forcing keeps masks)."""
    masks = [batch["grid_mask"][f] if is_grid(batch, f) else batch["series_mask"][f]
             for f in forcing]  # (B, T, P) grids, (B, T) series
    return ~torch.stack([m.flatten(1).any(1) for m in masks]).any(0)


class ForcingRegression:
    """Gradient-boosted trees: a series from the window's visible forcing series and grids
    (module doc)."""

    def __init__(self, target: str, forcing: Sequence[str], stats: Mapping[str, Mapping],
                 climatology: torch.Tensor, spread: torch.Tensor, seed: int = 0,
                 patch_rows: Sequence[int] = (), patch_cols: Sequence[int] = ()) -> None:
        """`climatology` (366, C) and `spread` (C,): the target's daily climatology and standard
        deviation per catchment over the training period, physical units. `patch_rows`,
        `patch_cols` (P,): the valid patches' places, for forcing grids (read at the catchment)."""
        self.target, self.forcing, self.stats = target, list(forcing), stats
        self.patch_rows, self.patch_cols = list(patch_rows), list(patch_cols)
        self.patch_place = torch.tensor([self.patch_rows, self.patch_cols],
                                        dtype=torch.float32).T  # (P, 2)
        self.clim = climatology.double().numpy()  # (366, C)
        spread = spread.double().numpy()
        self.spread = np.where(spread > 0, spread, 1.0)  # (C,)
        self.categorical = self.clim.shape[1] <= MAX_CATEGORIES
        self.seed = int(seed)
        self.trees: dict[int, object] = {}  # forcing visible? (a parity: RegressionPrior) → trees

    def features(self, batch: Mapping, visible: bool) -> np.ndarray:
        """(B · T, F) float64 features of every window day; `visible`: the forcing is shown on
        every valid day, else only where the batch's `series_mask` leaves it visible."""
        c = batch["catchment"].cpu().numpy()  # (B,)
        b, t = batch["time"].shape
        cols = []
        at = None  # (B,) patch at each window's catchment, and whether its location is known
        for s in self.forcing:
            if is_grid(batch, s):  # at the catchment's patch, hidden days from its neighbours
                if at is None:
                    if not self.patch_rows:
                        raise ValueError(f"forcing grid {s} needs the valid patches' places "
                                         "(patch_rows, patch_cols)")
                    at = patch_at_location(batch["location"].cpu(), self.patch_place)
                x, own, seen = self._grid_at_catchment(batch, s, visible, *at)
                filled = True
            else:
                x = denormalise(batch["series"][s].cpu(), self.stats[s]).numpy()  # (B, T)
                seen = (batch["series_valid"][s] & batch["present"][s].view(-1, 1)).cpu().numpy()
                if not visible:
                    seen = seen & ~batch["series_mask"][s].cpu().numpy()
                own, filled = seen, s in batch.get("donor_mask", {})
                if filled:  # hidden days filled from the visible donors
                    d = batch["donors"]
                    est, has = donor_estimate(d["series"][s], visible_donors(batch, s),
                                              d["weight"][s])  # (B, T)
                    x = np.where(seen, x, denormalise(est.cpu(), self.stats[s]).numpy())
                    seen = seen | has.cpu().numpy()
            cols.append(np.where(seen, x, np.nan))
            for k in BACK_DAYS:
                cols.extend(trailing_means(x, seen, k))
            for k in AHEAD_DAYS:  # the same means over days [t, t + k − 1], read backwards
                mean, _ = trailing_means(x[:, ::-1], seen[:, ::-1], k)
                cols.append(mean[:, ::-1])
            if filled:  # whether the day's value is the catchment's own
                cols.append(own.astype(float))
        doy = day_of_year(batch["time"].cpu())  # (B, T)
        angle = 2 * np.pi * doy / 366.0
        cols += [np.sin(angle), np.cos(angle), np.broadcast_to(np.arange(t, dtype=float), (b, t)),
                 np.log1p(np.maximum(self.clim[doy, c[:, None]], 0.0)),
                 np.broadcast_to(self.spread[c][:, None], (b, t))]
        if self.categorical:
            cols.append(np.broadcast_to(c[:, None].astype(float), (b, t)))
        return np.stack(cols, -1).reshape(b * t, -1)

    def _grid_at_catchment(self, batch: Mapping, name: str, visible: bool, patch: torch.Tensor,
                           known: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grid `name` at each window's catchment (`patch` (B,), the valid patch nearest to its
        `location`, `known` (B,) where that is known: `patch_at_location`):
        (B, T) values in physical units, whether the patch itself was seen that day (its visible
        valid cells' mean) and whether a value is known (else the visible neighbour mean, or the
        grid's mean where no neighbour is visible: `value_at_patch`). Nothing is known where the
        location is unknown or the grid absent.
        `visible`: the grid is shown on every day, else where the batch's `grid_mask` shows it."""
        x, valid, hidden = batch["grids"][name], batch["grid_valid"][name], batch["grid_mask"][name]
        if visible:
            hidden = torch.zeros_like(hidden)
        value, own = value_at_patch(x.cpu(), valid.cpu(), hidden.cpu(), patch, self.patch_rows,
                                    self.patch_cols)  # (B, T) normalised, bool
        present = batch["present"].get(name)
        if present is not None:
            known = known & present.cpu()
        known = known.view(-1, 1).expand_as(own).numpy()
        value = denormalise(value, self.stats[name]).numpy()
        return value, own.numpy() & known, known

    def _scaled_target(self, batch: Mapping) -> tuple[np.ndarray, np.ndarray]:
        """(B · T,) the target's departure from climatology over its spread, and its validity."""
        c = batch["catchment"].cpu().numpy()
        q = denormalise(batch["series"][self.target].cpu(), self.stats[self.target]).numpy()
        doy = day_of_year(batch["time"].cpu())
        y = (q - self.clim[doy, c[:, None]]) / self.spread[c][:, None]  # (B, T)
        ok = batch["series_valid"][self.target].cpu().numpy() & np.isfinite(y)
        return y.reshape(-1), ok.reshape(-1)

    def _fit_trees(self, x: np.ndarray, y: np.ndarray) -> object:
        from sklearn.ensemble import HistGradientBoostingRegressor

        trees = HistGradientBoostingRegressor(
            max_iter=400, learning_rate=0.05, random_state=self.seed,
            categorical_features=[x.shape[1] - 1] if self.categorical else None)
        return trees.fit(x, y)

    def fit(self, batches: Iterable[Mapping]) -> ForcingRegression:
        """Fit both trees (forcing visible, forcing masked) on the valid target days of training
        `batches` (with masks), read once. Without any valid target day nothing is fitted
        (`trees` stays empty)."""
        xs: dict[bool, list[np.ndarray]] = {False: [], True: []}
        ys = []
        for batch in batches:
            y, ok = self._scaled_target(batch)
            for visible, x in xs.items():
                x.append(self.features(batch, visible)[ok])
            ys.append(y[ok])
        y = np.concatenate(ys)
        if not y.size:
            return self
        for visible, x in xs.items():
            self.trees[visible] = self._fit_trees(np.concatenate(x), y)
        return self

    def _physical(self, batch: Mapping, y: np.ndarray) -> torch.Tensor:
        """Scaled departures y (B, T) → (B, T) float64 target values in physical units (not
        below 0 for a series normalised in log space, i.e. a non-negative one such as a flow)."""
        c = batch["catchment"].cpu().numpy()
        doy = day_of_year(batch["time"].cpu())
        pred = self.clim[doy, c[:, None]] + self.spread[c][:, None] * y
        if self.stats[self.target]["log"]:
            pred = np.maximum(pred, 0.0)
        return torch.from_numpy(pred)

    def predict(self, batch: Mapping, visible: bool) -> torch.Tensor:
        """(B, T) float64 predictions of the target in physical units (`_physical`)."""
        b, t = batch["time"].shape
        return self._physical(batch, self.trees[visible].predict(
            self.features(batch, visible)).reshape(b, t))


def year_parity(time: torch.Tensor) -> np.ndarray:
    """(B, T) days since 1970-01-01 → (B, T) int64 parity of each day's calendar year."""
    days = time.cpu().numpy().astype("int64")
    years = (np.datetime64("1970-01-01", "D") + days).astype("datetime64[Y]").astype("int64")
    return (years + 1970) % 2


class RegressionPrior(ForcingRegression):
    """The trees as a decoder prior (`model.net.series_priors: [..., regression]`): one set per
    parity of the target day's year, each fitted on the valid target days of the other
    parity's years only, on the features of the batch's own masks and of the forcing visible on
    every day (one set serves both kinds of batch: the features carry the visible shares).

    In training a day is predicted by the set that never saw its year's targets (cross-fitted,
    so the prior is as good as it will be on unseen periods, not better); elsewhere (validation,
    test: periods no set saw) by the mean of both.
    """

    def fit(self, batches: Iterable[Mapping]) -> RegressionPrior:
        """Fit both parity sets on training `batches` (with masks), read once; nothing is
        fitted (`trees` stays empty) when a parity has no valid target day."""
        xs: dict[int, list[np.ndarray]] = {0: [], 1: []}
        ys: dict[int, list[np.ndarray]] = {0: [], 1: []}
        for batch in batches:
            y, ok = self._scaled_target(batch)
            parity = year_parity(batch["time"]).reshape(-1)
            x = np.concatenate([self.features(batch, False), self.features(batch, True)])
            y, ok, parity = np.tile(y, 2), np.tile(ok, 2), np.tile(parity, 2)
            for p in (0, 1):
                xs[p].append(x[ok & (parity == p)])
                ys[p].append(y[ok & (parity == p)])
        y_by = {p: np.concatenate(v) for p, v in ys.items()}
        if not all(v.size for v in y_by.values()):
            return self
        for p in (0, 1):  # the set that predicts days of parity 1 - p
            self.trees[1 - p] = self._fit_trees(np.concatenate(xs[p]), y_by[p])
        return self

    def prior(self, batch: Mapping, cross_fitted: bool) -> torch.Tensor:
        """(B, T) float64 prediction of the target (physical units) from the forcing the
        batch's masks leave visible: on each day by the set that never saw its year
        (`cross_fitted`, training) or by the mean of both sets."""
        b, t = batch["time"].shape
        x = self.features(batch, False)  # (B · T, F)
        if cross_fitted:
            parity = year_parity(batch["time"]).reshape(-1)
            y = np.empty(b * t)
            for p in (0, 1):
                rows = parity == p
                if rows.any():
                    y[rows] = self.trees[p].predict(x[rows])
        else:
            y = 0.5 * (self.trees[0].predict(x) + self.trees[1].predict(x))
        return self._physical(batch, y.reshape(b, t))


def training_batches(dataset: torch.utils.data.Dataset, collate: Callable, n_windows: int,
                     seed: int, masked: Callable[[Mapping, int], Mapping], chunk: int = 64
                     ) -> Iterator[Mapping]:
    """`n_windows` training windows (all, if fewer) drawn without replacement by `seed`, in
    batches of `chunk` with the masks `masked(batch, i)` of training stream i (the i-th chunk),
    one batch at a time."""
    rng = np.random.default_rng(seed)
    n = min(int(n_windows), len(dataset))
    idx = rng.choice(len(dataset), n, replace=False)
    for i, lo in enumerate(range(0, n, chunk)):
        yield masked(collate([dataset[int(j)] for j in idx[lo:lo + chunk]]), i)
