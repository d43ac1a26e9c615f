"""Hydra configs of the hydrology data layer: compose, instantiate, embedded synthetic default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import maelab.data.hydro.sources.synthetic as synthetic
from maelab.data.hydro.datamodule import HydroDataModule
from maelab.models.mmmae.config import MaskingConfig
from maelab.models.mmmae.masking import with_masks

CONF = Path(__file__).parents[1] / "conf"
SMALL = [
    "data.synthetic.start=2000-01-01", "data.synthetic.end=2000-04-30",
    "data.synthetic.n_catchments=3", "data.seq_len=15",
    "data.splits.train.start=2000-01-01", "data.splits.train.end=2000-02-29",
    "data.splits.val.start=2000-03-01", "data.splits.val.end=2000-03-31",
    "data.splits.test.start=2000-04-01", "data.splits.test.end=2000-04-30",
]


def _compose(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("data", ["hydro_synthetic", "haduk_rainfall", "camels_gb", "haduk_camels",
                                  "camels_gb_official"])
@pytest.mark.parametrize("masking", ["unified", "independent"])
def test_configs_compose(data: str, masking: str) -> None:
    cfg = _compose([f"data={data}", f"masking={masking}", "masking_ratio=0.75", "debug=fast"])
    assert cfg.data.num_workers == 0  # debug=fast reaches every data config
    assert cfg.data._target_ == "maelab.data.hydro.datamodule.HydroDataModule"
    assert "masking" not in cfg.data  # masks are the model's (model.masking: ${masking})
    assert cfg.masking.strategy == masking and cfg.masking.ratio == 0.75
    assert cfg.masking.series == ("shared" if masking == "unified" else "independent")
    assert cfg.data.cache_dir.endswith(".cache/hydro")


def test_synthetic_default_instantiates_and_reuses_cache(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ["data=hydro_synthetic", "masking=independent", "masking_ratio=0.75",
                 "debug=fast", f"data.cache_dir={tmp_path}", *SMALL]
    cfg = _compose(overrides)
    dm = instantiate(cfg.data)
    assert isinstance(dm, HydroDataModule)
    dm.prepare_data()
    b = next(iter(dm.val_dataloader()))
    n = len(b["catchment"])  # one window per catchment (eval_stride 30)
    assert n == 3 and b["grids"]["temperature"].shape == (n, 15, 94, 100)
    assert b["series"]["riverflow"].shape == (n, 15) and b["static"].shape == (n, 8)
    assert all(b["present"][n].all() for n in (*dm.grid_names, *dm.series_names))
    m = with_masks(b, MaskingConfig(**cfg.masking), 0, -1, dm.n_valid_patches, dm.grid_names,
                   dm.series_names)
    assert not torch.equal(m["grid_mask"]["precipitation"], m["grid_mask"]["temperature"])

    def no_generation(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("regenerated although the store is cached")

    monkeypatch.setattr(synthetic, "generate_hydrology", no_generation)
    again = instantiate(_compose(overrides).data)
    again.prepare_data()
    assert again.store.path == dm.store.path


def test_camels_gb_official_config_on_the_official_layout(tmp_path: Path) -> None:
    from tests.test_hydro_sources import GAUGES, write_camels_official

    root = write_camels_official(tmp_path / "camels", subfolder=True)
    cfg = _compose(["data=camels_gb_official", "debug=fast", f"data.root={root}",
                    f"data.cache_dir={tmp_path / 'c'}", "data.options.attributes=null",
                    "data.seq_len=20", *[f"data.splits.{k}.{e}={v}" for k, e, v in (
                        ("train", "start", "2001-01-01"), ("train", "end", "2001-02-28"),
                        ("val", "start", "2001-03-01"), ("val", "end", "2001-03-31"),
                        ("test", "start", "2001-04-01"), ("test", "end", "2001-04-30"))]])
    dm = instantiate(cfg.data)
    b = next(iter(dm.val_dataloader()))
    assert b["present"]["evaporation"].all() and b["series_valid"]["evaporation"].all()  # pet
    assert sorted(dm.catchment_ids) == sorted(GAUGES) and torch.isfinite(b["location"]).all()
    assert not any(dm.present[g] for g in dm.grid_names)
