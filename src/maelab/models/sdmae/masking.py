"""SD-MAE masking strategies for (B, T, F) windows. True = hidden from the encoder.

Units per strategy (each hides exactly round(ratio × units) per sample; `patch_feature` hides
single-feature blocks on top, so its hidden share is above the ratio):
    patch         (B, T/p)   non-overlapping patches of p steps × all features
    token         (B, T)     single steps, scattered
    temporal      (B, T)     steps in a few contiguous spans, not aligned to any patch grid
    feature_wise  (B, T, F)  (step, feature) cells; each feature at its own random steps
    patch_feature (B, T/p, F) blocks of p steps × one feature: whole patches hidden as in `patch`,
                             and in each visible patch one random feature's block with
                             probability `feature_share` (so a feature can be scored from the
                             others at the same steps: `scoring.inference=last_n_by_feature`)

Random masks draw from the shared keyed noise (`maelab.masking.noise.KeyedNoise`, one key set
per sample); the batch size and device come from it. Settings are checked by the config
(`maelab.models.sdmae.config`) before any work.
"""

from __future__ import annotations

import torch

from maelab.masking.count import hidden_count
from maelab.masking.noise import KeyedNoise, random_subset_mask


def patch_mask(noise: KeyedNoise, seq_length: int, patch_size: int, ratio: float) -> torch.Tensor:
    """(B, T/p): round(ratio × T/p) whole patches hidden per sample."""
    units = seq_length // patch_size
    return random_subset_mask(noise, (noise.batch_size,), units, hidden_count(ratio, units))


def token_mask(noise: KeyedNoise, seq_length: int, ratio: float) -> torch.Tensor:
    """(B, T): round(ratio × T) single steps hidden per sample, anywhere."""
    return random_subset_mask(noise, (noise.batch_size,), seq_length,
                              hidden_count(ratio, seq_length))


def _random_composition(noise: KeyedNoise, total: int, parts: int) -> torch.Tensor:
    """(B, parts) non-negative integers summing to `total`, uniform (stars and bars)."""
    batch, device = noise.batch_size, noise.device
    if parts == 1:
        return torch.full((batch, 1), total, dtype=torch.long, device=device)
    bars = random_subset_mask(noise, (batch,), total + parts - 1, parts - 1)
    pos = bars.long().argsort(dim=1, descending=True, stable=True)[:, : parts - 1].sort(1).values
    edges = torch.cat([torch.full((batch, 1), -1, device=device), pos,
                       torch.full((batch, 1), total + parts - 1, device=device)], dim=1)
    return edges.diff(dim=1) - 1  # (B, parts)


def temporal_mask(noise: KeyedNoise, seq_length: int, ratio: float, num_spans: int = 3) -> torch.Tensor:
    """(B, T): round(ratio × T) steps hidden as `num_spans` contiguous spans at random offsets.

    Span lengths and the gaps between spans are random compositions, so spans start anywhere.
    """
    batch = noise.batch_size
    k = hidden_count(ratio, seq_length)
    spans = max(1, min(int(num_spans), k, seq_length - k + 1))
    span_len = _random_composition(noise, k - spans, spans) + 1  # (B, S) ≥ 1
    gaps = _random_composition(noise, seq_length - k - (spans - 1), spans + 1)
    gaps[:, 1:-1] += 1  # inner gaps ≥ 1 so spans stay separate
    # segments alternate gap, span, gap, ..., span, gap; ends[i] = exclusive end of segment i
    seg = torch.stack([gaps[:, :-1], span_len], dim=2).reshape(batch, -1)  # (B, 2S)
    ends = torch.cat([seg, gaps[:, -1:]], dim=1).cumsum(dim=1)  # (B, 2S+1)
    steps = torch.arange(seq_length, device=noise.device).expand(batch, -1).contiguous()
    segment = torch.searchsorted(ends, steps, right=True)  # (B, T) segment index of each step
    return segment % 2 == 1


def feature_wise_mask(noise: KeyedNoise, seq_length: int, num_features: int, ratio: float) -> torch.Tensor:
    """(B, T, F): round(ratio × T·F) cells hidden, spread evenly over features, random steps each."""
    total = hidden_count(ratio, seq_length * num_features)
    per_feature = torch.full((num_features,), total // num_features, device=noise.device)
    per_feature[: total % num_features] += 1  # (F,)
    u = noise.uniform((noise.batch_size, num_features, seq_length))
    ranks = u.argsort(dim=-1).argsort(dim=-1)  # (B, F, T)
    return (ranks < per_feature[None, :, None]).transpose(1, 2)  # (B, T, F)


def patch_feature_mask(noise: KeyedNoise, seq_length: int, num_features: int, patch_size: int,
                       ratio: float, feature_share: float) -> torch.Tensor:
    """(B, T/p, F): round(ratio × T/p) whole patches hidden, and in each other patch the block of
    one random feature with probability `feature_share`."""
    whole = patch_mask(noise, seq_length, patch_size, ratio)  # (B, N)
    shape = tuple(whole.shape)
    feature = (noise.uniform(shape) * num_features).long().clamp_max(num_features - 1)  # (B, N)
    partial = (noise.uniform(shape) < feature_share) & ~whole  # (B, N)
    one = torch.arange(num_features, device=whole.device) == feature[..., None]  # (B, N, F)
    return whole[..., None] | (one & partial[..., None])


def random_mask(
    noise: KeyedNoise, strategy: str, seq_length: int, num_features: int, ratio: float,
    patch_size: int = 1, num_spans: int = 3, feature_share: float = 0.5,
) -> torch.Tensor:
    """The training mask of `strategy`, at its own unit granularity (see module docstring)."""
    if strategy == "patch":
        return patch_mask(noise, seq_length, patch_size, ratio)
    if strategy == "patch_feature":
        return patch_feature_mask(noise, seq_length, num_features, patch_size, ratio, feature_share)
    if strategy == "token":
        return token_mask(noise, seq_length, ratio)
    if strategy == "temporal":
        return temporal_mask(noise, seq_length, ratio, num_spans)
    return feature_wise_mask(noise, seq_length, num_features, ratio)


def _from_steps(hidden_steps: torch.Tensor, strategy: str, num_features: int,
                patch_size: int) -> torch.Tensor:
    """(..., T) bool hidden steps -> the mask in `strategy`'s unit granularity (whole patches in
    patch masking, where the hidden steps cover whole patches; all features in feature_wise)."""
    if strategy == "patch":
        return hidden_steps[..., ::patch_size]  # (..., T/p)
    if strategy == "patch_feature":
        patches = hidden_steps[..., ::patch_size]  # (..., T/p)
        return patches[..., None].expand(*patches.shape, num_features).clone()
    if strategy == "feature_wise":
        return hidden_steps[..., None].expand(*hidden_steps.shape, num_features).clone()
    return hidden_steps


def last_steps_mask(
    strategy: str, batch: int, seq_length: int, num_features: int, n: int, patch_size: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The inference mask: the last `n` steps hidden, in `strategy`'s unit granularity (in patch
    masking `n` is a multiple of `patch_size`, see the config)."""
    steps = torch.zeros(batch, seq_length, dtype=torch.bool, device=device)
    steps[:, seq_length - n:] = True
    return _from_steps(steps, strategy, num_features, patch_size)


def last_steps_by_feature_masks(
    strategy: str, batch: int, seq_length: int, num_features: int, n: int, patch_size: int = 1,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """`last_n_by_feature` inference masks, (F, B, units…) for the cell-level strategies
    (`feature_wise`, `patch_feature`): pass f hides the last `n` steps of feature f only, the
    other features stay visible."""
    last = last_steps_mask(strategy, batch, seq_length, num_features, n, patch_size, device)
    only = torch.eye(num_features, dtype=torch.bool, device=device)  # (F, F)
    return last[None] & only.view(num_features, *[1] * (last.dim() - 1), num_features)


def block_masks(
    strategy: str, batch: int, seq_length: int, num_features: int, n: int, passes: int,
    patch_size: int = 1, device: torch.device | str | None = None,
) -> torch.Tensor:
    """`all_positions` inference masks, (passes, B, units…): the window is cut into blocks of `n`
    steps and block b is hidden in pass b mod `passes`, so every step is hidden exactly once
    (`passes` divides the number of blocks, so every pass hides as many blocks)."""
    block = torch.arange(seq_length, device=device) // n  # (T,)
    steps = block[None, :] % passes == torch.arange(passes, device=device)[:, None]  # (P, T)
    steps = steps[:, None, :].expand(passes, batch, seq_length)
    return _from_steps(steps, strategy, num_features, patch_size)


def cell_mask(mask: torch.Tensor, strategy: str, patch_size: int, num_features: int) -> torch.Tensor:
    """Expand a strategy-level mask to the hidden values (B, T, F)."""
    if strategy == "feature_wise":
        return mask
    if strategy == "patch_feature":
        return mask.repeat_interleave(patch_size, dim=1)  # (B, T, F)
    if strategy == "patch":
        mask = mask.repeat_interleave(patch_size, dim=1)  # (B, T)
    return mask[:, :, None].expand(*mask.shape, num_features)
