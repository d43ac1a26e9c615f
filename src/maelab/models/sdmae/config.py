"""SD-MAE config (`conf/model/sdmae.yaml`, `conf/masking/<strategy>.yaml`).

Checked by `maelab.core.config.validate_config` before any data is generated; imports neither
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

STRATEGIES = ("patch", "token", "temporal", "feature_wise", "patch_feature")
CELL_STRATEGIES = ("feature_wise", "patch_feature")  # masks hide single (step, feature) cells
DECODERS = ("teacher", "student")
SCORE_TYPES = ("discrepancy", "reconstruction", "combined")
SCORES = ("auto", *SCORE_TYPES)
THRESHOLD_METHODS = ("f1", "percentile")
ENCODER_INPUTS = ("visible", "mask_tokens")
DECODER_KINDS = ("self_attention", "cross_attention")
HEADS = ("separate", "shared")
NORMS = ("pre", "post")
ACTIVATIONS = ("gelu", "relu")
GAP_REGIONS = ("hidden", "window")
GAP_MASKS = ("training", "inference")
RECON_MASKS = ("training", "training_and_inference")
PUSH_WINDOWS = ("labelled", "visible")
MARGIN_MODES = ("absolute", "relative")
RECON_REDUCTIONS = ("mean", "feature_sum")
LABEL_SCOPES = ("scored", "window")
INFERENCE_MODES = ("last_n", "all_positions", "last_n_by_feature")
REDUCTIONS = ("mean", "max", "mahalanobis")


@dataclass
class NetConfig:
    """`SDMAE` sizes (maelab.models.sdmae.model)."""

    d_model: int = 64
    heads: int = 4
    encoder_depth: int = 3
    teacher_depth: int = 4
    student_depth: int = 1
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attn_dropout: float = 0.0  # > 0 disables the fused attention kernel
    decoders: list[str] = field(default_factory=lambda: list(DECODERS))
    encoder_input: str = "visible"  # patch/temporal: hidden units removed | kept as mask tokens
    decoder: str = "self_attention"  # self_attention over mask tokens | cross_attention to the latent
    head: str = "separate"  # output projection per decoder | one shared by both
    mask_token_std: float = 0.02  # init std of the learned mask token
    norm: str = "pre"  # pre-norm blocks + final LayerNorm | post (nn.TransformerEncoderLayer's)
    activation: str = "gelu"  # of the MLPs: gelu | relu

    def __post_init__(self) -> None:
        one_of("norm", self.norm, NORMS)
        one_of("activation", self.activation, ACTIVATIONS)
        one_of("encoder_input", self.encoder_input, ENCODER_INPUTS)
        one_of("decoder", self.decoder, DECODER_KINDS)
        one_of("head", self.head, HEADS)
        at_least("mask_token_std", self.mask_token_std, 0.0)
        for key in ("d_model", "heads", "encoder_depth", "teacher_depth", "student_depth"):
            positive_int(key, getattr(self, key))
        width_and_heads("d_model", self.d_model, "heads", self.heads)
        at_least("mlp_ratio", self.mlp_ratio, 0.0, strict=True)
        in_range("dropout", self.dropout, 0.0, 1.0, high_open=True)
        in_range("attn_dropout", self.attn_dropout, 0.0, 1.0, high_open=True)
        decoders = list(self.decoders)
        if not decoders or any(d not in DECODERS for d in decoders) or len(set(decoders)) < len(decoders):
            raise ConfigError("decoders", decoders, "a non-empty subset of [teacher, student]")


@dataclass
class LossConfig:
    """Teacher reconstruction + λ · discrepancy (maelab.models.sdmae.loss)."""

    lambda_disc: float = 0.5  # λ: weight of the discrepancy term
    margin: float = 1.0  # labelled anomalies are pushed to a gap above this
    margin_mode: str = "absolute"  # absolute | relative: margin × the batch's mean normal gap
    pull_weight: float = 1.0  # weight of the normal term; > 1: no flat direction
    anomaly_warmup_epochs: int = 3  # the anomaly term ramps in linearly over these epochs
    discrepancy: bool = True  # false: reconstruction loss only (ablation)
    gap_region: str = "hidden"  # the gap d is averaged over the hidden values | the whole window
    gap_mask: str = "training"  # d under the training mask | under the inference mask (last n)
    detach_teacher: bool = True  # the teacher receives no gradient through d
    push: str = "labelled"  # push every labelled anomaly | only those visible to the encoder
    recon_reduction: str = "mean"  # squared error: mean over cells | summed over features
    recon_mask: str = "training"  # reconstruction loss under the training mask | also under the
    #                               inference mask (last n hidden), the way windows are scored

    def __post_init__(self) -> None:
        at_least("lambda_disc", self.lambda_disc, 0.0)
        at_least("margin", self.margin, 0.0, strict=True)
        one_of("margin_mode", self.margin_mode, MARGIN_MODES)
        at_least("pull_weight", self.pull_weight, 0.0)
        positive_int("anomaly_warmup_epochs", self.anomaly_warmup_epochs, minimum=0)
        one_of("gap_region", self.gap_region, GAP_REGIONS)
        one_of("gap_mask", self.gap_mask, GAP_MASKS)
        one_of("push", self.push, PUSH_WINDOWS)
        one_of("recon_reduction", self.recon_reduction, RECON_REDUCTIONS)
        one_of("recon_mask", self.recon_mask, RECON_MASKS)


@dataclass
class ThresholdConfig:
    """How thresholds are chosen on validation (maelab.scoring.thresholds)."""

    method: str = "f1"  # f1 (on validation) | percentile (of validation normals)
    percentile: float = 99.0

    def __post_init__(self) -> None:
        one_of("method", self.method, THRESHOLD_METHODS)
        in_range("percentile", self.percentile, 0.0, 100.0, low_open=True, high_open=True)


@dataclass
class ScoringConfig:
    """What is scored at inference (conf: interpolated from the top-level keys users type)."""

    score: str = "auto"  # auto (best validation AUROC) | discrepancy | reconstruction | combined
    mask_last_n: int = 10  # steps hidden at inference; the scored region
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    point_adjust: bool = False  # also report point-adjusted F1 (point-level data)
    label_scope: str = "scored"  # a window is anomalous: anomaly in the scored region | anywhere
    inference: str = "last_n"  # hide the last n steps | every block of n steps once (all_positions)
    #                            | the last n steps of one feature at a time (last_n_by_feature)
    passes: int = 3  # all_positions: block b is hidden in pass b mod passes
    reduce: str = "mean"  # a window's score: mean | max of the scored values (steps × features)
    #                       | mahalanobis (of the signed residuals, from validation normals)

    def __post_init__(self) -> None:
        one_of("score", self.score, SCORES)
        positive_int("mask_last_n", self.mask_last_n)
        one_of("label_scope", self.label_scope, LABEL_SCOPES)
        one_of("inference", self.inference, INFERENCE_MODES)
        positive_int("passes", self.passes)
        one_of("reduce", self.reduce, REDUCTIONS)


@dataclass
class MaskingConfig:
    """Training masks (conf/masking/<strategy>.yaml; maelab.models.sdmae.masking)."""

    strategy: str = "patch"
    ratio: float = 0.6  # share of units hidden
    patch_size: int = 1  # steps per patch (`patch`, `patch_feature`)
    num_spans: int = 3  # spans per window (`temporal`)
    feature_share: float = 0.5  # `patch_feature`: chance that a visible patch hides one feature

    def __post_init__(self) -> None:
        one_of("strategy", self.strategy, STRATEGIES)
        positive_int("patch_size", self.patch_size)
        positive_int("num_spans", self.num_spans)
        in_range("feature_share", self.feature_share, 0.0, 1.0)


@dataclass
class SDMAEConfig(ModelConfig):
    """`model` node of SD-MAE: network, loss, optimiser, masking and scoring."""

    net: NetConfig = field(default_factory=NetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    torch_compile: bool = False  # compile the net (pays only for long runs on a CPU)

    def __post_init__(self) -> None:
        if len(self.net.decoders) < 2 and self.scoring.score not in ("auto", "reconstruction"):
            raise ConfigError("scoring.score", self.scoring.score,
                              f"auto or reconstruction with decoders {list(self.net.decoders)}")

    def check_run(self, cfg: DictConfig) -> None:
        """Window length vs patches, hidden units and the scored region."""
        seq_length = positive_int("data.seq_length", cfg.data.seq_length)
        m, n = self.masking, self.scoring.mask_last_n
        patched = m.strategy in ("patch", "patch_feature")
        if patched and (seq_length % m.patch_size or m.patch_size == seq_length):
            raise ConfigError("model.masking.patch_size", m.patch_size,
                              f"a divisor of data.seq_length={seq_length} leaving at least 2 "
                              f"patches: {divisors(seq_length)[:-1]}")
        patches = f"patches (data.seq_length={seq_length} / patch_size={m.patch_size})"
        units = {"patch": seq_length // m.patch_size, "token": seq_length, "temporal": seq_length,
                 "feature_wise": seq_length * int(cfg.data.get("num_features", 1)),
                 "patch_feature": seq_length // m.patch_size}[m.strategy]
        what = {"patch": patches, "token": "steps", "temporal": "steps",
                "feature_wise": "(step, feature) cells", "patch_feature": patches}
        hidden_count(m.ratio, units, key="model.masking.ratio", what=what[m.strategy])
        if n >= seq_length:
            raise ConfigError("model.scoring.mask_last_n", n, f"an integer in [1, {seq_length - 1}] "
                              f"(data.seq_length={seq_length})")
        if patched and n % m.patch_size:
            raise ConfigError("model.scoring.mask_last_n", n,
                              f"a multiple of patch_size={m.patch_size} in {m.strategy} masking "
                              "(the scored region must cover whole patches)")
        if self.scoring.inference == "last_n_by_feature" and m.strategy not in CELL_STRATEGIES:
            raise ConfigError("scoring.inference", "last_n_by_feature",
                              f"last_n or all_positions with masking={m.strategy} (hiding one "
                              f"feature at a time needs cell masks: masking="
                              f"{' or '.join(CELL_STRATEGIES)})")
        if self.scoring.inference == "all_positions":
            blocks = seq_length // n
            if seq_length % n:
                raise ConfigError("model.scoring.mask_last_n", n,
                                  f"a divisor of data.seq_length={seq_length} with "
                                  "scoring.inference=all_positions (blocks of n steps tile the "
                                  f"window): {divisors(seq_length)}")
            if blocks % self.scoring.passes:
                raise ConfigError("model.scoring.passes", self.scoring.passes,
                                  f"a divisor of the {blocks} blocks of the window: "
                                  f"{divisors(blocks)}")
            stride = cfg.data.get("mask_last_n")  # point-level data: windows must tile the series
            if stride is not None and int(stride) != seq_length:
                raise ConfigError("data.mask_last_n", stride,
                                  f"data.seq_length={seq_length} with scoring.inference="
                                  "all_positions (every step of a window is scored, so test "
                                  "windows must not overlap)")

    def monitored_metrics(self, cfg: DictConfig, info: Any = None) -> list[str]:
        """train/val loss parts; where validation has labels, val/auroc (of the primary score,
        or with score=auto the best of them) and val/auroc_<score> of each score type."""
        both = len(self.net.decoders) == 2
        parts = ["loss", "recon", *(["disc_normal", "disc_anomaly"] if both and self.loss.discrepancy
                                    else [])]
        names = [f"{stage}/{p}" for stage in ("train", "val") for p in parts]
        if info is None or info.val_has_labels:
            names += ["val/auroc", *(f"val/auroc_{k}" for k in
                                     (SCORE_TYPES if both else ("reconstruction",)))]
        return names
