"""The one random-subset primitive every masking strategy draws from."""

from __future__ import annotations

import torch

from maelab.errors import ConfigError


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


def random_subset_mask(
    batch_shape: tuple[int, ...],
    units: int,
    n_hidden: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool mask (*batch_shape, units) with exactly `n_hidden` True per row (argsort of noise)."""
    noise = torch.rand((*batch_shape, units), generator=generator, device=device)
    ranks = noise.argsort(dim=-1).argsort(dim=-1)  # (*batch_shape, units) rank of each unit
    return ranks < n_hidden
