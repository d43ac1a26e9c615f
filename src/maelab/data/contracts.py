"""What DataModules promise the models: `DataInfo` (from every DataModule's `info()`) and the
batch of each data family (`SeriesBatch`, `HydroBatch`).

`info()` describes set-up data in plain types; the pipeline hands `dataclasses.asdict(info)` to
the model as its `data_info` hyper-parameter (checkpoints hold only tensors and plain types), and
the model rebuilds the family's class from it (`SeriesInfo(**data_info)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NotRequired, TypedDict

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True, kw_only=True)
class DataInfo:
    """What every model may read about its data."""

    batch_size: int  # windows per batch and rank (the optimiser scales lr with it)


@dataclass(frozen=True, kw_only=True)
class SeriesInfo(DataInfo):
    """Windows of multivariate series (`SeriesBatch`): synthetic anomalies, SMD."""

    seq_length: int  # T: steps per window
    num_features: int  # F
    feature_names: list[str]
    anomaly_types: list[str]  # names of anomaly_type codes; index 0 = normal
    eval_level: str  # "window": one label per window | "point": per step of long series
    val_has_labels: bool
    train_has_labels: bool


@dataclass(frozen=True, kw_only=True)
class HydroInfo(DataInfo):
    """Hydrology windows (`HydroBatch`): grids on the patch layout, catchment series, static."""

    grid_names: list[str]
    series_names: list[str]
    present: dict[str, bool]  # modality present in the source
    patch_size: int  # p: cells per patch side
    seq_len: int  # T: days per window
    n_valid_patches: int  # P: land patches that are tokens
    n_patches: int  # patches on the full grid
    patch_grid_shape: list[int]  # (rows, cols) of the patch grid
    valid_patch_rows: list[int]  # (P,) row of each valid patch (0 = south)
    valid_patch_cols: list[int]  # (P,) column (0 = west)
    n_static: int  # A: static attributes per catchment
    static_names: list[str]
    stats: dict[str, dict[str, float | bool]]  # per present modality: mean, std, log (training)
    units: dict[str, str] = field(default_factory=dict)  # per present modality, after denormalise
    donor_series: list[str] = field(default_factory=list)  # series given with donors (data.donors)
    n_donors: int = 0  # K: donor catchments per series


class SeriesBatch(TypedDict):
    """A batch of B windows of T steps and F features."""

    x: Tensor  # float32 (B, T, F) normalised values
    point_labels: Tensor  # int64 (B, T) 1 = anomalous step (0 when unknown)
    labelled: Tensor  # bool (B,) window label known to the training loss
    label: Tensor  # int64 (B,) 1 if any anomaly in the window's label span (0 when unknown)
    anomaly_type: Tensor  # int64 (B,) index into SeriesInfo.anomaly_types; -1 unknown
    start: Tensor  # int64 (B,) first step of the window in its series
    series: Tensor  # int64 (B,) which series the window comes from


class HydroDonors(TypedDict):
    """Per series of `data.donors.series`: its K most correlated other catchments (training
    period) on the window's days."""

    series: dict[str, Tensor]  # float32 (B, K, T) normalised, as `HydroBatch.series`
    valid: dict[str, Tensor]  # bool (B, K, T)
    catchment: dict[str, Tensor]  # int64 (B, K) the donors' catchment indices
    weight: dict[str, Tensor]  # float32 (B, K) their training correlation (≥ 0)


class HydroBatch(TypedDict):
    """A batch of B windows of T days (P valid patches of p × p cells, A static attributes).

    Every configured grid and series name is a key; an absent modality holds NaN values, False
    validity and False presence (stride-0 views).
    """

    grids: dict[str, Tensor]  # float32 (B, T, P, p*p) normalised; NaN where not valid
    grid_valid: dict[str, Tensor]  # bool (B, T, P, p*p) finite value on a land cell
    series: dict[str, Tensor]  # float32 (B, T) normalised (after log1p where stats `log`)
    series_valid: dict[str, Tensor]  # bool (B, T)
    static: Tensor  # float32 (B, A) normalised attributes; NaN where missing
    static_valid: Tensor  # bool (B, A)
    location: Tensor  # float32 (B, 2) catchment (row, col) on the patch grid; NaN if unknown
    present: dict[str, Tensor]  # bool (B,) modality present in the source
    catchment: Tensor  # int64 (B,) index into the DataModule's catchment_ids
    start: Tensor  # int64 (B,) first day, index on the store's day axis
    time: Tensor  # int64 (B, T) days since 1970-01-01 of each step
    donors: NotRequired[HydroDonors]  # only with data.donors
