"""The one random-subset primitive every masking strategy draws from."""

from __future__ import annotations

import math

import torch

from maelab.core.errors import ConfigError


def hidden_count(ratio: float, units: int, key: str = "masking_ratio") -> int:
    """round(ratio × units), checked to hide at least one and not every unit."""
    if not 0.0 < float(ratio) < 1.0:
        raise ConfigError(key, ratio, "a value strictly between 0 and 1")
    n = round(float(ratio) * units)
    if n < 1 or n > units - 1:
        raise ConfigError(
            key, ratio, f"a ratio hiding between 1 and {units - 1} of {units} units "
            f"(round({ratio} × {units}) = {n})"
        )
    return n


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

    Passed where a `torch.Generator` is accepted, it makes each sample's mask independent of
    which batch, rank or resumed process draws it. `keys` are (B,) integer tensors.
    """

    def __init__(self, seed: int, *keys: torch.Tensor) -> None:
        self.seed, self.keys, self.draws = seed, keys, 0

    def uniform(self, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, ...) float32 noise in [0, 1) for the next draw."""
        self.draws += 1
        device = self.keys[0].device
        lead = [k.reshape(-1, *[1] * (len(shape) - 1)) for k in self.keys]
        pos = torch.arange(math.prod(shape[1:]), device=device).reshape(1, *shape[1:])
        h = hashed_noise(self.seed, *lead, self.draws, pos)  # (B, ...)
        return (h.double() / 2**32).float()


def uniform(
    shape: tuple[int, ...], generator: torch.Generator | KeyedNoise | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """U[0, 1) noise from a torch generator, keyed noise, or the global RNG."""
    if isinstance(generator, KeyedNoise):
        return generator.uniform(shape)
    return torch.rand(shape, generator=generator, device=device)


def random_subset_mask(
    batch_shape: tuple[int, ...],
    units: int,
    n_hidden: int,
    generator: torch.Generator | KeyedNoise | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool mask (*batch_shape, units) with exactly `n_hidden` True per row (argsort of noise)."""
    noise = uniform((*batch_shape, units), generator, device)
    ranks = noise.argsort(dim=-1).argsort(dim=-1)  # (*batch_shape, units) rank of each unit
    return ranks < n_hidden
