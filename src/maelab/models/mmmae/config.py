"""MM-MAE config (`conf/model/mmmae.yaml`, `conf/masking/{unified,independent}.yaml`).

Checked by `maelab.core.config.validate_config` before any data is prepared; imports neither
torch nor Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from maelab.core.checks import at_least, divisors, in_range, one_of, positive_int, width_and_heads
from maelab.core.config import ModelConfig
from maelab.core.errors import ConfigError
from maelab.masking.count import hidden_count

STRATEGIES = ("unified", "independent")
SERIES_MODES = ("shared", "independent")
SERIES_MASKS = ("random_days", "all", "contiguous", "visible")  # masking.series_modes values
ATTENTIONS = ("factorised", "joint")
HIDE_SERIES_OTHERS = ("masked", "visible", "mixed")  # the other series when one is hidden whole
HIDE_SERIES_GRIDS = ("masked", "visible")  # the grids in those batches when the others are visible
SERIES_SHRINK = ("by_distance", "none")  # calibration.series_shrink values
STRETCH_SIDES = ("both", "above")  # calibration.series_stretch_side values
STRETCH_WINDOWS = ("all", "with_visible")  # calibration.series_stretch_windows values
CROSS_MODAL_BLENDS = ("none", "regression")  # calibration.cross_modal_blend values
BLEND_NEEDS = ("none, or regression with model.evaluation.cross_modal (the series blended) and "
               "model.evaluation.regression (the forcing series of the trees it is blended with)")
# the baseline priors the factorised decoder starts from (maelab.models.mmmae.priors)
GRID_PRIORS = ("neighbour_mean", "interpolation", "climatology")
SERIES_PRIORS = ("interpolation", "climatology", "regression")
ANTECEDENT_DAYS = (3.0, 10.0, 30.0)  # default scales (days) of the forcing's antecedent means


def _priors(key: str, names: list[str], known: tuple[str, ...]) -> None:
    for name in names:
        one_of(key, name, known)
    if len(set(names)) != len(names):
        raise ConfigError(key, names, f"distinct names out of {list(known)}")


@dataclass
class NetConfig:
    """Network sizes and design (maelab.models.mmmae.factorised | model)."""

    attention: str = "factorised"  # factorised: per-day tokens, day × track attention | joint
    temporal_patch: int = 1  # days per grid token (joint only; divides data.seq_len)
    d_model: int = 64  # encoder width
    depth: int = 2  # encoder blocks
    heads: int = 2
    decoder_dim: int = 64  # lighter decoder: own width and depth
    decoder_depth: int = 1
    decoder_heads: int = 2
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attn_dropout: float = 0.0  # > 0 disables the fused attention kernel
    # decoder priors; prediction = weighted priors + correction, starting at the first one
    grid_priors: list[str] = field(default_factory=lambda: list(GRID_PRIORS))
    series_priors: list[str] = field(default_factory=lambda: ["interpolation", "climatology"])
    decode_fraction: float = 1.0  # share of hidden grid tokens decoded per training step
    catchment_location: bool = False  # static/series tokens get the catchment's patch-grid place
    forcing_series: list[str] = field(default_factory=list)  # series whose visible values and
    # antecedent means join the day tokens and series queries (factorised; e.g. CAMELS forcings)
    antecedent_days: list[float] = field(default_factory=lambda: list(ANTECEDENT_DAYS))  # scales
    # (days) of the antecedent means of the catchment forcing, grids' and series' (factorised)

    def __post_init__(self) -> None:
        one_of("attention", self.attention, ATTENTIONS)
        for key in ("temporal_patch", "d_model", "depth", "heads", "decoder_dim", "decoder_depth",
                    "decoder_heads"):
            positive_int(key, getattr(self, key))
        for width, heads in (("d_model", "heads"), ("decoder_dim", "decoder_heads")):
            width_and_heads(width, getattr(self, width), heads, getattr(self, heads))
        at_least("mlp_ratio", self.mlp_ratio, 0.0, strict=True)
        in_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
        in_range("attn_dropout", self.attn_dropout, 0.0, 1.0, high_open=True)
        in_range("decode_fraction", self.decode_fraction, 0.0, 1.0, low_open=True)
        _priors("grid_priors", self.grid_priors, GRID_PRIORS)
        if not self.antecedent_days or any(
                isinstance(v, bool) or not isinstance(v, int | float) or v <= 0
                for v in self.antecedent_days):
            raise ConfigError("antecedent_days", self.antecedent_days,
                              "a non-empty list of positive scales in days, e.g. [3, 10, 30]")
        _priors("series_priors", self.series_priors, SERIES_PRIORS)
        if self.attention == "factorised" and self.temporal_patch != 1:
            raise ConfigError("temporal_patch", self.temporal_patch,
                              "1 with attention=factorised (per-day tokens); k > 1 needs "
                              "model.net.attention=joint")
        if self.attention == "joint":
            if self.grid_priors:
                raise ConfigError("grid_priors", self.grid_priors,
                                  "[] with attention=joint (its decoder has no grid priors)")
            if self.series_priors not in ([], ["interpolation"]):
                raise ConfigError("series_priors", self.series_priors,
                                  "[] or [interpolation] with attention=joint")
            if self.decode_fraction != 1.0:
                raise ConfigError("decode_fraction", self.decode_fraction,
                                  "1.0 with attention=joint (it decodes every token)")
            if self.forcing_series:
                raise ConfigError("forcing_series", self.forcing_series,
                                  "[] with attention=joint (factorised only)")
            if list(self.antecedent_days) != list(ANTECEDENT_DAYS):
                raise ConfigError("antecedent_days", self.antecedent_days,
                                  f"{list(ANTECEDENT_DAYS)} with attention=joint (factorised only)")


@dataclass
class LossConfig:
    """Per-modality MSE on hidden valid places (maelab.models.mmmae.loss)."""

    weights: dict[str, float] = field(default_factory=dict)  # per modality; unlisted weigh 1
    norm_pix_loss: bool = False  # grid targets normalised per patch and day
    nse_star: list[str] = field(default_factory=list)  # series scored by NSE* (physical units
    #                                                    over each catchment's training variance)
    variability: dict[str, float] = field(default_factory=dict)  # NSE* series: weight of the
    #                                                    spread error (KGE's α term) in its loss

    def __post_init__(self) -> None:
        for name, weight in self.weights.items():
            at_least(f"weights.{name}", weight, 0.0)
        for name, weight in self.variability.items():
            at_least(f"variability.{name}", weight, 0.0)


@dataclass
class EvaluationConfig:
    """Test-period evaluation (maelab.models.mmmae.evaluation)."""

    climatology_window: int = 31  # days of the circular running mean smoothing the climatology
    cross_modal: str | None = "riverflow"  # series hidden on every day in the cross-modal test
    figure_day: int | None = None  # day of the example window drawn in the maps (None: middle)
    infilling: bool = True  # also: cross_modal series hidden alone (all days; gaps), rest visible
    gap_days: list[int] = field(default_factory=lambda: [7, 30])  # infilling gaps (days;
    # those not shorter than data.seq_len are skipped, and not recorded)
    regression: list[str] = field(default_factory=list)  # forcing series of the `regression`
    # baseline of the cross-modal and infilling tests (maelab.models.mmmae.regression); [] = none
    regression_windows: int = 4000  # training windows it (and the `regression` prior) is fitted on

    def __post_init__(self) -> None:
        positive_int("climatology_window", self.climatology_window)
        if self.figure_day is not None:
            positive_int("figure_day", self.figure_day, minimum=0)
        for i, gap in enumerate(self.gap_days):
            positive_int(f"gap_days[{i}]", gap)
        positive_int("regression_windows", self.regression_windows)
        if self.regression and self.cross_modal is None:
            raise ConfigError("regression", self.regression,
                              "[] when cross_modal is null (it predicts the cross_modal series)")


@dataclass
class CalibrationConfig:
    """Fitted on validation after training (maelab.models.mmmae.calibration)."""

    series_shrink: str = "by_distance"  # by_distance: hidden series days pulled toward
    # interpolation by a weight per distance to the nearest visible day | none: the model as is
    series_stretch: list[str] = field(default_factory=list)  # series whose hidden days are
    # stretched about their climatology by the factor with the best median KGE on validation
    series_stretch_side: str = "both"  # both: every hidden day | above: only days the model puts
    # above the climatology (peaks widened, recessions kept)
    series_stretch_windows: str = "all"  # all | with_visible: windows with no visible valid day
    # of the series (the cross-modal tests) keep the model's values, as with the shrinkage
    cross_modal_blend: str = "none"  # none | regression: in windows with no visible day of the
    # cross_modal series, blended with the `regression` baseline's trees by weights fitted on
    # validation

    def __post_init__(self) -> None:
        one_of("series_shrink", self.series_shrink, SERIES_SHRINK)
        one_of("cross_modal_blend", self.cross_modal_blend, CROSS_MODAL_BLENDS)
        one_of("series_stretch_side", self.series_stretch_side, STRETCH_SIDES)
        one_of("series_stretch_windows", self.series_stretch_windows, STRETCH_WINDOWS)
        if isinstance(self.series_stretch, str):  # `series_stretch=riverflow`: not a list
            raise ConfigError("series_stretch", self.series_stretch,
                              "a list of series names, e.g. [riverflow] ([]: none)")
        self.series_stretch = list(self.series_stretch)
        if len(set(self.series_stretch)) != len(self.series_stretch):
            raise ConfigError("series_stretch", self.series_stretch, "distinct series names")


@dataclass
class MaskingConfig:
    """Grid and series masks (conf/masking/{unified,independent}.yaml; maelab.models.mmmae.masking)."""

    strategy: str = "unified"  # unified: one mask for every grid | independent: one per grid
    enabled: bool = True  # false: nothing hidden (encoder features)
    ratio: float = 0.75  # share of valid patches (per day) and of days hidden
    series: str = "shared"  # shared: one day mask for every series | independent: one each
    series_modes: dict[str, str] | None = None  # per series (SERIES_MASKS; null: none listed);
    # unlisted: random_days (round(ratio × T) days) | all (every day) | contiguous (one gap of
    # gap_days days) | visible (never hidden: an input only)
    gap_days: int = 14  # contiguous: length of the gap hidden in each window

    def __post_init__(self) -> None:
        one_of("strategy", self.strategy, STRATEGIES)
        one_of("series", self.series, SERIES_MODES)
        self.series_modes = dict(self.series_modes or {})
        for name, mode in self.series_modes.items():
            one_of(f"series_modes.{name}", mode, SERIES_MASKS)
        positive_int("gap_days", self.gap_days)


@dataclass
class MMMAEConfig(ModelConfig):
    """`model` node of MM-MAE: network, loss, optimiser, masking, cross-modal training, evaluation."""

    net: NetConfig = field(default_factory=NetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    hide_series: float = 0.0  # share of training batches hiding one whole series
    hide_series_others: str = "masked"  # the other series in those batches: masked | visible | mixed
    hide_series_grids: str = "masked"  # the grids when the others are visible: masked | visible

    def __post_init__(self) -> None:
        in_range("hide_series", self.hide_series, 0.0, 1.0)
        one_of("hide_series_others", self.hide_series_others, HIDE_SERIES_OTHERS)
        one_of("hide_series_grids", self.hide_series_grids, HIDE_SERIES_GRIDS)
        if self.hide_series_grids == "visible" and self.hide_series_others == "masked":
            raise ConfigError("hide_series_grids", "visible",
                              "masked while hide_series_others=masked (the grids are shown only "
                              "in the batches whose other series are: set hide_series_others to "
                              "visible or mixed)")
        if "regression" in self.net.series_priors and (
                self.evaluation.cross_modal is None or not self.net.forcing_series):
            raise ConfigError("net.series_priors", self.net.series_priors,
                              "no `regression` without model.evaluation.cross_modal (the "
                              "series it predicts) and model.net.forcing_series (its inputs)")
        if self.calibration.cross_modal_blend == "regression" and (
                self.evaluation.cross_modal is None or not self.evaluation.regression):
            raise ConfigError("calibration.cross_modal_blend", "regression", BLEND_NEEDS)

    @property
    def unused_parameters(self) -> bool:
        """A step may leave parameters unused: a series hidden or absent in the whole batch, the
        grids' priors when no grid token is decoded."""
        return True

    def check_run(self, cfg: DictConfig) -> None:
        """Grid tokens vs window length; hidden patches and days vs the data's patch layout."""
        from maelab.data.hydro.layout import PatchLayout, check_patch_size, load_land_mask

        seq_len = positive_int("data.seq_len", cfg.data.seq_len)
        k = self.net.temporal_patch
        if seq_len % k:
            raise ConfigError("model.net.temporal_patch", k,
                              f"a divisor of data.seq_len={seq_len}: {divisors(seq_len)}")
        series = list(cfg.data.get("series") or {})
        for name in self.masking.series_modes:
            if name not in series:
                raise ConfigError(f"model.masking.series_modes.{name}",
                                  self.masking.series_modes[name], f"a series of data.series: "
                                  f"{', '.join(series)}")
        if "contiguous" in self.masking.series_modes.values() and self.masking.gap_days >= seq_len:
            raise ConfigError("model.masking.gap_days", self.masking.gap_days,
                              f"fewer days than data.seq_len={seq_len}")
        if self.masking.enabled:
            layout = PatchLayout.build(load_land_mask(cfg.data.land_mask, cfg.data.land_mask_var),
                                       check_patch_size(cfg.data.patch_size), cfg.data.land_threshold)
            hidden_count(self.masking.ratio, layout.n_valid, key="model.masking.ratio")
            hidden_count(self.masking.ratio, seq_len, key="model.masking.ratio")

    def monitored_metrics(self, cfg: DictConfig, info: Any = None) -> list[str]:
        """train/val loss and its part per present modality; the interpolation's validation loss
        per present series (`info`: the data's HydroInfo, else the modalities `cfg.data` maps)."""
        if info is not None:
            present = [n for n in (*info.grid_names, *info.series_names) if info.present.get(n)]
            series = [n for n in info.series_names if info.present.get(n)]
        else:
            maps = {k: dict(cfg.data.get(k) or {}) for k in ("grids", "series")}
            present = [n for k in maps for n, v in maps[k].items() if v is not None]
            series = [n for n, v in maps["series"].items() if v is not None]
        return [*(f"{stage}/loss{suffix}" for stage in ("train", "val")
                  for suffix in ("", *(f"_{n}" for n in present))),
                *(f"val/loss_{s}_interpolation" for s in series)]
