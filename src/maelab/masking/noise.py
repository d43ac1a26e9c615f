"""The one masking noise: seeded, keyed per sample, shared by every model.

Every random mask (SD-MAE's four strategies, MM-MAE's grid and series masks, MM-MAE's whole-series
hiding) draws from `KeyedNoise(seed, *keys)`: uniform values that depend only on the seed, the
sample's integer keys, the draw number and the position in the drawn shape. The models key a
sample by (stream, where, start): stream = the epoch for training masks (fresh every epoch), -1
for the fixed validation/test masks; where = the series or catchment; start = its first step.
A sample's mask is therefore the same whatever batch, rank or resumed process draws it.
"""

from __future__ import annotations

import math

import torch

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding values in [0, 2³²)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def hashed_noise(seed: int, *keys: torch.Tensor | int) -> torch.Tensor:
    """int64 hash of broadcast integer keys: deterministic per key tuple, uniform in [0, 2³²)."""
    h = torch.tensor(int(seed) & _M32, dtype=torch.int64)
    for k in keys:
        k = torch.as_tensor(k, dtype=torch.int64)
        h = _mix32((h * 0x9E3779B1 + (k & _M32) + 0x632BE5AB) & _M32)
    return h


class KeyedNoise:
    """Uniform noise that depends only on (seed, per-sample keys, draw number, position).

    `keys` are (B,) integer tensors on the batch's device; every draw is (B, ...) on that device.
    """

    def __init__(self, seed: int, *keys: torch.Tensor) -> None:
        if not keys:
            raise ValueError("KeyedNoise needs at least one (B,) key tensor")
        self.seed, self.keys, self.draws = seed, keys, 0

    @property
    def batch_size(self) -> int:
        return int(self.keys[0].shape[0])

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    def uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, ...) float32 noise in [0, 1) for the next draw; shape[0] is the batch."""
        self.draws += 1
        lead = [k.reshape(-1, *[1] * (len(shape) - 1)) for k in self.keys]
        pos = torch.arange(math.prod(shape[1:]), device=self.device).reshape(1, *shape[1:])
        h = hashed_noise(self.seed, *lead, self.draws, pos)  # (B, ...)
        return (h.double() / 2**32).float()


def random_subset_mask(noise: KeyedNoise, batch_shape: tuple[int, ...], units: int,
                       n_hidden: int) -> torch.Tensor:
    """Bool mask (*batch_shape, units) with exactly `n_hidden` True per row (argsort of noise);
    batch_shape[0] is the batch."""
    u = noise.uniform((*batch_shape, units))
    ranks = u.argsort(dim=-1).argsort(dim=-1)  # (*batch_shape, units) rank of each unit
    return ranks < n_hidden
