"""MMMAEModule pieces that need no data: masks after transfer, cross-modal training batches."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import maelab.models.mmmae.module as module_lib
from maelab.core.errors import ConfigError
from maelab.data.contracts import HydroInfo
from maelab.models.mmmae.loss import mmmae_loss
from maelab.models.mmmae.module import MMMAEModule
from tests.test_mmmae_model import COLS, GRIDS, ROWS, SERIES, T, make_batch

INFO = asdict(HydroInfo(
    grid_names=list(GRIDS), series_names=list(SERIES), present=dict.fromkeys((*GRIDS, *SERIES), True),
    seq_len=T, patch_size=2, n_valid_patches=len(ROWS), n_patches=16, valid_patch_rows=ROWS,
    valid_patch_cols=COLS, patch_grid_shape=[4, 4], n_static=5, static_names=list("abcde"),
    batch_size=3,
    stats={n: {"mean": 0.0, "std": 1.0, "log": n == "riverflow"} for n in (*GRIDS, *SERIES)}))
NET = {"d_model": 16, "depth": 1, "heads": 2, "decoder_dim": 8, "decoder_depth": 1,
       "decoder_heads": 2, "grid_priors": ["neighbour_mean", "interpolation"],
       "series_priors": ["interpolation"]}  # factorised; no climatology (no DataModule here)


def make_module(**kw: Any) -> MMMAEModule:
    args = {"net": NET, "loss": {"weights": {}}, "optim": {}, "masking": {"strategy": "unified"},
            "evaluation": {"climatology_window": 31, "cross_modal": "riverflow"},
            "data_info": INFO} | kw
    return MMMAEModule(**args)


def test_steps_draw_masks_fresh_per_training_epoch_fixed_in_evaluation() -> None:
    module = make_module(masking={"strategy": "independent", "ratio": 0.5})
    data = {k: v for k, v in make_batch().items() if k not in ("grid_mask", "series_mask")}
    seen: list[dict[str, Any]] = []
    module._step = lambda batch, stage, decode=None: seen.append(batch)  # type: ignore[method-assign]
    module.log = lambda *args, **kw: None  # type: ignore[method-assign]

    def drawn(stage: str, epoch: int) -> dict[str, Any]:
        module.trainer = SimpleNamespace(current_epoch=epoch)  # type: ignore[assignment]
        getattr(module, f"{stage}_step")(data, 0)
        return seen[-1]

    train0, train1, val0, val3 = (drawn("training", 0), drawn("training", 1),
                                  drawn("validation", 0), drawn("validation", 3))
    assert not torch.equal(train0["grid_mask"]["precipitation"], train1["grid_mask"]["precipitation"])
    assert torch.equal(drawn("training", 1)["grid_mask"]["precipitation"],
                       train1["grid_mask"]["precipitation"])
    for g in GRIDS:
        assert torch.equal(val0["grid_mask"][g], val3["grid_mask"][g])
        assert (val0["grid_mask"][g].sum(-1) == round(0.5 * len(ROWS))).all()
    assert not torch.equal(val0["grid_mask"]["precipitation"], val0["grid_mask"]["temperature"])
    assert (val0["series_mask"]["riverflow"].sum(-1) == T // 2).all()


def test_hide_series_hides_one_whole_series_of_some_batches() -> None:
    batch = make_batch()
    assert make_module(hide_series=0.0)._hide_whole_series(batch, 0) is batch
    module = make_module(hide_series=1.0)
    out = module._hide_whole_series(batch, 0)
    hidden = [n for n in SERIES if out["series_mask"][n].all()]
    assert len(hidden) == 1 and not batch["series_mask"][hidden[0]].all()
    assert module._hide_whole_series(batch, 0)["series_mask"][hidden[0]].all()  # reproducible
    parts = mmmae_loss(module(out), out, {})
    assert torch.isfinite(parts["loss"]) and parts[hidden[0]] > 0  # scored on every valid day
    seen = {n for i in range(40) for n in SERIES
            if make_module(hide_series=0.5)._hide_whole_series(batch, i)["series_mask"][n].all()}
    assert seen == set(SERIES)


def test_hide_series_others_visible_shows_every_other_series_day() -> None:
    batch = make_batch()
    out = make_module(hide_series=1.0, hide_series_others="visible")._hide_whole_series(batch, 0)
    hidden = [n for n in SERIES if out["series_mask"][n].all()]
    assert len(hidden) == 1
    assert all(not out["series_mask"][n].any() for n in SERIES if n != hidden[0])
    assert any(batch["series_mask"][n].any() for n in SERIES if n != hidden[0])  # were masked
    assert out["grid_mask"] is batch["grid_mask"]  # grids keep their masks


def test_hide_series_grids_visible_shows_the_grids_with_the_other_series() -> None:
    """`hide_series_grids=visible`: in a `mixed` batch whose other series are shown on every day
    the grids are too (the `alone` test's condition, which also trains end to end: a finite
    loss with no grid token hidden); where the others keep their masks the grids keep theirs."""
    batch = make_batch()
    assert any(m.any() for m in batch["grid_mask"].values())
    module = make_module(hide_series=1.0, hide_series_others="mixed", hide_series_grids="visible")
    kinds = set()
    for i in range(20):
        out = module._hide_whole_series(batch, i)
        hidden = [n for n in SERIES if out["series_mask"][n].all()]
        visible = all(not out["series_mask"][n].any() for n in SERIES if n != hidden[0])
        grids = [torch.equal(out["grid_mask"][g], torch.zeros_like(batch["grid_mask"][g]) if visible
                             else batch["grid_mask"][g]) for g in GRIDS]
        assert all(grids)
        kinds.add(visible)
        if visible:
            loss = module._step(out, "train", module._decode_subset(out, 0))
            assert torch.isfinite(loss)
    assert kinds == {True, False}


def test_hide_series_others_mixed_shows_or_masks_the_others_by_a_keyed_coin() -> None:
    """`mixed`: each cross-modal batch shows the other series on every day or keeps their masks,
    about half each; the same batch index gives the same choice (keyed: resume-safe), and the
    hidden series is the one `masked` would hide."""
    batch = make_batch()
    mixed = make_module(hide_series=1.0, hide_series_others="mixed")
    masked = make_module(hide_series=1.0, hide_series_others="masked")
    shown = []
    for i in range(40):
        out = mixed._hide_whole_series(batch, i)
        hidden = [n for n in SERIES if out["series_mask"][n].all()]
        assert hidden == [n for n in SERIES if masked._hide_whole_series(batch, i)["series_mask"][n].all()]
        others = [n for n in SERIES if n != hidden[0]]
        visible = all(not out["series_mask"][n].any() for n in others)
        assert visible or all(torch.equal(out["series_mask"][n], batch["series_mask"][n]) for n in others)
        again = mixed._hide_whole_series(batch, i)["series_mask"][others[0]]
        assert torch.equal(again, out["series_mask"][others[0]])
        shown.append(visible)
    assert 10 <= sum(shown) <= 30
    streams = (module_lib._HIDE_SERIES_STREAM, module_lib._HIDE_OTHERS_STREAM, module_lib._DECODE_STREAM)
    assert len(set(streams)) == 3 and -1 not in streams  # no draw shares another's key


@pytest.mark.parametrize(("kw", "key"), [
    ({"loss": {"weights": {"snow": 1.0}}}, "model.loss.weights.snow"),
    ({"evaluation": {"climatology_window": 31, "cross_modal": "precipitation"}},
     "model.evaluation.cross_modal"),
])
def test_bad_settings_name_their_key(kw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        make_module(**kw)


def test_training_decodes_a_keyed_subset_of_the_hidden_grid_tokens() -> None:
    module = make_module(net=NET | {"decode_fraction": 0.5}, masking={"strategy": "unified"})
    data = {k: v for k, v in make_batch().items() if k not in ("grid_mask", "series_mask")}
    data["location"] = torch.zeros(3, 2)
    seen: list[dict[str, Any]] = []
    module.log = lambda *args, **kw: None  # type: ignore[method-assign]
    module.log_dict = lambda *args, **kw: None  # type: ignore[method-assign]
    real = module.net.forward
    module.net.forward = lambda batch, decode=None: seen.append(decode) or real(batch, decode)

    def decoded(epoch: int) -> dict[str, torch.Tensor]:
        module.trainer = SimpleNamespace(current_epoch=epoch)  # type: ignore[assignment]
        module.training_step(data, 0)
        return seen[-1]

    first, again, later = decoded(0), decoded(0), decoded(1)
    masks = module.masked(data, 0)["grid_mask"]
    for g in GRIDS:
        assert (first[g].sum(-1) == round(0.5 * round(0.5 * len(ROWS)))).all()
        assert not (first[g] & ~masks[g]).any()  # hidden tokens only
        assert torch.equal(first[g], again[g]) and torch.equal(first[g], first[GRIDS[0]])
    assert not torch.equal(first[GRIDS[0]], later[GRIDS[0]])  # fresh every epoch
    module.validation_step(data, 0)  # its step, then the cross-modal pass (no grid decoded)
    val0, cross = seen[-2], seen[-1]
    assert not any(cross[g].any() for g in GRIDS)
    module.trainer = SimpleNamespace(current_epoch=3)  # type: ignore[assignment]
    module.validation_step(data, 0)
    assert all(torch.equal(val0[g], seen[-2][g]) for g in GRIDS)  # a fixed validation subset
    assert (val0[GRIDS[0]].sum(-1) == first[GRIDS[0]].sum(-1)).all()


@pytest.mark.parametrize("nse_star", [[], ["riverflow"]])
def test_validation_logs_the_baseline_bars(nse_star: list[str]) -> None:
    """`val/loss_<series>_interpolation` and `val/loss_<grid>_neighbour_mean` are the baselines'
    losses: a fresh model (weights on its first prior, zero correction) scores exactly those, in
    the units of the series' loss (NSE* where `model.loss.nse_star` names it)."""
    module, batch = make_module(loss={"weights": {}, "nse_star": nse_star}), make_batch()
    module._series_std = {s: torch.linspace(0.5, 2.0, 4) for s in nse_star}  # use_data's, by hand
    batch["location"] = torch.zeros(3, 2)
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value.item())  # type: ignore
    module.log_dict = lambda d, **kw: logged.update({k: v.item() for k, v in d.items()})  # type: ignore
    module.validation_step(batch, 0)
    for s in SERIES:
        assert logged[f"val/loss_{s}_interpolation"] == pytest.approx(logged[f"val/loss_{s}"])
        assert logged[f"val/loss_{s}_interpolation"] > 0
    for g in GRIDS:
        assert logged[f"val/loss_{g}_neighbour_mean"] == pytest.approx(logged[f"val/loss_{g}"])
        assert logged[f"val/loss_{g}_neighbour_mean"] > 0


def test_series_only_passes_decode_no_grid_and_match_the_full_pass() -> None:
    """The test's cross-modal and infilling passes read only series: they decode no grid token,
    and the series they predict are those of the pass that decodes every grid token."""
    module, batch = make_module(), make_batch()
    batch["location"] = torch.zeros(3, 2)
    module.eval()
    with torch.no_grad():
        full, series_only = module._predict(batch), module._predict_series(batch)
    for s in SERIES:
        assert torch.allclose(full["series"][s], series_only["series"][s], atol=1e-6)
    assert all(series_only["grid_hidden"][g].sum() == 0 for g in GRIDS)
    assert all(full["grid_hidden"][g].sum() > 0 for g in GRIDS)
