"""Donor catchments (`data.donors`): the table ranks the other catchments by their training
correlation, batches carry the donors' values, a donor is hidden exactly as its own window hides
it, hidden donor days never reach the network, and a run with donors trains and evaluates."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from maelab.core.config import validate_config
from maelab.core.errors import ConfigError
from maelab.data.hydro.datamodule import HydroDataModule, pairwise_correlation
from maelab.data.hydro.sources.synthetic import generate_hydrology, write_dataset
from maelab.models.mmmae.config import MaskingConfig
from maelab.models.mmmae.masking import with_masks
from maelab.models.mmmae.priors import donor_estimate, donor_filled, normalise
from maelab.models.mmmae.regression import ForcingRegression
from maelab.pipeline import build_datamodule, build_module, evaluate, train
from tests.conftest import compose_cfg
from tests.test_mmmae_factorised import batch_with_location, make_factorised
from tests.test_mmmae_model import SERIES, B, T
from tests.test_mmmae_pipeline import SMALL

SPLITS = {"train": {"start": "2000-01-01", "end": "2000-04-30"},
          "val": {"start": "2000-05-01", "end": "2000-05-31"},
          "test": {"start": "2000-06-01", "end": "2000-06-30"}}
N_CATCHMENTS = 6


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset]:
    ds = generate_hydrology("2000-01-01", "2000-06-30", seed=3, n_catchments=N_CATCHMENTS,
                            gap_fraction=0.0, spinup_days=30)
    ds.evaporation[10:20, 2] = np.nan  # a gap in one catchment's training days
    return write_dataset(ds, tmp_path_factory.mktemp("src") / "hydro.nc"), ds


def _dm(root: Path, cache: Path, **over: Any) -> HydroDataModule:
    kw = dict(source="netcdf", root=str(root), cache_dir=str(cache), seq_len=20, train_stride=3,
              eval_stride=5, batch_size=4, splits=SPLITS,
              donors={"series": ["evaporation"], "count": 3})
    return HydroDataModule(**{**kw, **over})


@pytest.fixture(scope="module")
def dm(source: tuple[Path, xr.Dataset], tmp_path_factory: pytest.TempPathFactory
       ) -> HydroDataModule:
    module = _dm(source[0], tmp_path_factory.mktemp("cache"))
    module.prepare_data()
    module.setup()
    return module


def test_donor_estimate_is_the_weighted_mean_of_the_seen_donors() -> None:
    values = torch.tensor([[[1.0, 2.0, 3.0], [5.0, 6.0, 7.0], [9.0, 9.0, 9.0]]])  # (1, K=3, T=3)
    seen = torch.tensor([[[True, True, False], [True, False, False], [False, True, False]]])
    weight = torch.tensor([[0.9, 0.3, 0.6]])
    est, has = donor_estimate(values, seen, weight)
    want = torch.tensor([[(0.9 * 1 + 0.3 * 5) / 1.2, (0.9 * 2 + 0.6 * 9) / 1.5, 0.0]])
    torch.testing.assert_close(est, want)
    assert has.tolist() == [[True, True, False]]
    hidden_changed = torch.where(seen, values, 1e6)  # values no donor shows
    torch.testing.assert_close(donor_estimate(hidden_changed, seen, weight)[0], est)
    own = torch.tensor([[4.0, float("nan"), float("nan")]])
    own_seen = torch.tensor([[True, False, False]])
    filled, known = donor_filled(own, own_seen, est, has)
    torch.testing.assert_close(filled, torch.tensor([[4.0, want[0, 1].item(), 0.0]]))
    assert known.tolist() == [[True, True, False]]


def test_pairwise_correlation_is_pearson_over_the_common_days() -> None:
    g = np.random.default_rng(0)
    x = g.normal(size=(5, 200)).cumsum(1)
    np.testing.assert_allclose(pairwise_correlation(x), np.corrcoef(x), atol=1e-10)
    x[1, 20:60] = np.nan
    x[3, 150:] = np.nan
    want = pd.DataFrame(x.T).corr(min_periods=2).to_numpy()
    np.testing.assert_allclose(pairwise_correlation(x), want, atol=1e-10)
    x[4] = 1.0  # constant: no correlation
    assert np.isnan(pairwise_correlation(x)[4]).all()


def test_donors_are_the_most_correlated_other_catchments_over_training(dm: HydroDataModule
                                                                       ) -> None:
    idx, weight = dm.donor_table()["evaporation"]
    assert idx.shape == weight.shape == (N_CATCHMENTS, 3)
    lo, hi = (dm.store.day_index(d) for d in dm.splits["train"])
    x = pd.DataFrame(np.asarray(dm.store.series["evaporation"][:, lo:hi + 1], dtype=float).T)
    r = x.corr(min_periods=2).to_numpy()
    for c in range(N_CATCHMENTS):
        others = sorted((k for k in range(N_CATCHMENTS) if k != c), key=lambda k: -r[c, k])
        assert idx[c].tolist() == others[:3]
        np.testing.assert_allclose(weight[c], np.clip(r[c, others[:3]], 0, None), rtol=1e-6)
    info = dm.info()
    assert info.donor_series == ["evaporation"] and info.n_donors == 3


def test_batches_carry_the_donors_values_as_the_series_are_normalised(dm: HydroDataModule
                                                                      ) -> None:
    batch = next(iter(dm.val_dataloader()))
    idx, weight = dm.donor_table()["evaporation"]
    d = batch["donors"]
    assert d["series"]["evaporation"].shape == (4, 3, 20)
    for i, (c, s) in enumerate(zip(batch["catchment"].tolist(), batch["start"].tolist(),
                                   strict=True)):
        assert d["catchment"]["evaporation"][i].tolist() == idx[c].tolist()
        np.testing.assert_allclose(d["weight"]["evaporation"][i].numpy(), weight[c])
        raw = torch.from_numpy(np.asarray(dm.store.series["evaporation"][idx[c], s:s + 20]))
        torch.testing.assert_close(d["series"]["evaporation"][i],
                                   normalise(raw, dm.stats["evaporation"]), rtol=1e-5, atol=1e-5)
        assert torch.equal(d["valid"]["evaporation"][i], raw.isfinite())
    assert "riverflow" not in d["series"]  # only the listed series


@pytest.mark.parametrize("stream", [-1, 4])
def test_a_donor_is_hidden_exactly_as_its_own_window_hides_it(dm: HydroDataModule,
                                                              stream: int) -> None:
    cfg = MaskingConfig(series="independent")
    batch = with_masks(next(iter(dm.train_dataloader())), cfg, 7, stream, dm.n_valid_patches,
                       dm.grid_names, dm.series_names)
    donors = batch["donors"]["catchment"]["evaporation"]  # (B, K)
    for i in range(donors.shape[0]):
        for k, d in enumerate(donors[i].tolist()):
            own = {"catchment": torch.tensor([d]), "start": batch["start"][i:i + 1],
                   "time": batch["time"][i:i + 1]}
            want = with_masks(own, cfg, 7, stream, dm.n_valid_patches, dm.grid_names,
                              dm.series_names)["series_mask"]["evaporation"][0]
            assert torch.equal(batch["donor_mask"]["evaporation"][i, k], want)


def _with_donors(batch: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """`batch` (tests.test_mmmae_model) with K = 3 donors of SERIES[0] and their masks."""
    g = torch.Generator().manual_seed(seed)
    s, k = SERIES[0], 3
    values = torch.randn(B, k, T, generator=g)
    values[0, 1, 5] = float("nan")  # an invalid donor day
    donors = {"series": {s: values}, "valid": {s: values.isfinite()},
              "catchment": {s: torch.randint(0, 9, (B, k), generator=g)},
              "weight": {s: torch.rand(B, k, generator=g)}}
    mask = torch.rand(B, k, T, generator=g) < 0.75
    return {**batch, "donors": donors, "donor_mask": {s: mask}}


def test_the_donor_features_and_hidden_donor_days_never_reach_the_network() -> None:
    """With `donor_series`, the forcing features gain the donors' estimate, whether there is
    one and the antecedent means of the series filled with it; hidden donor values cannot change
    anything, visible ones do."""
    s = SERIES[0]
    model = make_factorised(forcing_series=[s], donor_series=[s])
    plain = make_factorised(forcing_series=[s])
    batch = _with_donors(batch_with_location())
    feats = model.forcing_from_series(batch)  # (B, T, 2 · 5)
    assert feats.shape == (B, T, 10) and model.series_forcing.in_features == 10
    torch.testing.assert_close(feats[..., :5], plain.forcing_from_series(batch))
    d = batch["donors"]
    d_seen = d["valid"][s] & ~batch["donor_mask"][s]
    est, has = donor_estimate(d["series"][s], d_seen, d["weight"][s])
    torch.testing.assert_close(feats[..., 5], est)
    assert torch.equal(feats[..., 6], has.float())
    own = batch["series_valid"][s] & ~batch["series_mask"][s]
    filled, known = donor_filled(batch["series"][s], own, est, has)
    torch.testing.assert_close(feats[..., 7:], model._seen_features(filled, known)[..., 2:])
    hidden = ~d_seen
    changed = {**batch, "donors": {**d, "series": {s: torch.where(hidden, 1e3, d["series"][s])},
                                   "valid": {s: torch.where(hidden, True, d["valid"][s])}}}
    ref = model(batch)
    out = model(changed)
    for n in SERIES:
        torch.testing.assert_close(out["series"][n], ref["series"][n], rtol=0, atol=0)
    shown = {**batch, "donors": {**d, "series": {s: torch.where(d_seen, d["series"][s] + 3.0,
                                                                d["series"][s])}}}
    ref_enc = model.encode(batch)["catch"]  # (a fresh model's heads start at the first prior)
    torch.testing.assert_close(model.encode(changed)["catch"], ref_enc, rtol=0, atol=0)
    assert not torch.allclose(model.encode(shown)["catch"], ref_enc)
    with pytest.raises(ValueError, match="donor"):
        model(batch_with_location())  # a batch without its donors
    with pytest.raises(ValueError, match="donor_series"):
        make_factorised(forcing_series=[s], donor_series=[SERIES[1]])


@pytest.mark.parametrize(("over", "key"), [
    ({"donors": {"series": "evaporation"}}, "data.donors.series"),
    ({"donors": {"series": ["snow"]}}, "data.donors.series"),
    ({"donors": {"series": ["evaporation"], "count": 0}}, "data.donors.count"),
    ({"donors": {"series": ["evaporation"], "number": 2}}, "data.donors.number"),
])
def test_bad_donor_settings_name_the_key(source: tuple[Path, xr.Dataset], tmp_path: Path,
                                         over: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _dm(source[0], tmp_path / "c", **over)


def test_more_donors_than_other_catchments_name_the_count(source: tuple[Path, xr.Dataset],
                                                          tmp_path: Path) -> None:
    module = _dm(source[0], tmp_path / "c", donors={"series": ["evaporation"], "count": 6})
    with pytest.raises(ConfigError, match=r"data\.donors\.count.*fewer than the 6 catchments"):
        module.setup()


DONORS = ["model.net.forcing_series=[evaporation]", "data.donors.series=[evaporation]",
          "data.donors.count=2"]


def test_donors_of_a_series_the_network_does_not_read_name_the_key(cache: str) -> None:
    cfg = compose_cfg("train", [*SMALL, cache, *DONORS[1:]])
    validate_config(cfg)
    with pytest.raises(ConfigError, match=r"data\.donors\.series.*forcing_series"):
        build_module(cfg, build_datamodule(cfg))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"data.cache_dir={tmp_path_factory.mktemp('hydro_cache')}"


def test_a_run_with_donors_trains_and_evaluates(tmp_path: Path, cache: str) -> None:
    """debug=fast with donors trains and tests; the regression baseline reads the donors too
    (one more feature per forcing series: whether the day's value is its own); `evaluate.py`
    gives the checkpoint's table back, and without donors a ConfigError naming them."""
    metrics, _ = train(compose_cfg("train", [*SMALL, cache, *DONORS,
                                             "model.evaluation.regression=[evaporation]",
                                             "model.evaluation.regression_windows=64"],
                                   tmp_path / "run"))
    rows = metrics["test"]
    for row in ("riverflow / mmmae", "riverflow (all days hidden) / mmmae",
                "riverflow (all days hidden) / regression", "evaporation / mmmae"):
        assert math.isfinite(rows[row]["rmse"]) and rows[row]["n"] > 0
    again = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}"]))
    for row in ("riverflow / mmmae", "riverflow (all days hidden) / mmmae",
                "riverflow (all days hidden) / regression"):
        assert again["test"][row]["rmse"] == pytest.approx(rows[row]["rmse"], rel=1e-6)
    # its network reads donors: evaluating it without them names the setting, not the weights
    with pytest.raises(ConfigError, match=r"data\.donors\.series=\[\] \(the checkpoint's: "
                                          r"\['evaporation'\]\)$"):
        evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}",
                                          "+data.donors.series=[]"]))
    cfg = compose_cfg("train", [*SMALL, cache, *DONORS])
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    assert module.net.donor_series == ["evaporation"]
    batch = module.masked(next(iter(dm.val_dataloader())), -1)
    stats, clim = dm.stats, torch.ones(366, 3)
    with_donors = ForcingRegression("riverflow", ["evaporation"], stats, clim, torch.ones(3))
    x = with_donors.features(batch, visible=False)
    y = with_donors.features({k: v for k, v in batch.items() if k != "donor_mask"}, visible=False)
    assert x.shape[1] == y.shape[1] + 1
