"""MM-MAE end to end: train (debug=fast) → evaluate, perfect-reconstruction metrics, configs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from benchmarks.mmmae_encoder import run as run_benchmark
from maelab.core.config import validate_config
from maelab.core.errors import ConfigError
from maelab.models.mmmae.priors import normalise
from maelab.pipeline import build_datamodule, build_module, evaluate, train
from tests.conftest import compose_cfg

SMALL = [
    "experiment=hydro", "debug=fast", "callbacks.progress_bar=null", "data.batch_size=4",
    "data.synthetic.start=2000-01-01", "data.synthetic.end=2000-04-30",
    "data.synthetic.n_catchments=3", "data.seq_len=15",
    "data.splits.train.start=2000-01-01", "data.splits.train.end=2000-02-29",
    "data.splits.val.start=2000-03-01", "data.splits.val.end=2000-03-31",
    "data.splits.test.start=2000-04-01", "data.splits.test.end=2000-04-30",
    "model.net.d_model=16", "model.net.depth=1", "model.net.heads=2",
    "model.net.decoder_dim=16", "model.net.decoder_depth=1", "model.net.decoder_heads=2",
]  # the default network (factorised, per-day tokens, every prior), small
GRID_ROWS = ("precipitation", "soil_moisture", "temperature")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"data.cache_dir={tmp_path_factory.mktemp('hydro_cache')}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache: str) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("mmmae") / "run"
    metrics, _ = train(compose_cfg("train", [*SMALL, cache], out))
    return metrics, out


def test_fast_training_writes_metrics_checkpoints_and_figures(trained: tuple[dict, Path]) -> None:
    metrics, out = trained
    assert metrics["model"] == "mmmae" and metrics["optimized_metric_name"] == "val/loss"
    on_disk = json.loads((out / "metrics.json").read_text())
    rows = on_disk["test"]
    for g in GRID_ROWS:
        for method in ("mmmae", "climatology", "neighbour_mean"):
            row = rows[f"{g} / {method}"]
            assert math.isfinite(row["rmse"]) and row["rmse"] >= row["mae"] > 0 and row["n"] > 0
    for method in ("mmmae", "climatology", "interpolation", "interpolation_log"):
        assert math.isfinite(rows[f"riverflow / {method}"]["nse_median"])
        assert rows[f"riverflow / {method}"]["n"] == rows["riverflow / mmmae"]["n"]
    assert "nse_median" in rows["riverflow (all days hidden) / mmmae"]
    assert on_disk["distributions"]["riverflow / mmmae"]["nse"]["n"] == 3  # catchments
    # infilling with full forcings: riverflow alone on every day, and a 7-day gap (a 30-day
    # gap does not fit 15-day windows: not run, not recorded)
    for method in ("mmmae", "climatology"):
        assert rows[f"riverflow (alone, all days hidden) / {method}"]["n"] > 0
    gap = rows["riverflow (alone, 7-day gap) / interpolation"]
    assert gap["n"] == 7 * 3 and gap["units"] == "mm/day"  # one window per catchment
    assert not any("30-day" in r for r in rows)
    assert on_disk["settings"]["cross_modal"] == "riverflow"
    assert on_disk["settings"]["infilling"] == ["alone", "gap7"]
    for key in ("kge_r_median", "kge_alpha_median", "kge_beta_median", "log_nse_median",
                "fhv_median", "flv_median"):
        assert key in rows["riverflow / mmmae"]
    assert on_disk["units"]["temperature"] == "degC" and rows["precipitation / mmmae"]["units"] == "mm/day"
    table = pd.read_csv(out / "catchments.csv", dtype={"catchment_id": str})
    mine = table[table.row == "riverflow / mmmae"]
    assert sorted(mine.catchment_id) == ["0", "1", "2"] and (mine.n > 0).all()
    assert np.allclose(mine.nse.to_numpy(), on_disk["distributions"]["riverflow / mmmae"][
        "per_catchment"]["nse"], equal_nan=True)
    for name in ("best.ckpt", "last.ckpt"):
        assert (out / "checkpoints" / name).exists()
    for fig in ("map_precipitation", "map_soil_moisture", "map_temperature", "hydrograph"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 0


def test_evaluate_reproduces_training_metrics(trained: tuple[dict, Path]) -> None:
    metrics, out = trained
    again = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}"]))
    for row, values in metrics["test"].items():
        for key, value in values.items():
            if isinstance(value, str):  # units
                assert again["test"][row][key] == value
            elif not (isinstance(value, float) and math.isnan(value)):
                assert again["test"][row][key] == pytest.approx(value, rel=1e-5, abs=1e-8), (row, key)
    assert (out / "eval" / "metrics.json").exists()
    assert (out / "eval" / "figures" / "hydrograph.png").stat().st_size > 0


def test_series_shrinkage_is_fitted_on_validation_and_travels_in_the_checkpoint(
        trained: tuple[dict, Path]) -> None:
    """The weights that pull hidden series days toward interpolation (by distance to the
    nearest visible day) are fitted after training, recorded in the settings and saved in the
    checkpoint; a checkpoint from before them recalibrates on validation and reproduces."""
    metrics, out = trained
    settings = metrics["settings"]
    assert settings["series_shrink"] == "by_distance"
    weights = settings["series_shrink_weights"]
    assert weights["distance_bins_days"] == ["1", "2", "3-4", ">=5"]
    state = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)
    saved = state["state_dict"]["cal_series_shrink"]  # (series, bins)
    assert saved.shape == (2, 4) and ((saved >= 0) & (saved <= 1)).all()
    for row, name in zip(saved.tolist(), ("evaporation", "riverflow"), strict=True):
        assert row == pytest.approx(weights[name], abs=1e-4)
    del state["state_dict"]["cal_series_shrink"]  # as written before the calibration existed
    old = Path(metrics["checkpoint"]).with_name("old.ckpt")
    torch.save(state, old)
    again = evaluate(compose_cfg("evaluate", [f"ckpt={old}"]))
    assert again["settings"]["series_shrink_weights"] == weights
    for row in ("riverflow / mmmae", "evaporation / mmmae", "riverflow (alone, 7-day gap) / mmmae"):
        assert again["test"][row]["rmse"] == pytest.approx(metrics["test"][row]["rmse"], rel=1e-6)


def test_evaluate_switches_the_series_calibration(trained: tuple[dict, Path]) -> None:
    """`calibration.series_shrink=none` at evaluation tests the model's own series (the
    checkpoint's weights untouched); `by_distance` gives the training's table back."""
    metrics, out = trained
    ckpt = metrics["checkpoint"]
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]["cal_series_shrink"]
    raw = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "calibration.series_shrink=none"]))
    assert raw["overrides"] == {"calibration": {"series_shrink": "none"}}  # as typed, own folder
    assert (out / "eval-calibration.series_shrink=none" / "metrics.json").is_file()
    assert raw["settings"]["series_shrink"] == "none" and raw["settings"]["series_shrink_weights"] is None
    after = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]["cal_series_shrink"]
    assert torch.equal(saved, after)
    row = "riverflow / mmmae"
    assert raw["test"][row]["rmse"] != pytest.approx(metrics["test"][row]["rmse"], rel=1e-9)
    for base in ("riverflow / interpolation", "precipitation / mmmae"):  # not series-calibrated
        assert raw["test"][base]["rmse"] == pytest.approx(metrics["test"][base]["rmse"], rel=1e-6)
    again = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "calibration.series_shrink=by_distance"]))
    assert again["test"][row]["rmse"] == pytest.approx(metrics["test"][row]["rmse"], rel=1e-6)
    with pytest.raises(ConfigError, match="model.calibration.series_shrink"):
        evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "calibration.series_shrink=off"]))


def test_evaluate_adds_the_regression_baseline(trained: tuple[dict, Path]) -> None:
    """`regression=[evaporation,precipitation]` (a series and a grid) at evaluation fits the
    trees on training windows and adds a `regression` row to the cross-modal and infilling tests
    only, on the model's days; the model's rows are unchanged. A series that is not a forcing is
    refused by name, with the grids and series to choose from."""
    metrics, out = trained
    ckpt = metrics["checkpoint"]
    got = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "regression=[evaporation,precipitation]"]))
    assert (out / "eval-regression=evaporation,precipitation" / "metrics.json").is_file()
    rows = got["test"]
    for test in ("riverflow (all days hidden)", "riverflow (alone, all days hidden)",
                 "riverflow (alone, 7-day gap)"):
        row = rows[f"{test} / regression"]
        assert math.isfinite(row["rmse"]) and row["n"] == rows[f"{test} / mmmae"]["n"]
    assert "riverflow / regression" not in rows and "evaporation / regression" not in rows
    for row in ("riverflow / mmmae", "riverflow (all days hidden) / mmmae"):
        assert rows[row]["rmse"] == pytest.approx(metrics["test"][row]["rmse"], rel=1e-6)
    assert "riverflow (all days hidden) / regression" not in metrics["test"]  # off by default
    with pytest.raises(ConfigError, match=r"model.evaluation.regression.*grids \(precipitation"):
        evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "regression=[riverflow]"]))


def test_validation_windows_get_the_other_folds_weights() -> None:
    """Under split=val a window is shrunk by the weights fitted on the catchments of the other
    parity: here those fitted on the even catchments are 0 (interpolation) and on the odd ones 1
    (the model), so the even catchment keeps the model and the odd one gets interpolation."""
    dm = build_datamodule(compose_cfg("train", [*SMALL]))
    module = build_module(compose_cfg("train", [*SMALL]), dm)
    s = len(module.info.series_names)
    module._cal_fold_shrink = torch.stack([torch.zeros(s, 4), torch.ones(s, 4)]).double()
    module.cal_series_shrink.fill_(0.5)  # the weights of the test split: not used here
    x = torch.linspace(0, 1, 15).repeat(2, 1)  # (B, T) normalised riverflow
    hidden = torch.ones(2, 15, dtype=torch.bool)
    hidden[:, [0, 7, 14]] = False
    valid = torch.ones(2, 15, dtype=torch.bool)
    model = torch.full((2, 15), 5.0)
    batch = {"series": {"riverflow": x}, "series_valid": {"riverflow": valid},
             "series_mask": {"riverflow": hidden}, "catchment": torch.tensor([0, 1])}
    module.test_split = "val"
    out = module._calibrated_series(batch, {"series": {"riverflow": model}})["series"]["riverflow"]
    assert torch.equal(out[0], model[0])  # even catchment: weights fitted on the odd ones (1)
    h = hidden[1]
    assert torch.allclose(out[1, h], x[1, h])  # odd catchment: fitted on the even ones (0)
    assert torch.equal(out[1, ~h], model[1, ~h])  # visible days: as the model gave them
    module.test_split = "test"
    out = module._calibrated_series(batch, {"series": {"riverflow": model}})["series"]["riverflow"]
    assert torch.allclose(out[:, hidden[0]], 0.5 * (x + model)[:, hidden[0]])


def test_fold_weights_are_the_fit_on_each_parity_of_catchments() -> None:
    """The calibration's three weight sets are `fit_shrinkage` on all validation windows, on
    those of the even catchments and on those of the odd ones (windows of 4 catchments, 2
    collected batches; a series with no window keeps weights of 1)."""
    from maelab.models.mmmae.calibration import fit_shrinkage

    cfg = compose_cfg("train", [*SMALL])
    module = build_module(cfg, build_datamodule(cfg))
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        x = torch.randn(8, 15, generator=gen)  # (B, T) normalised riverflow
        batches.append({"riverflow": {
            "pred": x + 0.5 * torch.randn(8, 15, generator=gen), "x": x,
            "valid": torch.rand(8, 15, generator=gen) > 0.1,
            "hidden": torch.rand(8, 15, generator=gen) > 0.4,
            "catchment": torch.arange(8) % 4}})
    module._cal_collected = batches
    module._fit_calibration()
    cat = {k: torch.cat([b["riverflow"][k] for b in batches]) for k in batches[0]["riverflow"]}
    i = module.info.series_names.index("riverflow")
    stats = module.info.stats["riverflow"]
    for weights, parity in ((module.cal_series_shrink[i], None), (module._cal_fold_shrink[0, i], 0),
                            (module._cal_fold_shrink[1, i], 1)):
        rows = slice(None) if parity is None else cat["catchment"] % 2 == parity
        expected = fit_shrinkage(cat["pred"][rows], cat["x"][rows], cat["valid"][rows],
                                 cat["hidden"][rows], cat["catchment"][rows], stats)
        assert torch.equal(weights, expected), parity
    assert not torch.equal(module._cal_fold_shrink[0, i], module._cal_fold_shrink[1, i])
    j = module.info.series_names.index("evaporation")  # no window collected
    assert bool((module.cal_series_shrink[j] == 1).all() and (module._cal_fold_shrink[:, j] == 1).all())
    assert module._cal_one_parity == []
    for b in batches:  # even catchments only: the odd fold has no window, so nothing to cross-fit
        b["riverflow"]["catchment"] = 2 * (b["riverflow"]["catchment"] % 2)
    module._fit_calibration()
    assert module._cal_one_parity == ["riverflow"]
    assert bool((module._cal_fold_shrink[1, i] == 1).all())


def test_stretch_factors_are_the_fit_on_each_parity_and_validation_windows_get_the_other(
        caplog: pytest.LogCaptureFixture) -> None:
    """With `series_stretch=[riverflow]` the calibration's three (factor, weights) pairs are
    `fit_stretch` on all validation windows and on each parity of catchments; a validation
    window is then stretched by the other parity's factor, a test window by the saved one."""
    from maelab.models.mmmae.calibration import fit_stretch

    cfg = compose_cfg("train", [*SMALL, "model.calibration.series_stretch=[riverflow]"])
    module = build_module(cfg, build_datamodule(cfg))
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        x = torch.randn(8, 15, generator=gen)  # (B, T) normalised riverflow
        clim = torch.randn(8, 1, generator=gen).expand(8, 15)  # (B, T) a flat climatology
        scale = torch.where(torch.arange(8) % 2 == 0, 0.5, 0.8)[:, None]  # damped unevenly
        batches.append({"riverflow": {
            "pred": clim + scale * (x - clim) + 0.1 * torch.randn(8, 15, generator=gen), "x": x,
            "clim": clim, "valid": torch.rand(8, 15, generator=gen) > 0.1,
            "hidden": torch.rand(8, 15, generator=gen) > 0.4, "catchment": torch.arange(8) % 4}})
    module._cal_collected = batches
    with caplog.at_level("INFO", logger="maelab.models.mmmae.module"):
        module._fit_calibration()
    cat = {k: torch.cat([b["riverflow"][k] for b in batches]) for k in batches[0]["riverflow"]}
    i = module.info.series_names.index("riverflow")
    stats = module.info.stats["riverflow"]
    k_all = float(module.cal_series_stretch[i])
    assert f"riverflow: stretch k {k_all:g}; shrink weights " in caplog.text  # the fit, logged
    fits = ((module.cal_series_stretch[i], module.cal_series_shrink[i], None),
            (module._cal_fold_stretch[0, i], module._cal_fold_shrink[0, i], 0),
            (module._cal_fold_stretch[1, i], module._cal_fold_shrink[1, i], 1))
    for k, weights, parity in fits:
        rows = slice(None) if parity is None else cat["catchment"] % 2 == parity
        want_k, want_w = fit_stretch(cat["pred"][rows], cat["clim"][rows], cat["x"][rows],
                                     cat["valid"][rows], cat["hidden"][rows],
                                     cat["catchment"][rows], stats)
        assert float(k) == want_k and torch.equal(weights, want_w), parity
    assert module._cal_fold_stretch[0, i] > module._cal_fold_stretch[1, i]  # more damped: wider
    j = module.info.series_names.index("evaporation")  # not listed (and no window): factor 1
    assert float(module.cal_series_stretch[j]) == 1.0
    assert module.calibrated

    module.series_shrink = "none"  # the stretch alone, with hand-set factors
    module._cal_fold_stretch = torch.tensor([[1.0, 2.0], [1.0, 3.0]], dtype=torch.float64)
    module.cal_series_stretch.copy_(torch.tensor([1.0, 1.5]))
    module._climatology = {"riverflow": torch.ones(366, 2)}  # physical units
    batch = {"series": {"riverflow": torch.zeros(2, 15)},
             "series_valid": {"riverflow": torch.ones(2, 15, dtype=torch.bool)},
             "series_mask": {"riverflow": torch.ones(2, 15, dtype=torch.bool)},
             "catchment": torch.tensor([0, 1]), "time": torch.arange(15).repeat(2, 1)}
    clim = float(normalise(torch.ones(1), stats))
    model = torch.full((2, 15), clim + 0.1)
    module.test_split = "val"
    out = module._calibrated_series(batch, {"series": {"riverflow": model}})["series"]["riverflow"]
    assert torch.allclose(out - clim, torch.tensor([[0.3], [0.2]]).expand(2, 15))  # odd, even fit
    module.test_split = "test"
    out = module._calibrated_series(batch, {"series": {"riverflow": model}})["series"]["riverflow"]
    assert torch.allclose(out - clim, torch.full((2, 15), 0.15))


def test_series_stretch_is_fitted_after_training_and_switched_at_evaluation(
        tmp_path: Path, cache: str, trained: tuple[dict, Path]) -> None:
    """A run with `series_stretch=[riverflow]` records and saves its factor, and evaluate.py
    reproduces its table from the checkpoint; `calibration.series_stretch=...` at evaluation
    refits it on validation without touching the checkpoint; unknown series are named."""
    metrics, out = train(compose_cfg("train", [*SMALL, cache,
                                               "model.calibration.series_stretch=[riverflow]"],
                                      tmp_path / "run"))
    settings = metrics["settings"]
    assert settings["series_stretch"] == ["riverflow"]
    k = settings["series_stretch_factors"]["fitted"]["riverflow"]
    assert 0.5 <= k <= 2.5
    state = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert state["cal_series_stretch"].tolist() == pytest.approx([1.0, k], abs=1e-4)
    again = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}"]))
    for row in ("riverflow / mmmae", "riverflow (alone, all days hidden) / mmmae"):
        assert again["test"][row]["rmse"] == pytest.approx(metrics["test"][row]["rmse"], rel=1e-6)

    base, base_dir = trained  # trained without the stretch
    ckpt = base["checkpoint"]
    before = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    val = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "split=val",
                                            "calibration.series_stretch=[riverflow]"]))
    assert val["overrides"] == {"calibration": {"series_stretch": "riverflow"}}
    assert (base_dir / "eval_val-calibration.series_stretch=riverflow" / "metrics.json").is_file()
    folds = val["settings"]["series_stretch_factors"]
    assert set(folds) == {"fitted_on_even", "fitted_on_odd"}
    assert all(0.5 <= f["riverflow"] <= 2.5 for f in folds.values())
    after = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    for name in ("cal_series_shrink", "cal_series_stretch"):
        assert torch.equal(before[name], after[name])
    above = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "calibration.series_stretch=[riverflow]",
                                              "calibration.series_stretch_side=above"]))
    assert above["settings"]["series_stretch_side"] == "above"
    assert (base_dir / "eval-calibration.series_stretch=riverflow,"
            "calibration.series_stretch_side=above" / "metrics.json").is_file()
    # windows with no visible riverflow day (the cross-modal tests) keep the model's values
    # (with every window stretched, as by `above`, those rows move)
    visible = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "calibration.series_stretch=[riverflow]",
                                                "calibration.series_stretch_windows=with_visible"]))
    assert visible["settings"]["series_stretch_windows"] == "with_visible"
    for row in ("riverflow (all days hidden) / mmmae", "riverflow (alone, all days hidden) / mmmae"):
        assert visible["test"][row]["rmse"] == pytest.approx(base["test"][row]["rmse"], rel=1e-6)
        assert above["test"][row]["rmse"] != pytest.approx(base["test"][row]["rmse"], rel=1e-6)
    with pytest.raises(ConfigError, match="model.calibration.series_stretch"):
        evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "calibration.series_stretch=[rain]"]))
    with pytest.raises(ConfigError, match=r"calibration.series_stretch.*\[riverflow\]"):
        evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "calibration.series_stretch=riverflow"]))


BLEND = ["model.evaluation.regression=[evaporation,precipitation]",  # a series and a grid
         "model.calibration.cross_modal_blend=regression"]


class _ConstantTrees:
    """Stands in for the fitted regression baseline: flow 1 with the forcing masked, 2 with it
    visible on every day (physical units)."""

    def predict(self, batch: dict, visible: bool) -> torch.Tensor:
        return torch.full(batch["time"].shape, 2.0 if visible else 1.0, dtype=torch.float64)


def test_cross_modal_blend_weights_are_the_fit_on_each_parity_and_follow_the_forcing(
        caplog: pytest.LogCaptureFixture) -> None:
    """With `cross_modal_blend=regression` the calibration's blend weights are `fit_blend` on
    the collected cross-modal windows, per forcing state, on all and on each parity of
    catchments. A window with no visible riverflow day then gets the weight of its forcing's
    state (a forcing series or grid hidden anywhere: masked), on validation the other parity's; a
    window with a visible riverflow day keeps the model."""
    from maelab.models.mmmae.calibration import fit_blend
    from maelab.scoring.hydro_metrics import denormalise

    cfg = compose_cfg("train", [*SMALL, *BLEND, "model.calibration.series_shrink=none"])
    module = build_module(cfg, build_datamodule(cfg))
    stats = module.info.stats["riverflow"]
    gen = torch.Generator().manual_seed(0)
    items = []
    for _ in range(2):
        x = torch.randn(8, 15, generator=gen)  # (B, T) normalised riverflow
        noise = torch.randn(2, 8, 15, generator=gen, dtype=torch.float64)
        # the model good on the even catchments, the trees on the odd ones
        scale = torch.where(torch.arange(8) % 2 == 0, 0.2, 1.0)[:, None]
        items.append({"blend": {
            "pred": x + scale * torch.randn(2, 8, 15, generator=gen),  # masked, visible
            "trees": denormalise(x, stats) * (1 + 0.3 * (1.2 - scale) * noise),
            "x": x, "valid": torch.rand(8, 15, generator=gen) > 0.1,
            "hidden": torch.ones(8, 15, dtype=torch.bool), "catchment": torch.arange(8) % 4}})
    module._cal_collected = items
    with caplog.at_level("INFO", logger="maelab.models.mmmae.module"):
        module._fit_calibration()
    assert "cross-modal blend with the trees forcing_masked" in caplog.text
    cat = {k: torch.cat([b["blend"][k] for b in items], dim=1 if k in ("pred", "trees") else 0)
           for k in items[0]["blend"]}
    for weights, parity in ((module.cal_cross_modal_blend, None), (module._cal_fold_blend[0], 0),
                            (module._cal_fold_blend[1], 1)):
        rows = slice(None) if parity is None else cat["catchment"] % 2 == parity
        for state in (0, 1):
            want = fit_blend(cat["pred"][state][rows], cat["trees"][state][rows], cat["x"][rows],
                             cat["valid"][rows], cat["hidden"][rows], cat["catchment"][rows], stats)
            assert float(weights[state]) == want, (parity, state)
    assert (module._cal_fold_blend[0] < module._cal_fold_blend[1]).all()  # odd: the trees win
    assert module.calibrated

    module._trees = _ConstantTrees()
    module.cal_cross_modal_blend.copy_(torch.tensor([0.25, 1.0]))  # forcing masked, visible
    module._cal_fold_blend = torch.tensor([[0.0, 0.5], [1.0, 0.0]], dtype=torch.float64)
    hidden = torch.ones(4, 15, dtype=torch.bool)
    hidden[2, 4] = False  # window 2 shows a riverflow day
    forcing_mask = torch.zeros(4, 15, dtype=torch.bool)
    forcing_mask[0, ::2] = True  # window 0: the forcing series masked
    grid_mask = torch.zeros(4, 15, 6, dtype=torch.bool)
    grid_mask[3, 5, 0] = True  # window 3: the forcing grid masked; windows 1, 2: all visible
    ones = torch.ones(4, 15, dtype=torch.bool)
    batch = {"series": {"riverflow": torch.zeros(4, 15), "evaporation": torch.zeros(4, 15)},
             "series_valid": {"riverflow": ones, "evaporation": ones},
             "series_mask": {"riverflow": hidden, "evaporation": forcing_mask},
             "grid_mask": {"precipitation": grid_mask},
             "catchment": torch.tensor([0, 1, 0, 1]), "time": torch.arange(15).repeat(4, 1)}
    model = normalise(torch.full((4, 15), 3.0), stats)  # flow 3 everywhere

    def flows(split: str) -> torch.Tensor:
        module.test_split = split
        out = module._calibrated_series(batch, {"series": {"riverflow": model}})
        return denormalise(out["series"]["riverflow"], stats)

    test = flows("test")
    for i in (0, 3):
        assert torch.allclose(test[i], torch.full((15,), 0.75 * 3 + 0.25 * 1, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(test[1], torch.full((15,), 2.0, dtype=torch.float64), rtol=1e-5)
    val = flows("val")  # catchment 0 (even) gets the odd fit, catchment 1 the even one
    assert torch.allclose(val[0], torch.full((15,), 1.0, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(val[1], torch.full((15,), 0.5 * 3 + 0.5 * 2, dtype=torch.float64), rtol=1e-5)
    assert torch.allclose(val[3], torch.full((15,), 3.0, dtype=torch.float64), rtol=1e-5)
    for out in (test, val):
        assert torch.equal(out[2], denormalise(model[2], stats))


def test_evaluate_blends_the_cross_modal_series_with_the_trees(trained: tuple[dict, Path]) -> None:
    """`calibration.cross_modal_blend=regression` at evaluation fits the two weights and moves
    only the cross-modal rows of the model, each to the blend of the model's and the trees'
    flows (its RMSE at most the blend of theirs; equal to one of them at w = 0 or 1); the
    infilling rows and the baselines stay; the checkpoint is untouched; split=val records the
    weights of each parity. Trees on a series and a grid. Without the trees the option is
    refused by name."""
    metrics, out = trained
    ckpt = metrics["checkpoint"]
    before = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    forcing = "regression=[evaporation,precipitation]"
    base = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", forcing]))["test"]
    got = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", forcing,
                                            "calibration.cross_modal_blend=regression"]))
    assert (out / "eval-calibration.cross_modal_blend=regression,regression=evaporation,precipitation"
            / "metrics.json").is_file()
    assert got["settings"]["cross_modal_blend"] == "regression"
    weights = got["settings"]["cross_modal_blend_weights"]["fitted"]
    rows = got["test"]
    for row in ("riverflow / mmmae", "riverflow (alone, 7-day gap) / mmmae",
                "riverflow (all days hidden) / regression", "riverflow (all days hidden) / climatology"):
        assert rows[row]["rmse"] == pytest.approx(base[row]["rmse"], rel=1e-9), row
    for test, state in (("riverflow (all days hidden)", "forcing_masked"),
                        ("riverflow (alone, all days hidden)", "forcing_visible")):
        w, mine = weights[state], rows[f"{test} / mmmae"]["rmse"]
        model, trees = base[f"{test} / mmmae"]["rmse"], base[f"{test} / regression"]["rmse"]
        assert 0.0 <= w <= 1.0
        assert mine <= (1 - w) * model + w * trees + 1e-5 * model  # RMSE is a norm: convex
        if w in (0.0, 1.0):
            assert mine == pytest.approx(model if w == 0.0 else trees, rel=1e-5)
    after = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("cal_"))
    val = evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "split=val", forcing,
                                            "calibration.cross_modal_blend=regression"]))
    assert set(val["settings"]["cross_modal_blend_weights"]) == {"fitted_on_even", "fitted_on_odd"}
    with pytest.raises(ConfigError, match="model.calibration.cross_modal_blend"):
        evaluate(compose_cfg("evaluate", [f"ckpt={ckpt}", "calibration.cross_modal_blend=regression"]))


def test_series_shrink_none_keeps_the_model() -> None:
    cfg = compose_cfg("train", [*SMALL, "model.calibration.series_shrink=none"])
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    assert module.calibrated and torch.isnan(module.cal_series_shrink).all()
    out = {"series": {"riverflow": torch.zeros(2, 15)}}
    assert module._calibrated_series({}, out) is out
    fresh = build_module(compose_cfg("train", [*SMALL]), dm)
    assert not fresh.calibrated  # by_distance: fitted on validation before any test


def test_evaluate_split_val_tests_the_validation_windows(trained: tuple[dict, Path]) -> None:
    """split=val: the validation windows (other data than the test's: the baselines' errors
    differ), as many as the validation split has, written to eval_val/."""
    metrics, out = trained
    val = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}", "split=val"]))
    assert val["split"] == "val" and (out / "eval_val" / "metrics.json").exists()
    folds = val["settings"]["series_shrink_validation"]  # its series rows are out of sample
    assert "cross-fitted by catchment" in folds["rule"]
    assert set(folds["fitted_on_even"]) == set(folds["fitted_on_odd"]) == {
        "distance_bins_days", "evaporation", "riverflow"}
    assert folds["not_cross_fitted"] == []  # 3 catchments: both parities hold windows
    assert "series_shrink_validation" not in metrics["settings"]
    dm = build_datamodule(compose_cfg("train", [*SMALL]), stage="fit")
    dm.setup("fit")
    hidden = round(0.75 * 15)  # series days hidden per window
    assert val["test"]["riverflow / interpolation"]["n"] == len(dm.val_dataloader().dataset) * hidden
    for row in ("riverflow / climatology", "precipitation / climatology"):
        assert val["test"][row]["rmse"] != pytest.approx(metrics["test"][row]["rmse"], rel=1e-6), row


def test_perfect_reconstruction_gives_nse_one_and_rmse_zero(tmp_path: Path, cache: str) -> None:
    cfg = compose_cfg("train", [*SMALL, cache, "logger=[]"], tmp_path / "oracle")
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    real = module.net.forward

    def oracle(batch: dict[str, Any], decode: Any = None) -> dict[str, Any]:
        out = real(batch, decode)  # the model's decoded tokens, predictions replaced by the truth
        rows = torch.arange(len(batch["start"])).view(-1, 1, 1)
        days = torch.arange(batch["time"].shape[1]).view(1, -1, 1)
        out["grids"] = {g: batch["grids"][g].nan_to_num()[rows, days, out["grid_slots"][g]]
                        for g in out["grids"]}
        out["series"] = {s: batch["series"][s].nan_to_num() for s in out["series"]}
        return out

    module.net.forward = oracle
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    module.calibrate(trainer, dm)  # a perfect model keeps its own values: every weight 1
    assert module.cal_series_shrink.eq(1.0).all()
    trainer.test(module, datamodule=dm, verbose=False)
    rows = module.summary()["test"]
    for g in GRID_ROWS:
        assert rows[f"{g} / mmmae"]["rmse"] == 0.0 and rows[f"{g} / mmmae"]["mae"] == 0.0
    for key in ("riverflow / mmmae", "evaporation / mmmae", "riverflow (all days hidden) / mmmae",
                "riverflow (alone, all days hidden) / mmmae", "riverflow (alone, 7-day gap) / mmmae"):
        assert rows[key]["rmse"] == 0.0 and rows[key]["nse_median"] == pytest.approx(1.0)
        assert rows[key]["kge_median"] == pytest.approx(1.0)
        assert rows[key]["log_nse_median"] == pytest.approx(1.0) and rows[key]["flv_median"] == 0.0
        assert math.isnan(rows[key]["fhv_median"])  # top 2 % of ≤ 15 days per catchment: none
    assert rows["riverflow / interpolation"]["nse_median"] < 1.0


def test_absent_modalities_train_and_evaluate(tmp_path: Path, cache: str) -> None:
    absent = ["data.grids.soil_moisture=null", "data.series.evaporation=null", "data.static=null",
              "data.location=null"]
    metrics, _ = train(compose_cfg("train", [*SMALL, cache, *absent], tmp_path / "absent"))
    rows = metrics["test"]
    assert not any(r.startswith(("soil_moisture", "evaporation")) for r in rows)
    assert metrics["settings"]["cross_modal"] == "riverflow"
    assert rows["precipitation / mmmae"]["n"] > 0 and rows["riverflow / mmmae"]["n"] > 0
    assert (tmp_path / "absent" / "figures" / "hydrograph.png").exists()
    assert not (tmp_path / "absent" / "figures" / "map_soil_moisture.png").exists()


def test_only_the_tests_that_ran_are_recorded(tmp_path: Path, cache: str) -> None:
    """Without riverflow there is no cross-modal or infilling test, and the record says so."""
    out = tmp_path / "noflow"
    metrics, _ = train(compose_cfg("train", [*SMALL, cache, "data.series.riverflow=null",
                                             "data.log_series=[]"], out))
    assert not any(r.startswith("riverflow") for r in metrics["test"])
    assert metrics["settings"]["cross_modal"] is None and metrics["settings"]["infilling"] is None
    assert (out / "catchments.csv").exists()


@pytest.mark.parametrize(("overrides", "key"), [
    (["masking.series_modes={flow: all}"], "masking.series_modes.flow"),
    (["masking.series_modes={riverflow: contiguous}", "masking.gap_days=90"], "masking.gap_days"),
    (["model.net.temporal_patch=7"], "model.net.temporal_patch"),
    (["model.net.temporal_patch=5"], "model.net.temporal_patch"),  # factorised: per-day tokens
    (["experiment=hydro_joint", "model.net.grid_priors=[neighbour_mean]"], "model.net.grid_priors"),
    (["model.net.grid_priors=[neighbour_mean,neighbour_mean]"], "model.net.grid_priors"),
    (["model.net.series_priors=[neighbour_mean]"], "model.net.series_priors"),
    (["model.net.decode_fraction=0"], "model.net.decode_fraction"),
    (["masking_ratio=0.999"], "masking_ratio"),
    (["masking.strategy=patch"], "masking"),
    (["model.net.d_model=30", "model.net.heads=3"], "model.net.d_model"),
    (["model.net.decoder_depth=0"], "model.net.decoder_depth"),
    (["model.loss.weights.riverflow=-1"], "model.loss.weights.riverflow"),
    (["model.calibration.series_shrink=off"], "model.calibration.series_shrink"),
    (["model.calibration.cross_modal_blend=trees"], "model.calibration.cross_modal_blend"),
    # the blend needs the regression baseline's trees (model.evaluation.regression)
    (["model.calibration.cross_modal_blend=regression"], "model.calibration.cross_modal_blend"),
])
def test_bad_configs_fail_early(overrides: list[str], key: str) -> None:
    experiment = [] if any(o.startswith("experiment=") for o in overrides) else ["experiment=hydro"]
    cfg = compose_cfg("train", [*experiment, *overrides])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(cfg)


def test_the_joint_experiment_builds_from_its_config(cache: str) -> None:
    """`experiment=hydro_joint` builds the joint model from the checked config (whose defaults
    hold factorised-only keys such as `antecedent_days`) and runs a forward pass."""
    cfg = compose_cfg("train", ["experiment=hydro_joint", *SMALL[1:], cache])
    validate_config(cfg)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    assert type(module.net).__name__ == "MMMAE"
    batch = module.masked(next(iter(dm.val_dataloader())), -1)
    out = module(batch)
    assert all(torch.isfinite(p).all() for p in out["series"].values())


def test_the_regression_prior_reaches_the_decoder(cache: str) -> None:
    """With `regression` first among the series priors, a fresh model predicts riverflow as the
    trees' prior (model units): cross-fitted by year in training mode, the two sets' mean in
    evaluation; no hidden riverflow value changes it."""
    cfg = compose_cfg("train", [*SMALL, cache, "data.synthetic.start=1999-11-01",
                                "data.splits.train.start=1999-11-01",
                                "model.net.forcing_series=[evaporation]",
                                "model.net.series_priors=[regression,interpolation]",
                                "model.evaluation.regression_windows=64"])
    validate_config(cfg)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    batch = module.masked(next(iter(dm.train_dataloader())), 0)
    with pytest.raises(RuntimeError, match="use_data"):  # the trees are fitted there
        module(batch)
    module.use_data(dm)
    hidden = batch["series_mask"]["riverflow"]
    changed = {**batch, "series": {**batch["series"], "riverflow": torch.where(
        hidden, 50.0, batch["series"]["riverflow"])}}
    outputs = {}
    for training in (True, False):
        module.train(training)
        prior = module._prior_trees.prior(batch, cross_fitted=training)  # (B, T) physical
        outputs[training] = module._predict_series(batch)["series"]["riverflow"]
        torch.testing.assert_close(outputs[training],
                                   normalise(prior, module.info.stats["riverflow"]))
        torch.testing.assert_close(module._predict_series(changed)["series"]["riverflow"],
                                   outputs[training])
    assert not torch.allclose(outputs[True], outputs[False])


def test_a_run_with_the_regression_prior_trains_and_evaluates(tmp_path: Path, cache: str) -> None:
    """debug=fast with the `regression` prior trains, tests, and `evaluate.py` refits the same
    trees from the seed: the checkpoint's test table comes back."""
    metrics, _ = train(compose_cfg("train", [*SMALL, cache, "data.synthetic.start=1999-11-01",
                                             "data.splits.train.start=1999-11-01",
                                             "model.net.forcing_series=[evaporation]",
                                             "model.net.series_priors=[interpolation,regression]",
                                             "model.evaluation.regression_windows=64"],
                                   tmp_path / "run"))
    assert metrics["settings"]["series_priors"] == ["interpolation", "regression"]
    again = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}"]))
    for row in ("riverflow / mmmae", "riverflow (all days hidden) / mmmae",
                "riverflow (alone, 7-day gap) / mmmae"):
        assert math.isfinite(metrics["test"][row]["rmse"])
        assert again["test"][row]["rmse"] == pytest.approx(metrics["test"][row]["rmse"], rel=1e-6)


def test_unknown_loss_weight_names_the_modalities(tmp_path: Path, cache: str) -> None:
    cfg = compose_cfg("train", [*SMALL, cache, "+model.loss.weights.snow=1.0"], tmp_path / "w")
    validate_config(cfg)
    with pytest.raises(ConfigError, match="riverflow"):
        build_module(cfg, build_datamodule(cfg))


def test_experiment_config_composes() -> None:
    cfg = compose_cfg("train", ["experiment=hydro", "masking=independent", "masking_ratio=0.6"])
    validate_config(cfg)
    assert cfg.model._target_ == "maelab.models.mmmae.module.MMMAEModule"
    assert cfg.model.masking.strategy == "independent" and cfg.model.masking.ratio == 0.6
    assert cfg.optimized_metric == "val/loss" and cfg.optimized_metric_mode == "min"
    with open_dict(cfg):
        cfg.masking.enabled = False
    validate_config(cfg)


def test_encoder_benchmark_reports_both_encoders() -> None:
    r = run_benchmark(batch_size=1, temporal_patch=30, d_model=16, depth=1, heads=2, repeats=1,
                      warmup=0)
    assert r["all_tokens"]["tokens"] == 1 + 3 * 3 * 94 + 2 * 90
    assert r["visible_only"]["tokens"] < r["all_tokens"]["tokens"] / 3
    assert r["visible_only"]["step_s"] > 0 and r["speedup"] > 0


def test_nse_star_loss_trains_on_each_catchments_training_spread(tmp_path: Path, cache: str) -> None:
    """`model.loss.nse_star=[riverflow]`: the module reads each catchment's training-period
    standard deviation of riverflow (physical units) from the store, and a run trains and tests."""
    cfg = compose_cfg("train", [*SMALL, cache, "model.loss.nse_star=[riverflow]"], tmp_path / "n")
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    module.use_data(dm)
    lo, hi = (dm.store.day_index(d) for d in dm.splits["train"])
    flows = np.asarray(dm.store.series["riverflow"][:, lo:hi + 1], dtype=np.float64)
    assert list(module._series_std) == ["riverflow"]
    assert np.allclose(module._series_std["riverflow"].numpy(), np.nanstd(flows, axis=1))
    every_day = np.nanstd(np.asarray(dm.store.series["riverflow"], dtype=np.float64), axis=1)
    assert not np.allclose(module._series_std["riverflow"].numpy(), every_day)  # training only
    metrics, _ = train(cfg)
    assert math.isfinite(metrics["test"]["riverflow / mmmae"]["nse_median"])
