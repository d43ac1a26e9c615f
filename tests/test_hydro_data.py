"""HydroDataModule: prepared store, windows, batches (and the model's masks on them), cache, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

import maelab.data.hydro.assemble as assemble
import maelab.data.hydro.sources.base as sources
from maelab.core.errors import ConfigError, DataError
from maelab.data.hydro.datamodule import GRID_NAMES, HydroDataModule
from maelab.data.hydro.sources.synthetic import generate_hydrology, write_dataset
from maelab.models.mmmae.config import MaskingConfig
from maelab.models.mmmae.masking import with_masks
from maelab.scoring.hydro_metrics import denormalise

NAN_DAY = 69  # 2000-03-10: precipitation missing everywhere
SERIES_START = 40  # catchment 0: riverflow starts on day 40
GAP = slice(45, 51)  # catchment 1: riverflow missing 2000-02-15 … 2000-02-20
SPLITS = {"train": {"start": "2000-01-01", "end": "2000-04-30"},
          "val": {"start": "2000-05-01", "end": "2000-05-31"},
          "test": {"start": "2000-06-01", "end": "2000-06-30"}}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset]:
    ds = generate_hydrology("2000-01-01", "2000-06-30", seed=2, n_catchments=5,
                            gap_fraction=0.0, spinup_days=30)
    ds.precipitation[NAN_DAY] = np.nan
    ds.riverflow[:SERIES_START, 0] = np.nan
    ds.riverflow[GAP, 1] = np.nan
    path = write_dataset(ds, tmp_path_factory.mktemp("src") / "hydro.nc")
    return path, ds


def _kw(root: Path, cache: Path, **over: Any) -> dict[str, Any]:
    kw = dict(source="netcdf", root=str(root), cache_dir=str(cache), seq_len=20, train_stride=3,
              eval_stride=5, batch_size=4, splits=SPLITS)
    return {**kw, **over}


@pytest.fixture(scope="module")
def dm(source: tuple[Path, xr.Dataset], tmp_path_factory: pytest.TempPathFactory
       ) -> HydroDataModule:
    module = HydroDataModule(**_kw(source[0], tmp_path_factory.mktemp("cache")))
    module.prepare_data()
    module.setup()
    return module


def test_store_round_trips_source_on_land(dm: HydroDataModule,
                                          source: tuple[Path, xr.Dataset]) -> None:
    _, ds = source
    store, layout = dm.store, dm.layout
    for g in dm.grid_names:
        got = store.grids[g]  # (T, P, p*p)
        assert got.shape == (182, 94, 100) and got.dtype == np.float32
        want = layout.extract(ds[g].values)  # NaN off land
        assert np.array_equal(got, want, equal_nan=True)
        land = layout.pixel_land
        assert np.isnan(got[:, ~land]).all()
    assert np.array_equal(store.series["riverflow"], ds.riverflow.values.T, equal_nan=True)
    assert np.array_equal(store.static, ds.static.values)
    assert dm.static_names == list(ds.attribute.values) and dm.n_static == 8


def test_stats_from_training_period_land_only(dm: HydroDataModule,
                                              source: tuple[Path, xr.Dataset]) -> None:
    _, ds = source
    train = slice(0, 121)  # 2000-01-01 … 2000-04-30
    p = dm.layout.extract(ds.precipitation.values[train])[:, dm.pixel_land]
    assert dm.stats["precipitation"]["mean"] == pytest.approx(np.nanmean(p), rel=1e-5)
    assert dm.stats["precipitation"]["std"] == pytest.approx(np.nanstd(p), rel=1e-4)
    q = np.log1p(ds.riverflow.values[train])
    assert dm.stats["riverflow"]["log"] and not dm.stats["evaporation"]["log"]
    assert dm.stats["riverflow"]["mean"] == pytest.approx(np.nanmean(q), rel=1e-5)
    x = torch.tensor([0.3])
    phys = denormalise(x, dm.stats["riverflow"])
    st = dm.stats["riverflow"]
    assert phys.item() == pytest.approx(np.expm1(0.3 * st["std"] + st["mean"]), rel=1e-5)


def test_windows_never_straddle_splits_or_series_start(dm: HydroDataModule) -> None:
    t, store = dm.seq_len, dm.store
    spans = {}
    for split, (lo, hi) in dm.splits.items():
        win = dm.windows(split)
        a, b = store.day_index(lo), store.day_index(hi)
        assert (win[:, 1] >= a).all() and (win[:, 1] + t - 1 <= b).all()
        spans[split] = set(map(tuple, win))
        assert (win[win[:, 0] == 0, 1] >= SERIES_START).all()
        assert set(win[:, 0]) == set(range(5))
    assert dm.windows("train")[dm.windows("train")[:, 0] == 0, 1].min() == SERIES_START
    assert dm.windows("train")[dm.windows("train")[:, 0] == 1, 1].min() == 0
    assert not spans["train"] & spans["val"]


def _batch_covering(dm: HydroDataModule, split: str, catchment: int, day: int) -> dict:
    ds = dm.datasets[split]
    idx = [i for i, (c, s) in enumerate(ds.windows) if c == catchment and s <= day < s + dm.seq_len]
    return dm.collate()([ds[i] for i in idx[:2]])


def test_nan_days_flagged_not_zeroed(dm: HydroDataModule) -> None:
    b = _batch_covering(dm, "train", 2, NAN_DAY)
    k = NAN_DAY - b["start"][0].item()
    x, valid = b["grids"]["precipitation"], b["grid_valid"]["precipitation"]
    assert torch.isnan(x[0, k]).all() and not valid[0, k].any()
    assert valid[0, k - 1][torch.as_tensor(dm.pixel_land)].all()
    assert torch.equal(valid, ~torch.isnan(x))
    b = _batch_covering(dm, "train", 1, GAP.start)
    k0 = GAP.start - b["start"][0].item()
    q, qv = b["series"]["riverflow"][0], b["series_valid"]["riverflow"][0]
    gap_days = torch.arange(dm.seq_len)
    in_gap = (gap_days >= k0) & (gap_days < k0 + GAP.stop - GAP.start)
    assert torch.isnan(q[in_gap]).all() and not qv[in_gap].any() and qv[~in_gap].all()


def test_batch_keys_and_shapes(dm: HydroDataModule) -> None:
    b = next(iter(dm.train_dataloader()))
    B, T, P = 4, 20, 94
    for g in dm.grid_names:
        assert b["grids"][g].shape == (B, T, P, 100) and b["grids"][g].dtype == torch.float32
        assert b["grid_valid"][g].shape == (B, T, P, 100) and b["grid_valid"][g].dtype == torch.bool
        assert b["present"][g].all()
    for s in dm.series_names:
        assert b["series"][s].shape == (B, T)
    assert "grid_mask" not in b and "series_mask" not in b  # the model draws its masks
    assert b["static"].shape == (B, 8) and b["static_valid"].all()
    assert b["catchment"].shape == (B,) and b["start"].dtype == torch.int64
    day0 = (np.datetime64("2000-01-01") - np.datetime64("1970-01-01")).astype(int)
    assert torch.equal(b["time"], day0 + b["start"][:, None] + torch.arange(T))
    assert (dm.patch_grid_shape, dm.n_patches, dm.n_valid_patches) == ((29, 18), 522, 94)
    assert np.array_equal(dm.valid_patch_idx, dm.valid_patch_rows * 18 + dm.valid_patch_cols)


def _masked(dm: HydroDataModule, batch: dict, stream: int, cfg: MaskingConfig | None = None) -> dict:
    """`batch` with MM-MAE's masks of `stream` (as MMMAEModule draws them, seed 0)."""
    return with_masks(batch, cfg or MaskingConfig(), 0, stream, dm.n_valid_patches,
                      dm.grid_names, dm.series_names)


def _masks_by_window(dm: HydroDataModule, loader, stream: int) -> dict[tuple[int, int], torch.Tensor]:
    out = {}
    for b in loader:
        m = _masked(dm, b, stream)
        for i, (c, s) in enumerate(zip(b["catchment"].tolist(), b["start"].tolist(),
                                       strict=True)):
            out[(c, s)] = torch.cat([m["grid_mask"]["precipitation"][i].flatten(),
                                     m["series_mask"]["riverflow"][i]])
    return out


def _windows(loader) -> list[tuple[int, int]]:
    """(catchment, start) of every window a loader yields, in order."""
    return [(int(c), int(s)) for b in loader for c, s in zip(b["catchment"], b["start"], strict=True)]


def test_training_windows_are_sharded_over_ranks(dm: HydroDataModule, monkeypatch) -> None:
    """Under DDP each rank trains on its own share of one seeded epoch order (every window once
    over the ranks, as one process); validation and test give every rank every window."""
    import maelab.data.samplers as samplers

    def loaders(rank: int, world: int, epoch: int) -> tuple[list, list]:
        monkeypatch.setattr(samplers, "_rank_and_world", lambda: (rank, world))
        train = dm.train_dataloader()
        train.sampler.set_epoch(epoch)
        return _windows(train), _windows(dm.val_dataloader())

    one, val = loaders(0, 1, epoch=0)
    (r0, v0), (r1, v1) = loaders(0, 2, epoch=0), loaders(1, 2, epoch=0)
    n = len(one)
    assert n == len(dm.datasets["train"]) and len(set(one)) == n
    assert r0 == one[0::2] and r1 == (one + one[:1])[1::2][: len(r0)]  # odd n: one copy pads
    assert set(r0) | set(r1) == set(one) and len(r0) + len(r1) - n <= 1
    assert v0 == v1 == val and len(val) == len(dm.datasets["val"])
    assert loaders(0, 1, epoch=1)[0] != one and loaders(0, 1, epoch=0)[0] == one  # seed + epoch


def test_preparation_shows_its_progress(source: tuple[Path, xr.Dataset], tmp_path: Path,
                                        monkeypatch) -> None:
    import maelab.data.hydro.store as store

    tasks: list[tuple[str, float | None]] = []

    class Recorded(store.Progress):
        def add_task(self, description: str, *args: Any, **kwargs: Any) -> Any:
            tasks.append((description, kwargs.get("total")))
            return super().add_task(description, *args, **kwargs)

    monkeypatch.setattr(store, "Progress", Recorded)
    HydroDataModule(**_kw(source[0], tmp_path / "cache")).prepare_data()
    assert tasks[0][0].startswith("hydro data ") and tasks[0][0].endswith(": opening")
    assert [d for d, _ in tasks[1:]] == [f"hydro store: {g}" for g in GRID_NAMES]
    assert all(total and total >= 1 for _, total in tasks[1:])


def test_masks_on_data_batches(dm: HydroDataModule) -> None:
    b = _masked(dm, next(iter(dm.train_dataloader())), stream=0)
    for g in dm.grid_names:
        assert b["grid_mask"][g].shape == (4, 20, 94) and (b["grid_mask"][g].sum(-1) == 70).all()
    assert torch.equal(b["grid_mask"]["precipitation"], b["grid_mask"]["temperature"])
    for s in dm.series_names:
        assert (b["series_mask"][s].sum(-1) == round(0.75 * 20)).all()


def test_eval_masks_fixed_across_epochs_and_batch_sizes(dm: HydroDataModule,
                                                        source: tuple[Path, xr.Dataset]) -> None:
    first = _masks_by_window(dm, dm.val_dataloader(), -1)
    second = _masks_by_window(dm, dm.val_dataloader(), -1)
    assert first.keys() == second.keys() and len(first) > 1
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = HydroDataModule(**_kw(source[0], dm.cache_dir, batch_size=3))
    third = _masks_by_window(other, other.val_dataloader(), -1)
    assert all(torch.equal(first[k], third[k]) for k in first)
    batch = dm.collate()([dm.datasets["train"][i] for i in range(4)])
    e0, e1 = _masked(dm, batch, 0), _masked(dm, batch, 1)  # training: fresh every epoch
    assert not torch.equal(e0["grid_mask"]["precipitation"], e1["grid_mask"]["precipitation"])


def test_masking_disabled_and_independent(dm: HydroDataModule) -> None:
    b = next(iter(dm.val_dataloader()))
    off = _masked(dm, b, -1, MaskingConfig(enabled=False))
    assert not any(m.any() for m in off["grid_mask"].values())
    assert not any(m.any() for m in off["series_mask"].values())
    ind = _masked(dm, b, 0, MaskingConfig(strategy="independent", series="independent", ratio=0.5))
    assert not torch.equal(ind["grid_mask"]["precipitation"], ind["grid_mask"]["soil_moisture"])
    assert not torch.equal(ind["series_mask"]["riverflow"], ind["series_mask"]["evaporation"])
    assert (ind["grid_mask"]["soil_moisture"].sum(-1) == 47).all()


def test_store_cached_and_reused(source: tuple[Path, xr.Dataset], dm: HydroDataModule,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("source reopened although the store is cached")

    monkeypatch.setattr(assemble, "open_source", fail)
    again = HydroDataModule(**_kw(source[0], dm.cache_dir, seq_len=10))
    again.prepare_data()
    assert again.store.path == dm.store.path


def test_missing_root_names_data_root(tmp_path: Path) -> None:
    m = HydroDataModule(**_kw(tmp_path / "nowhere", tmp_path / "c"))
    with pytest.raises(ConfigError, match=r"data\.root.*nowhere"):
        m.prepare_data()


def test_absent_modality_and_zarr_source(source: tuple[Path, xr.Dataset], tmp_path: Path) -> None:
    _, ds = source
    zpath = write_dataset(ds.isel(time=slice(0, 182)), tmp_path / "hydro.zarr")
    m = HydroDataModule(**_kw(zpath, tmp_path / "cache", source="zarr", grids={
        "precipitation": "precipitation", "soil_moisture": None, "temperature": "temperature"},
        series={"evaporation": None, "riverflow": "riverflow"}))
    b = next(iter(m.train_dataloader()))
    assert m.present == {"precipitation": True, "soil_moisture": False, "temperature": True,
                         "evaporation": False, "riverflow": True}
    assert b["grids"]["soil_moisture"].shape == (4, 20, 94, 100)
    assert torch.isnan(b["grids"]["soil_moisture"]).all()
    assert not b["grid_valid"]["soil_moisture"].any() and not b["present"]["soil_moisture"].any()
    assert not b["series_valid"]["evaporation"].any() and b["present"]["riverflow"].all()
    assert "soil_moisture" not in m.stats
    assert np.array_equal(m.store.grids["temperature"],
                          m.layout.extract(ds.temperature.values), equal_nan=True)


# -- bad input: clear errors naming the key or file, before any long work ----------------------

def _no_store(cache: Path) -> bool:
    return not cache.exists() or not any(p.name[0] != "." for p in cache.iterdir())


def test_wrong_grid_shape(tmp_path: Path) -> None:
    bad = xr.Dataset({"precipitation": (("time", "y", "x"), np.zeros((3, 100, 100), np.float32))},
                     coords={"time": np.arange("2000-01-01", "2000-01-04", dtype="datetime64[D]")})
    bad.to_netcdf(tmp_path / "bad.nc")
    m = HydroDataModule(**_kw(tmp_path / "bad.nc", tmp_path / "c",
                              grids={"precipitation": "precipitation"}, series={}, static=None,
                              log_series=[]))
    with pytest.raises(DataError, match=r"bad\.nc.*precipitation.*\(290, 180\)"):
        m.prepare_data()
    assert _no_store(tmp_path / "c")


def test_missing_variable_lists_present_ones(source: tuple[Path, xr.Dataset],
                                             tmp_path: Path) -> None:
    m = HydroDataModule(**_kw(source[0], tmp_path / "c", grids={"precipitation": "rain"}))
    with pytest.raises(ConfigError, match=r"data\.grids\.precipitation.*soil_moisture"):
        m.prepare_data()
    assert _no_store(tmp_path / "c")


def test_synthetic_missing_variable_raises_before_generating(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.series\.riverflow.*evaporation"):
        HydroDataModule(cache_dir=str(tmp_path), series={"riverflow": "flow"})


def test_land_mask_shape_mismatch(source: tuple[Path, xr.Dataset], tmp_path: Path) -> None:
    np.save(tmp_path / "mask.npy", np.ones((145, 90), dtype=bool))
    with pytest.raises(ConfigError, match=r"data\.land_mask.*\(290, 180\)"):
        HydroDataModule(**_kw(source[0], tmp_path / "c", land_mask=str(tmp_path / "mask.npy")))


def test_patch_size_not_dividing_grid(source: tuple[Path, xr.Dataset], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.patch_size.*1, 2, 5, 10"):
        HydroDataModule(**_kw(source[0], tmp_path / "c", patch_size=4))


def test_date_range_outside_data(source: tuple[Path, xr.Dataset], tmp_path: Path) -> None:
    splits = {**SPLITS, "test": {"start": "2000-06-01", "end": "2000-07-31"}}
    m = HydroDataModule(**_kw(source[0], tmp_path / "c", splits=splits))
    with pytest.raises(ConfigError, match=r"data\.splits\.test\.end.*2000-06-30"):
        m.prepare_data()
    assert _no_store(tmp_path / "c")
    with pytest.raises(ConfigError, match=r"data\.splits\.val\.end"):  # synthetic: at once
        HydroDataModule(cache_dir=str(tmp_path / "c"), synthetic={
            "start": "2000-01-01", "end": "2000-12-31"}, splits={
            "train": {"start": "2000-01-01", "end": "2000-06-30"},
            "val": {"start": "2000-07-01", "end": "2001-01-31"},
            "test": {"start": "2001-02-01", "end": "2001-05-31"}})


def test_seq_len_longer_than_a_split(source: tuple[Path, xr.Dataset], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.seq_len.*30 days.*test"):
        HydroDataModule(**_kw(source[0], tmp_path / "c", seq_len=40))


@pytest.mark.parametrize(("over", "key"), [
    ({"source": "hdf"}, "data.source"),
    ({"splits": {**SPLITS, "val": {"start": "2000-04-20", "end": "2000-05-31"}}},
     "data.splits.val.start"),
    ({"log_series": ["flow"]}, "data.log_series"),
])
def test_other_bad_settings_name_the_key(source: tuple[Path, xr.Dataset], tmp_path: Path,
                                         over: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        HydroDataModule(**_kw(source[0], tmp_path / "c", **over)).prepare_data()


def test_catchment_locations_match_the_catchment_map(source: tuple[Path, xr.Dataset],
                                                     dm: HydroDataModule, tmp_path: Path) -> None:
    """`data.location` (centroid lat/lon) lands on the centroid of each catchment's cells."""
    _, ds = source
    assert np.isnan(dm.catchment_locations).all()  # no data.location: unknown
    located = HydroDataModule(**_kw(source[0], dm.cache_dir,
                                    location=["centroid_lat", "centroid_lon"]))
    loc = located.catchment_locations  # (C, 2) patch units
    labels = ds.catchment_map.values  # (H, W) catchment index, -1 outside
    for c in range(loc.shape[0]):
        iy, ix = np.nonzero(labels == c)
        want = (np.array([iy.mean(), ix.mean()]) - 4.5) / 10  # cell centroid in patch units
        np.testing.assert_allclose(loc[c], want, atol=0.15)  # within ~1.5 cells
    batch = next(iter(located.train_dataloader()))
    np.testing.assert_array_equal(batch["location"].numpy(), loc[batch["catchment"].numpy()])
    for bad, text in ((["centroid_lat"], "latitude, longitude"),
                      (["lat", "lon"], "centroid_lat")):
        with pytest.raises(ConfigError, match="data.location") as err:
            _ = HydroDataModule(**_kw(source[0], dm.cache_dir, location=bad)).catchment_locations
        assert text in str(err.value)
    fresh = tmp_path / "fresh"  # a cache miss: the names are checked before preparing
    with pytest.raises(ConfigError, match="data.location"):
        HydroDataModule(**_kw(source[0], fresh, location=["lat", "lon"])).prepare_data()
    assert not list(fresh.rglob("meta.json"))
    with pytest.raises(ConfigError, match="centroid_lat"):  # synthetic: at construction
        HydroDataModule(source="synthetic", cache_dir=str(fresh), location=["lat", "lon"])


def test_a_registered_source_is_usable_by_name(source: tuple[Path, xr.Dataset], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A new kind of source is one `HydroSource` subclass registered under its `kind`."""
    _, ds = source
    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))  # unregistered afterwards

    @sources.register
    class InMemory(sources.HydroSource):
        kind = "in_memory"
        needs_root = False

        def files(self) -> list[Path]:
            return []

        def fingerprint(self) -> str:
            return "in-memory-v1"

        def open(self, land_mask: np.ndarray | None) -> xr.Dataset:
            return ds

    with pytest.raises(ConfigError, match=r"data\.source.*'in_memory'"):
        HydroDataModule(**_kw(tmp_path, tmp_path / "c", source="hdf"))
    m = HydroDataModule(**_kw(tmp_path, tmp_path / "c", source="in_memory"))
    assert isinstance(m.source, InMemory)
    b = next(iter(m.val_dataloader()))
    assert b["grids"]["precipitation"].shape == (4, 20, 94, 100) and b["present"]["riverflow"].all()
