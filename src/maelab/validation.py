"""Checks on a composed config, run before any data is generated or a model is built.

Each failure raises `ConfigError` naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

from omegaconf import DictConfig

from maelab.core.errors import ConfigError
from maelab.data.hydro.layout import PatchLayout, check_patch_size, load_land_mask
from maelab.masking.noise import hidden_count
from maelab.models.mmmae.masking import STRATEGIES as HYDRO_STRATEGIES
from maelab.models.mmmae.model import SERIES_SKIPS
from maelab.models.sdmae.masking import STRATEGIES

THRESHOLD_METHODS = ("f1", "percentile")
SCORES = ("auto", "discrepancy", "reconstruction", "combined")
DECODERS = ("teacher", "student")


def _positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, value, "a positive integer")
    return value


def _check_sdmae(cfg: DictConfig) -> None:
    seq_length = _positive_int("data.seq_length", cfg.data.seq_length)
    strategy = cfg.masking.strategy
    if strategy not in STRATEGIES:
        raise ConfigError("masking", strategy, STRATEGIES)
    patch = _positive_int("patch_size", cfg.masking.get("patch_size", cfg.get("patch_size", 1)))
    if strategy == "patch" and seq_length % patch:
        divisors = [d for d in range(1, seq_length + 1) if seq_length % d == 0]
        raise ConfigError("patch_size", patch, f"a divisor of data.seq_length={seq_length}: "
                          f"{divisors}")
    units = {"patch": seq_length // patch, "token": seq_length, "temporal": seq_length,
             "feature_wise": seq_length * int(cfg.data.get("num_features", 1))}[strategy]
    hidden_count(cfg.masking.ratio, units, key="masking_ratio")
    n = _positive_int("mask_last_n", cfg.mask_last_n)
    if n >= seq_length:
        raise ConfigError("mask_last_n", n, f"an integer in [1, {seq_length - 1}] "
                          f"(data.seq_length={seq_length})")
    if strategy == "patch" and n % patch:
        raise ConfigError("mask_last_n", n, f"a multiple of patch_size={patch} in patch masking "
                          "(the scored region must cover whole patches)")
    net = cfg.model.net
    for key in ("d_model", "heads", "encoder_depth", "teacher_depth", "student_depth"):
        _positive_int(f"model.net.{key}", net[key])
    if net.d_model % net.heads or net.d_model % 4:
        raise ConfigError("model.net.d_model", net.d_model,
                          f"a multiple of model.net.heads={net.heads} and of 4")
    decoders = list(net.decoders)
    if not decoders or any(d not in DECODERS for d in decoders) or len(set(decoders)) < len(decoders):
        raise ConfigError("model.net.decoders", decoders, "a non-empty subset of [teacher, student]")
    if cfg.score not in SCORES:
        raise ConfigError("score", cfg.score, SCORES)
    if len(decoders) < 2 and cfg.score not in ("auto", "reconstruction"):
        raise ConfigError("score", cfg.score, f"auto or reconstruction with decoders {decoders}")
    if not 0 <= float(cfg.model.loss.lambda_disc):
        raise ConfigError("model.loss.lambda_disc", cfg.model.loss.lambda_disc, "a value ≥ 0")
    if not 0 < float(cfg.model.loss.margin):
        raise ConfigError("model.loss.margin", cfg.model.loss.margin, "a value > 0")
    if cfg.threshold.method not in THRESHOLD_METHODS:
        raise ConfigError("threshold.method", cfg.threshold.method, THRESHOLD_METHODS)
    if not 0 < float(cfg.threshold.percentile) < 100:
        raise ConfigError("threshold.percentile", cfg.threshold.percentile, "a value in (0, 100)")


def _check_mmmae(cfg: DictConfig) -> None:
    """MM-MAE: masking strategy and ratio vs valid patches and days, network sizes, weights."""
    strategy = cfg.masking.strategy
    if strategy not in HYDRO_STRATEGIES:
        raise ConfigError("masking", strategy, HYDRO_STRATEGIES)
    seq_len = _positive_int("data.seq_len", cfg.data.seq_len)
    patch = check_patch_size(cfg.data.patch_size)
    layout = PatchLayout.build(load_land_mask(cfg.data.land_mask, cfg.data.land_mask_var), patch,
                               cfg.data.land_threshold)
    if cfg.masking.enabled:
        hidden_count(cfg.masking.ratio, layout.n_valid, key="masking_ratio")
        hidden_count(cfg.masking.ratio, seq_len, key="masking_ratio")
    net = cfg.model.net
    for key in ("temporal_patch", "d_model", "depth", "heads", "decoder_dim", "decoder_depth",
                "decoder_heads"):
        _positive_int(f"model.net.{key}", net[key])
    if seq_len % net.temporal_patch:
        divisors = [d for d in range(1, seq_len + 1) if seq_len % d == 0]
        raise ConfigError("model.net.temporal_patch", net.temporal_patch,
                          f"a divisor of data.seq_len={seq_len}: {divisors}")
    for width, heads in (("d_model", "heads"), ("decoder_dim", "decoder_heads")):
        if net[width] % net[heads] or net[width] % 4:
            raise ConfigError(f"model.net.{width}", net[width],
                              f"a multiple of model.net.{heads}={net[heads]} and of 4")
    if net.get("series_skip", "interpolation") not in SERIES_SKIPS:
        raise ConfigError("model.net.series_skip", net.series_skip, SERIES_SKIPS)
    if not 0 <= float(cfg.model.get("hide_series", 0.0)) <= 1:
        raise ConfigError("model.hide_series", cfg.model.hide_series, "a probability in [0, 1]")
    for key, w in (cfg.model.loss.get("weights") or {}).items():
        if not float(w) >= 0:
            raise ConfigError(f"model.loss.weights.{key}", w, "a weight ≥ 0")
    if not float(cfg.model.optim.lr) > 0:
        raise ConfigError("model.optim.lr", cfg.model.optim.lr, "a value > 0")


def model_name(cfg: DictConfig) -> str:
    """Short name of the configured model ('sdmae', 'mmmae'), from its LightningModule target."""
    return str(cfg.model._target_).rsplit(".", 1)[-1].removesuffix("Module").lower()


CHECKS = {"sdmae": _check_sdmae, "mmmae": _check_mmmae}


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError on the first invalid setting of `cfg`."""
    if not isinstance(cfg.seed, int):
        raise ConfigError("seed", cfg.seed, "an integer")
    _positive_int("trainer.max_epochs", cfg.trainer.max_epochs)
    _positive_int("data.batch_size", cfg.data.batch_size)
    name = model_name(cfg)
    if name not in CHECKS:
        raise ConfigError("model", name, list(CHECKS))
    CHECKS[name](cfg)
