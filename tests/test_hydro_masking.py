"""MM-MAE hydrology masks: counts, land only, unified vs independent, fixed eval masks."""

from __future__ import annotations

import pytest
import torch

from maelab.core.errors import ConfigError
from maelab.data.hydro.layout import PatchLayout, default_land_mask
from maelab.models.mmmae.masking import HydroMaskConfig, full_grid_mask, grid_masks, series_masks

GRIDS = ["precipitation", "soil_moisture", "temperature"]
SERIES = ["evaporation", "riverflow"]


@pytest.fixture(scope="module")
def layout() -> PatchLayout:
    return PatchLayout.build(default_land_mask(), 10, 0.5)


def _keys(b: int) -> torch.Tensor:
    return torch.stack([torch.ones(b, dtype=torch.int64), torch.arange(b), 7 * torch.arange(b)],
                       dim=1)  # (B, 3) split, catchment, start


@pytest.mark.parametrize("fixed", [False, True])
def test_grid_masks_hide_exact_count_on_land_only(layout: PatchLayout, fixed: bool) -> None:
    cfg = HydroMaskConfig(strategy="independent", ratio=0.75)
    keys = _keys(4) if fixed else None
    masks = grid_masks(cfg, 4, 90, layout.n_valid, GRIDS, sample_keys=keys)
    assert layout.n_valid == 94
    for m in masks.values():
        assert m.shape == (4, 90, 94) and m.dtype == torch.bool
        assert (m.sum(-1) == round(0.75 * 94)).all()  # 70 per day
        full = full_grid_mask(m, torch.as_tensor(layout.valid_idx), layout.n_patches)
        assert full.shape == (4, 90, 522)
        ocean = torch.ones(522, dtype=torch.bool)
        ocean[torch.as_tensor(layout.valid_idx)] = False
        assert not full[..., ocean].any()
        assert (full.sum(-1) == 70).all()
        # days differ: not the same patches every day
        assert (m[:, 1:] != m[:, :-1]).any(-1).float().mean() > 0.9


def test_unified_shares_one_mask_independent_draws_per_grid(layout: PatchLayout) -> None:
    for keys in (None, _keys(3)):
        uni = grid_masks(HydroMaskConfig(strategy="unified"), 3, 30, layout.n_valid, GRIDS,
                         sample_keys=keys)
        assert torch.equal(uni["precipitation"], uni["soil_moisture"])
        assert torch.equal(uni["precipitation"], uni["temperature"])
        ind = grid_masks(HydroMaskConfig(strategy="independent"), 3, 30, layout.n_valid, GRIDS,
                         sample_keys=keys)
        assert not torch.equal(ind["precipitation"], ind["soil_moisture"])
        assert not torch.equal(ind["soil_moisture"], ind["temperature"])


def test_series_masks_shared_or_independent() -> None:
    shared = series_masks(HydroMaskConfig(series="shared"), 5, 90, SERIES)
    assert torch.equal(shared["evaporation"], shared["riverflow"])
    assert (shared["riverflow"].sum(-1) == round(0.75 * 90)).all()
    ind = series_masks(HydroMaskConfig(series="independent"), 5, 90, SERIES, sample_keys=_keys(5))
    assert not torch.equal(ind["evaporation"], ind["riverflow"])
    assert (ind["evaporation"].sum(-1) == round(0.75 * 90)).all()


def test_fixed_masks_depend_only_on_sample_identity(layout: PatchLayout) -> None:
    cfg = HydroMaskConfig(strategy="independent", series="independent", seed=3)
    keys = _keys(6)
    full = grid_masks(cfg, 6, 20, layout.n_valid, GRIDS, sample_keys=keys)
    perm = torch.tensor([4, 1, 5])
    part = grid_masks(cfg, 3, 20, layout.n_valid, GRIDS, sample_keys=keys[perm])
    for g in GRIDS:
        assert torch.equal(full[g][perm], part[g])
    again = series_masks(cfg, 6, 20, SERIES, sample_keys=keys)
    assert torch.equal(again["riverflow"], series_masks(cfg, 6, 20, SERIES,
                                                        sample_keys=keys)["riverflow"])
    other_seed = grid_masks(HydroMaskConfig(strategy="independent", seed=4), 6, 20,
                            layout.n_valid, GRIDS, sample_keys=keys)
    assert not torch.equal(other_seed["precipitation"], full["precipitation"])


def test_fresh_train_masks_differ_between_draws(layout: PatchLayout) -> None:
    cfg = HydroMaskConfig()
    a = grid_masks(cfg, 2, 10, layout.n_valid, GRIDS)["precipitation"]
    b = grid_masks(cfg, 2, 10, layout.n_valid, GRIDS)["precipitation"]
    assert not torch.equal(a, b)


def test_disabled_hides_nothing(layout: PatchLayout) -> None:
    cfg = HydroMaskConfig(enabled=False)
    assert not any(m.any() for m in grid_masks(cfg, 2, 9, layout.n_valid, GRIDS).values())
    assert not any(m.any() for m in series_masks(cfg, 2, 9, SERIES, sample_keys=_keys(2)).values())


@pytest.mark.parametrize(("cfg", "key"), [
    ({"strategy": "patch"}, "masking.strategy"),
    ({"series": "both"}, "masking.series"),
    ({"ratio": 1.0}, "masking.ratio"),
    ({"ratio": 0.0}, "masking.ratio"),
    ({"unknown": 1}, "masking.unknown"),
])
def test_bad_masking_config_names_the_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        HydroMaskConfig.from_mapping(cfg)


def test_ratio_hiding_all_patches_is_rejected() -> None:
    with pytest.raises(ConfigError, match="masking.ratio"):
        HydroMaskConfig(ratio=0.999).check_units(94, 90)
