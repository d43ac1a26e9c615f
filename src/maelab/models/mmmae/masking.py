"""MM-MAE masks for hydrology windows (pure functions; bool, True = hidden).

Grids: each day hides round(ratio × P) of the P valid land patches, drawn independently per
day; `unified` shares one mask across the grids, `independent` draws one per grid. Series hide
round(ratio × T) days; `shared` uses one day mask for every series, `independent` one each.
Training draws fresh masks (`generator`); validation/test pass `sample_keys`, so a sample's mask
is a hash of its identity: identical across epochs, batch orders and batch sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from maelab.core.errors import ConfigError
from maelab.masking.noise import hashed_noise, hidden_count, random_subset_mask

STRATEGIES = ("unified", "independent")
SERIES_MODES = ("shared", "independent")
_SERIES_STREAM = 1 << 20  # stream ids of series masks start here, grids use 0 … n_grids


@dataclass(frozen=True)
class HydroMaskConfig:
    """Validated `masking` config group (conf/masking/unified.yaml, independent.yaml)."""

    strategy: str = "unified"
    enabled: bool = True
    ratio: float = 0.75
    series: str = "shared"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError("masking.strategy", self.strategy, STRATEGIES)
        if self.series not in SERIES_MODES:
            raise ConfigError("masking.series", self.series, SERIES_MODES)
        if not isinstance(self.enabled, bool):
            raise ConfigError("masking.enabled", self.enabled, (True, False))
        if self.enabled and not 0.0 < float(self.ratio) < 1.0:
            raise ConfigError("masking.ratio", self.ratio, "a value strictly between 0 and 1")

    def check_units(self, n_valid: int, seq_len: int) -> None:
        """Raise unless the ratio hides between 1 and all-but-one patches and days."""
        if self.enabled:
            hidden_count(self.ratio, n_valid, key="masking.ratio")
            hidden_count(self.ratio, seq_len, key="masking.ratio")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> HydroMaskConfig:
        """Build from a plain or OmegaConf mapping; unknown keys raise with the valid ones."""
        if cfg is None:
            return cls()
        known = [f.name for f in fields(cls)]
        extra = [k for k in cfg if k not in known]
        if extra:
            raise ConfigError(f"masking.{extra[0]}", cfg[extra[0]],
                              f"a key of the hydrology masking group: {', '.join(known)}")
        return cls(**{k: cfg[k] for k in known if k in cfg})


def _lowest(noise: torch.Tensor, n_hidden: int) -> torch.Tensor:
    """Bool mask: the `n_hidden` smallest `noise` entries of each last-axis row."""
    ranks = noise.argsort(dim=-1).argsort(dim=-1)
    return ranks < n_hidden


def _draw(
    cfg: HydroMaskConfig, shape: tuple[int, ...], units: int, key: str,
    sample_keys: torch.Tensor | None, stream: torch.Tensor,
    generator: torch.Generator | None, device: torch.device | str | None,
) -> torch.Tensor:
    """(S, B, T, units) masks for S streams: hashed when `sample_keys` (B, K) given."""
    s, b, t = shape
    if not cfg.enabled:
        return torch.zeros((s, b, t, units), dtype=torch.bool, device=device)
    n = hidden_count(cfg.ratio, units, key=key)
    if sample_keys is None:
        return random_subset_mask((s, b, t), units, n, generator=generator, device=device)
    sk = sample_keys.to(device=device, dtype=torch.int64)  # (B, K)
    cols = [sk[None, :, j, None, None] for j in range(sk.shape[1])]  # each (1, B, 1, 1)
    day = torch.arange(t, device=device)[None, None, :, None]  # (1, 1, T, 1)
    unit = torch.arange(units, device=device)[None, None, None, :]  # (1, 1, 1, U)
    noise = hashed_noise(cfg.seed, stream.to(device)[:, None, None, None], *cols, day, unit)
    return _lowest(noise.expand(s, b, t, units), n)


def grid_masks(
    cfg: HydroMaskConfig, batch: int, seq_len: int, n_valid: int, grid_names: Sequence[str],
    sample_keys: torch.Tensor | None = None, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Per grid bool (B, T, P) masks over the valid patches; `unified` grids share one tensor."""
    n_streams = 1 if cfg.strategy == "unified" else len(grid_names)
    m = _draw(cfg, (n_streams, batch, seq_len), n_valid, "masking.ratio", sample_keys,
              torch.arange(n_streams), generator, device)  # (S, B, T, P)
    per = [m[0]] * len(grid_names) if cfg.strategy == "unified" else list(m)
    return dict(zip(grid_names, per, strict=True))


def series_masks(
    cfg: HydroMaskConfig, batch: int, seq_len: int, series_names: Sequence[str],
    sample_keys: torch.Tensor | None = None, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Per series bool (B, T) day masks; `shared` series share one tensor."""
    n_streams = 1 if cfg.series == "shared" else len(series_names)
    m = _draw(cfg, (n_streams, batch, 1), seq_len, "masking.ratio", sample_keys,
              _SERIES_STREAM + torch.arange(n_streams), generator, device)  # (S, B, 1, T)
    per = [m[0, :, 0]] * len(series_names) if cfg.series == "shared" else list(m[:, :, 0])
    return dict(zip(series_names, per, strict=True))


def full_grid_mask(mask: torch.Tensor, valid_idx: torch.Tensor, n_patches: int) -> torch.Tensor:
    """(B, T, P) mask on the valid patches → (B, T, n_patches) on the full patch grid, ocean
    (and every non-valid patch) False."""
    full = torch.zeros((*mask.shape[:-1], n_patches), dtype=torch.bool, device=mask.device)
    full[..., valid_idx.to(mask.device)] = mask
    return full
