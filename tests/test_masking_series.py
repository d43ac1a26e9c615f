import pytest
import torch

from maelab.core.errors import ConfigError
from maelab.masking.noise import KeyedNoise
from maelab.models.sdmae.config import STRATEGIES
from maelab.models.sdmae.masking import (
    cell_mask,
    feature_wise_mask,
    last_steps_by_feature_masks,
    last_steps_mask,
    patch_feature_mask,
    patch_mask,
    random_mask,
    temporal_mask,
    token_mask,
)


def noise(batch: int, seed: int = 0) -> KeyedNoise:
    """Keyed noise for `batch` windows (keys 0 … batch-1)."""
    return KeyedNoise(seed, torch.arange(batch))


@pytest.mark.parametrize("ratio", [0.1, 0.4, 0.6, 0.75, 0.9])
@pytest.mark.parametrize("patch_size", [5, 10, 20])
def test_patch_exact_count_and_coherence(ratio, patch_size):
    units = 100 // patch_size
    if not 1 <= round(ratio * units) <= units - 1:  # would hide no patch, or every patch
        with pytest.raises(ConfigError, match="masking_ratio"):
            patch_mask(noise(16), 100, patch_size, ratio)
        return
    m = patch_mask(noise(16), 100, patch_size, ratio)
    assert m.shape == (16, units)
    assert (m.sum(1) == round(ratio * units)).all()
    cells = cell_mask(m, "patch", patch_size, 5)  # (B, T, F)
    blocks = cells[..., 0].reshape(16, units, patch_size)
    assert ((blocks.all(-1)) | (~blocks.any(-1))).all(), "a patch is partly hidden"
    assert cells.all(-1).eq(cells.any(-1)).all(), "patch hides all features of a step"


@pytest.mark.parametrize("ratio", [0.1, 0.4, 0.6, 0.75])
def test_token_temporal_feature_wise_exact_counts(ratio):
    assert (token_mask(noise(16), 100, ratio).sum(1) == round(ratio * 100)).all()
    assert (temporal_mask(noise(16), 100, ratio, 3).sum(1) == round(ratio * 100)).all()
    fw = feature_wise_mask(noise(16), 100, 5, ratio)
    assert fw.shape == (16, 100, 5)
    assert (fw.sum((1, 2)) == round(ratio * 500)).all()


def _runs(mask_row: torch.Tensor) -> int:
    """Number of contiguous hidden runs in a (T,) bool mask."""
    starts = mask_row.clone()
    starts[1:] &= ~mask_row[:-1]
    return int(starts.sum())


def test_temporal_is_few_contiguous_spans_not_patch_aligned():
    m = temporal_mask(noise(64, 1), 100, 0.6, 3)
    assert all(1 <= _runs(row) <= 3 for row in m)
    starts = [int(row.float().argmax()) for row in m]
    assert any(s % 10 for s in starts), "spans start only on a 10-step grid"


def test_strategies_differ_in_structure():
    token = token_mask(noise(64, 2), 100, 0.6)
    temporal = temporal_mask(noise(64, 2), 100, 0.6, 3)
    fw = feature_wise_mask(noise(64, 2), 100, 5, 0.6)
    # token masks scatter single steps: many more hidden runs than temporal spans
    assert sum(_runs(r) for r in token) > 5 * sum(_runs(r) for r in temporal)
    # feature_wise hides different steps per feature; the others hide whole steps
    assert (fw.any(-1) != fw.all(-1)).any()
    assert (fw.sum(1) == 60).all(), "each feature hides its own 60 steps"


def test_masks_are_seeded():
    for s in STRATEGIES:
        a = random_mask(noise(4, 3), s, 100, 5, 0.6, 10)
        b = random_mask(noise(4, 3), s, 100, 5, 0.6, 10)
        assert torch.equal(a, b)
        assert not torch.equal(a, random_mask(noise(4, 4), s, 100, 5, 0.6, 10))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5, 0.001, 0.999])
def test_bad_ratio_raises_naming_key(ratio):
    with pytest.raises(ConfigError, match="masking_ratio"):
        patch_mask(noise(2), 100, 10, ratio)


def test_last_steps_mask_covers_whole_patches():
    m = last_steps_mask("patch", 2, 100, 5, 20, 10)
    assert m.shape == (2, 10) and m[:, -2:].all() and not m[:, :-2].any()
    fw = last_steps_mask("feature_wise", 2, 100, 5, 10)
    assert fw[:, -10:].all() and not fw[:, :-10].any()


def test_a_sample_gets_the_same_mask_in_any_batch():
    """Keyed per sample: the mask of window k does not depend on its batch."""
    keys = torch.tensor([5, 9, 2, 7])
    for s in STRATEGIES:
        full = random_mask(KeyedNoise(0, keys), s, 100, 5, 0.6, 10)
        part = random_mask(KeyedNoise(0, keys[[3, 1]]), s, 100, 5, 0.6, 10)
        assert torch.equal(full[[3, 1]], part)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_patch_feature_hides_whole_patches_and_single_feature_blocks(share):
    m = patch_feature_mask(noise(64, 1), 100, 5, 10, 0.6, share)  # (B, 10 patches, 5 features)
    assert m.shape == (64, 10, 5)
    whole = m.all(-1)
    assert (whole.sum(1) == 6).all(), "round(0.6 × 10) whole patches per window"
    partial = m.sum(-1)[~whole]  # the other patches hide at most one feature
    assert set(partial.unique().tolist()) <= {0, 1}
    share_seen = partial.float().mean().item()
    assert {0.0: share_seen == 0, 1.0: share_seen == 1}.get(share, 0.35 < share_seen < 0.65)
    cells = cell_mask(m, "patch_feature", 10, 5)  # (B, T, F): blocks of 10 steps of a feature
    assert cells.shape == (64, 100, 5) and torch.equal(cells[:, ::10], m)


@pytest.mark.parametrize("strategy", ["feature_wise", "patch_feature"])
def test_last_steps_by_feature_hide_one_feature_of_the_last_steps_per_pass(strategy):
    masks = last_steps_by_feature_masks(strategy, 2, 100, 5, 10, 10)  # (F, B, units…)
    assert masks.shape[0] == 5
    for f, mask in enumerate(masks):
        cells = cell_mask(mask, strategy, 10, 5)  # (B, T, F)
        expected = torch.zeros(2, 100, 5, dtype=torch.bool)
        expected[:, -10:, f] = True
        assert torch.equal(cells, expected)
