"""MM-MAE hydrology masks: counts, land only, unified vs independent, keyed per window."""

from __future__ import annotations

import pytest
import torch

from maelab.core.errors import ConfigError
from maelab.data.hydro.layout import PatchLayout, default_land_mask
from maelab.masking.noise import KeyedNoise
from maelab.models.mmmae.config import MaskingConfig
from maelab.models.mmmae.masking import grid_masks, series_masks, window_noise

GRIDS = ["precipitation", "soil_moisture", "temperature"]
SERIES = ["evaporation", "riverflow"]


@pytest.fixture(scope="module")
def layout() -> PatchLayout:
    return PatchLayout.build(default_land_mask(), 10, 0.5)


def _noise(b: int, stream: int = -1, seed: int = 0) -> KeyedNoise:
    """Keyed noise of b windows: catchment i, start 7·i."""
    return window_noise(seed, {"catchment": torch.arange(b), "start": 7 * torch.arange(b)}, stream)


@pytest.mark.parametrize("stream", [-1, 0])
def test_grid_masks_hide_exact_count_on_land_only(layout: PatchLayout, stream: int) -> None:
    cfg = MaskingConfig(strategy="independent", ratio=0.75)
    masks = grid_masks(_noise(4, stream), cfg, 90, layout.n_valid, GRIDS)
    assert layout.n_valid == 94
    for m in masks.values():
        assert m.shape == (4, 90, 94) and m.dtype == torch.bool  # valid land patches only
        assert (m.sum(-1) == round(0.75 * 94)).all()  # 70 per day
        # days differ: not the same patches every day
        assert (m[:, 1:] != m[:, :-1]).any(-1).float().mean() > 0.9


def test_unified_shares_one_mask_independent_draws_per_grid(layout: PatchLayout) -> None:
    uni = grid_masks(_noise(3), MaskingConfig(strategy="unified"), 30, layout.n_valid, GRIDS)
    assert torch.equal(uni["precipitation"], uni["soil_moisture"])
    assert torch.equal(uni["precipitation"], uni["temperature"])
    ind = grid_masks(_noise(3), MaskingConfig(strategy="independent"), 30, layout.n_valid, GRIDS)
    assert not torch.equal(ind["precipitation"], ind["soil_moisture"])
    assert not torch.equal(ind["soil_moisture"], ind["temperature"])


def test_series_masks_shared_or_independent() -> None:
    shared = series_masks(_noise(5), MaskingConfig(series="shared"), 90, SERIES)
    assert torch.equal(shared["evaporation"], shared["riverflow"])
    assert (shared["riverflow"].sum(-1) == round(0.75 * 90)).all()
    ind = series_masks(_noise(5), MaskingConfig(series="independent"), 90, SERIES)
    assert not torch.equal(ind["evaporation"], ind["riverflow"])
    assert (ind["evaporation"].sum(-1) == round(0.75 * 90)).all()


def test_masks_depend_only_on_window_identity_seed_and_stream(layout: PatchLayout) -> None:
    cfg = MaskingConfig(strategy="independent", series="independent")
    full = grid_masks(_noise(6, seed=3), cfg, 20, layout.n_valid, GRIDS)
    perm = torch.tensor([4, 1, 5])
    batch = {"catchment": perm, "start": 7 * perm}
    part = grid_masks(window_noise(3, batch, -1), cfg, 20, layout.n_valid, GRIDS)
    for g in GRIDS:
        assert torch.equal(full[g][perm], part[g])
    assert torch.equal(series_masks(_noise(6, seed=3), cfg, 20, SERIES)["riverflow"],
                       series_masks(_noise(6, seed=3), cfg, 20, SERIES)["riverflow"])
    other_seed = grid_masks(_noise(6, seed=4), cfg, 20, layout.n_valid, GRIDS)
    assert not torch.equal(other_seed["precipitation"], full["precipitation"])
    epochs = [grid_masks(_noise(6, stream=e, seed=3), cfg, 20, layout.n_valid, GRIDS)
              for e in (0, 1)]  # training masks: fresh every epoch
    assert not torch.equal(epochs[0]["precipitation"], epochs[1]["precipitation"])
    assert not torch.equal(epochs[0]["precipitation"], full["precipitation"])


def test_disabled_hides_nothing(layout: PatchLayout) -> None:
    cfg = MaskingConfig(enabled=False)
    assert not any(m.any() for m in grid_masks(_noise(2), cfg, 9, layout.n_valid, GRIDS).values())
    assert not any(m.any() for m in series_masks(_noise(2), cfg, 9, SERIES).values())


@pytest.mark.parametrize(("cfg", "key"), [
    ({"strategy": "patch"}, "strategy"),
    ({"series": "both"}, "series"),
])
def test_bad_masking_config_names_the_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        MaskingConfig(**cfg)


def test_ratio_hiding_all_patches_is_rejected() -> None:
    with pytest.raises(ConfigError, match="masking.ratio"):
        grid_masks(_noise(2), MaskingConfig(ratio=0.999), 9, 94, GRIDS)


def test_series_modes_all_visible_contiguous() -> None:
    series = ["evaporation", "riverflow", "catchment_precipitation"]
    base = series_masks(_noise(6), MaskingConfig(), 30, series)
    cfg = MaskingConfig(series_modes={"riverflow": "contiguous", "evaporation": "visible",
                                      "catchment_precipitation": "random_days"}, gap_days=9)
    m = series_masks(_noise(6), cfg, 30, series)
    assert not m["evaporation"].any()  # an input only
    assert torch.equal(m["catchment_precipitation"], base["catchment_precipitation"])  # unchanged
    gap = m["riverflow"]
    assert (gap.sum(-1) == 9).all()  # one run of 9 days in every window …
    assert ((gap[:, 1:] & ~gap[:, :-1]).sum(-1) + gap[:, 0] == 1).all()  # … contiguous
    assert len({int(r.float().argmax()) for r in gap}) > 1  # at different places
    again = series_masks(_noise(6), cfg, 30, series)["riverflow"]
    assert torch.equal(gap, again)  # fixed per window
    hide = series_masks(_noise(6), MaskingConfig(series_modes={"riverflow": "all"}), 30, series)
    assert hide["riverflow"].all() and torch.equal(hide["evaporation"], base["evaporation"])
    ind = MaskingConfig(series="independent", series_modes=dict.fromkeys(series, "contiguous"))
    gaps = series_masks(_noise(6), ind, 30, series)
    assert not torch.equal(gaps["riverflow"], gaps["evaporation"])
    shared = MaskingConfig(series_modes=dict.fromkeys(series, "contiguous"))
    gaps = series_masks(_noise(6), shared, 30, series)
    assert torch.equal(gaps["riverflow"], gaps["evaporation"])


@pytest.mark.parametrize(("cfg", "key"), [
    ({"series_modes": {"riverflow": "gaps"}}, "series_modes.riverflow"),
    ({"gap_days": 0}, "gap_days"),
])
def test_bad_series_modes_name_the_key(cfg: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        MaskingConfig(**cfg)
