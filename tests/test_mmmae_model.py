"""MM-MAE model: only visible tokens reach the encoder, absent modalities, token layout."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from maelab.masking.noise import KeyedNoise
from maelab.models.mmmae.config import MaskingConfig
from maelab.models.mmmae.masking import grid_masks, series_masks
from maelab.models.mmmae.model import MMMAE
from maelab.nn.posemb import sincos_2d

GRIDS = ("precipitation", "soil_moisture", "temperature")
SERIES = ("evaporation", "riverflow")
B, T, P, PP, A = 3, 12, 6, 4, 5
ROWS, COLS = [0, 0, 1, 2, 3, 3], [0, 1, 1, 2, 0, 3]  # valid patches on a 4 × 4 patch grid


def make_batch(strategy: str = "unified", ratio: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """A random batch in the HydroDataModule format (one ocean cell per patch, one NaN day)."""
    g = torch.Generator().manual_seed(seed)
    cfg = MaskingConfig(strategy=strategy, ratio=ratio,
                        series="shared" if strategy == "unified" else "independent")
    catchment, start = torch.arange(B), torch.zeros(B, dtype=torch.int64)
    noise = KeyedNoise(seed, torch.full((B,), -1), catchment, start)
    grids = {n: torch.randn(B, T, P, PP, generator=g) for n in GRIDS}
    for x in grids.values():
        x[..., 0] = float("nan")  # an ocean cell in every patch
    grids["precipitation"][:, 4] = float("nan")  # a missing day
    series = {n: torch.randn(B, T, generator=g) for n in SERIES}
    series["riverflow"][:, 3] = float("nan")  # a gap
    return {
        "grids": grids, "grid_valid": {n: x.isfinite() for n, x in grids.items()},
        "series": series, "series_valid": {n: x.isfinite() for n, x in series.items()},
        "static": torch.randn(B, A, generator=g), "static_valid": torch.ones(B, A, dtype=torch.bool),
        "present": {n: torch.ones(B, dtype=torch.bool) for n in (*GRIDS, *SERIES)},
        "catchment": catchment, "start": start,
        "time": 10_957 + torch.arange(T).expand(B, T),  # 2000-01-01 …
        "grid_mask": grid_masks(noise, cfg, T, P, GRIDS),
        "series_mask": series_masks(noise, cfg, T, SERIES),
    }


def make_model(temporal_patch: int = 1, **kw: Any) -> MMMAE:
    torch.manual_seed(0)
    return MMMAE(GRIDS, SERIES, T, 2, ROWS, COLS, (4, 4), n_static=A,
                 temporal_patch=temporal_patch, d_model=16, depth=1, heads=2, decoder_dim=8,
                 decoder_depth=1, decoder_heads=2, **kw).eval()


@pytest.mark.parametrize("temporal_patch", [1, 3])
@pytest.mark.parametrize("strategy", ["unified", "independent"])
def test_only_visible_tokens_reach_the_encoder(temporal_patch: int, strategy: str) -> None:
    model, batch = make_model(temporal_patch), make_batch(strategy)
    seen = []
    model.encoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    out = model(batch)
    g = T // temporal_patch
    hidden_grid = sum(int(model.grid_token_mask(batch["grid_mask"][n])[0].sum()) for n in GRIDS)
    hidden_series = sum(int(batch["series_mask"][n][0].sum()) for n in SERIES)
    n_all = 1 + len(GRIDS) * g * P + len(SERIES) * T
    assert hidden_grid == len(GRIDS) * g * round(0.5 * P) and hidden_series == len(SERIES) * T // 2
    assert seen == [torch.Size([B, n_all - hidden_grid - hidden_series, 16])]
    for n in GRIDS:
        assert out["grids"][n].shape == (B, T, P, PP)
        assert torch.equal(out["grid_hidden"][n][:, ::temporal_patch],
                           batch["grid_mask"][n][:, ::temporal_patch])
    assert all(out["series"][n].shape == (B, T) for n in SERIES)


@pytest.mark.parametrize("temporal_patch", [1, 4])
def test_hidden_values_cannot_change_the_encoder_output(temporal_patch: int) -> None:
    model, batch = make_model(temporal_patch), make_batch()
    ref = model.encode(batch)["latent"]
    changed = make_batch(seed=1)  # other values everywhere, same masks and validity
    for key in ("grid_mask", "series_mask", "present", "static", "static_valid"):
        changed[key] = batch[key]
    for n in GRIDS:
        hid = model.expand_tokens(model.grid_token_mask(batch["grid_mask"][n]))[..., None]
        changed["grids"][n] = torch.where(hid, 1e3 * changed["grids"][n], batch["grids"][n])
        changed["grid_valid"][n] = torch.where(hid, changed["grid_valid"][n], batch["grid_valid"][n])
    for n in SERIES:
        hid = batch["series_mask"][n]
        changed["series"][n] = torch.where(hid, 1e3 + changed["series"][n], batch["series"][n])
        changed["series_valid"][n] = torch.where(hid, changed["series_valid"][n],
                                                 batch["series_valid"][n])
    torch.testing.assert_close(model.encode(changed)["latent"], ref, rtol=0, atol=0)
    full, full_ref = model(changed), model(batch)  # nor the reconstructions (series skip included)
    for part in ("grids", "series"):
        for n, x in full_ref[part].items():
            torch.testing.assert_close(full[part][n], x, rtol=0, atol=0)
    visible = make_batch(seed=1)  # a visible value changes it
    for key in ("grid_mask", "series_mask"):
        visible[key] = batch[key]
    assert not torch.allclose(model.encode(visible)["latent"], ref)


def test_nan_inputs_give_finite_outputs_and_gradients() -> None:
    model, batch = make_model(3).train(), make_batch()
    out = model(batch)
    total = sum(v.sum() for part in ("grids", "series") for v in out[part].values())
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_modality_absent_everywhere_has_no_tokens() -> None:
    model, batch = make_model(), make_batch()
    for n in ("soil_moisture", "evaporation"):
        batch["present"][n] = torch.zeros(B, dtype=torch.bool)
        full = torch.full((), float("nan"))
        if n in GRIDS:
            batch["grids"][n] = full.expand(B, T, P, PP)
            batch["grid_valid"][n] = torch.zeros((), dtype=torch.bool).expand(B, T, P, PP)
        else:
            batch["series"][n] = full.expand(B, T)
            batch["series_valid"][n] = torch.zeros((), dtype=torch.bool).expand(B, T)
    out = model(batch)
    assert set(out["grids"]) == {"precipitation", "temperature"}
    assert set(out["series"]) == {"riverflow"}
    emb = model.embed(batch, visible_only=False)
    assert emb["tokens"].shape[1] == 1 + 2 * T * P + T
    assert all(torch.isfinite(v).all() for v in out["grids"].values())


def test_modality_absent_in_some_samples_uses_the_absent_embedding() -> None:
    model, batch = make_model(), make_batch()
    batch["present"]["riverflow"] = torch.tensor([True, False, True])
    batch["series"]["riverflow"][1] = float("nan")
    batch["series_valid"]["riverflow"][1] = False
    out = model(batch)
    assert out["series"]["riverflow"].shape == (B, T)
    emb = model.embed(batch, visible_only=False)
    start = 1 + len(GRIDS) * T * P + T  # the riverflow tokens
    rf = emb["tokens"][:, start:]
    pos = model._pos("enc", list(GRIDS), list(SERIES))[start:]
    torch.testing.assert_close(rf[1], (model.absent + pos).detach())
    assert not torch.allclose(rf[0], rf[1])


def test_unequal_hidden_counts_raise() -> None:
    model, batch = make_model(), make_batch()
    batch["series_mask"] = {n: m.clone() for n, m in batch["series_mask"].items()}
    batch["series_mask"]["riverflow"][0, :] = True
    with pytest.raises(ValueError, match="same number of tokens"):
        model(batch)


def test_nothing_hidden_encodes_every_token() -> None:
    model, batch = make_model(2), make_batch()
    batch["grid_mask"] = {n: torch.zeros(B, T, P, dtype=torch.bool) for n in GRIDS}
    batch["series_mask"] = {n: torch.zeros(B, T, dtype=torch.bool) for n in SERIES}
    enc = model.encode(batch)
    assert enc["latent"].shape[1] == enc["n_tokens"] == 1 + len(GRIDS) * (T // 2) * P + 2 * T


def test_series_skip_starts_at_the_interpolation_of_visible_days() -> None:
    batch = make_batch()
    out = make_model()(batch)
    x, mask = batch["series"]["riverflow"], batch["series_mask"]["riverflow"]
    known = ~mask & batch["series_valid"]["riverflow"]
    torch.testing.assert_close(out["series"]["riverflow"][known], x[known])  # zero-init head
    plain = make_model(series_skip="none")(batch)
    assert not torch.allclose(plain["series"]["riverflow"][known], x[known])
    batch["series_mask"] = {n: torch.ones_like(m) for n, m in batch["series_mask"].items()}
    assert torch.isfinite(make_model()(batch)["series"]["riverflow"]).all()  # nothing visible


def test_catchment_location_embedding() -> None:
    """Static and series tokens carry the patch-grid sin-cos of the catchment; unknown adds 0."""
    # series_skip="none": with the skip the zero-initialised series head hides any change
    model, batch = make_model(catchment_location=True, series_skip="none"), make_batch()
    batch["location"] = torch.tensor([[1.0, 1.0], [3.0, 0.0], [float("nan"), float("nan")]])
    emb = model.location_embedding(batch, 16)  # (B, 1, 16)
    grid = sincos_2d(4, 4, 16)  # the patch embedding of the 4 × 4 grid
    torch.testing.assert_close(emb[0, 0], grid[1 * 4 + 1])
    torch.testing.assert_close(emb[1, 0], grid[3 * 4 + 0])
    assert emb[2].abs().sum() == 0
    out = model(batch)
    moved = {**batch, "location": batch["location"].flip(0)}
    assert not torch.allclose(model(moved)["series"]["riverflow"][0], out["series"]["riverflow"][0])
    plain = make_model(catchment_location=False, series_skip="none")  # same weights (same seed), no location
    unknown = {**batch, "location": torch.full((B, 2), float("nan"))}
    torch.testing.assert_close(model(unknown)["series"]["riverflow"], plain(batch)["series"]["riverflow"])
    with pytest.raises(ValueError, match="location"):
        model({k: v for k, v in batch.items() if k != "location"})
