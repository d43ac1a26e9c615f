"""Model configs: self-checking dataclasses, found from the `model` node, checked before any work.

A model's LightningModule `<package>.<module>.<Name>Module` keeps its config in `<package>/config.py`
as the dataclass `<Name>Config`, a subclass of `ModelConfig` (e.g. `maelab.models.sdmae.module.
SDMAEModule` → `maelab.models.sdmae.config.SDMAEConfig`). `validate_config` finds it from
`model._target_` without importing the LightningModule (config modules import neither torch nor
Lightning), and checks the `model` node in three passes:

1. types and keys: the node is merged into `OmegaConf.structured(<Name>Config)`, so a wrong type
   (`model.optim.lr=fast`) or an unknown key (`model.net.foo=1`) fails naming its full key;
2. values: each nested dataclass's `__post_init__` checks its own fields (`ConfigError` with the
   field name; the full dotted key is added here), the top-level one the combinations;
3. the run: `ModelConfig.check_run(cfg)` checks the model against the rest of the config (data
   sizes), raising with full keys.

A key that comes through a plain interpolation is reported under the key the user types:
`model.scoring.mask_last_n: ${mask_last_n}` is reported as `mask_last_n`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from maelab.core.checks import at_least, in_range, one_of, positive_int
from maelab.core.errors import ConfigError

T = TypeVar("T")
_INTERPOLATION = re.compile(r"^\$\{(\w[\w.]*)\}$")
_TYPE_NAMES = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false",
               "String": "a string"}


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (`maelab.lit.base.MaeModule`)."""

    lr: float = 1e-3  # at base_batch_size windows per optimiser step
    base_batch_size: int | None = None  # lr scales with batch × ranks × accumulation / this
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_fraction: float = 0.05

    def __post_init__(self) -> None:
        at_least("lr", self.lr, 0.0, strict=True)
        if self.base_batch_size is not None:
            positive_int("base_batch_size", self.base_batch_size)
        at_least("weight_decay", self.weight_decay, 0.0)
        if len(self.betas) != 2:
            raise ConfigError("betas", list(self.betas), "two values in [0, 1)")
        for beta in self.betas:
            in_range("betas", beta, 0.0, 1.0, high_open=True)
        in_range("warmup_fraction", self.warmup_fraction, 0.0, 1.0)


@dataclass
class ModelConfig:
    """Base of every model's config (the `model` node without `_target_`); the fields the base
    LightningModule reads. Subclasses add theirs, all with defaults."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0  # keys the masking noise (conf: ${seed})

    def check_run(self, cfg: DictConfig) -> None:
        """Checks against the rest of the run config `cfg` (data sizes …); full keys in errors."""

    @property
    def unused_parameters(self) -> bool:
        """True when a training step may leave some parameters without a gradient (a modality
        hidden or absent in a batch): DDP must then look for them (`find_unused_parameters`)."""
        return False

    def monitored_metrics(self, cfg: DictConfig, info: Any = None) -> list[str]:
        """The per-epoch metrics the module logs, which `optimized_metric` may name (`info`: the
        data's DataInfo once built, for metrics that need, e.g., validation labels). Empty: not
        known, not checked."""
        return []


def model_config_class(model: DictConfig) -> type[ModelConfig]:
    """The `ModelConfig` subclass of the LightningModule named by `model._target_`."""
    target = str(model.get("_target_", ""))
    module_path, _, class_name = target.rpartition(".")
    package = module_path.rpartition(".")[0]
    name = class_name.removesuffix("Module") + "Config"
    expected = f"a LightningModule <package>.<module>.<Name>Module with <package>/config.py " \
               f"defining {name}"
    if not package or not class_name.endswith("Module"):
        raise ConfigError("model._target_", target, expected)
    try:
        config_module = importlib.import_module(f"{package}.config")
    except ModuleNotFoundError as exc:
        if exc.name is None or not f"{package}.config".startswith(exc.name):
            raise
        raise ConfigError("model._target_", target, expected) from exc
    cls = getattr(config_module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ModelConfig)):
        raise ConfigError("model._target_", target, expected + " (a maelab.core.config.ModelConfig)")
    return cls


def user_key(cfg: DictConfig, key: str) -> str:
    """The key a user types for the dotted `key` of `cfg`, following plain interpolations."""
    parts = key.split(".")
    i = 0
    for _ in range(100):  # interpolation chains are short; a cycle fails resolution before this
        if i >= len(parts):
            break
        parent = OmegaConf.select(cfg, ".".join(parts[:i])) if i else cfg
        if not isinstance(parent, DictConfig) or parts[i] not in parent:
            break
        raw = OmegaConf.to_container(parent, resolve=False)[parts[i]]
        match = _INTERPOLATION.match(raw) if isinstance(raw, str) else None
        if match:
            parts, i = match.group(1).split(".") + parts[i + 1:], 0
        else:
            i += 1
    return ".".join(parts)


@contextmanager
def user_keys(cfg: DictConfig) -> Iterator[None]:
    """Re-raise a ConfigError under the key the user types (see `user_key`)."""
    try:
        yield
    except ConfigError as exc:
        key = user_key(cfg, exc.key)
        if key == exc.key:
            raise
        raise ConfigError(key, exc.value, exc.valid) from exc


def _prefixed(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _check_values(node: DictConfig, path: str) -> None:
    """Run the `__post_init__` checks of every nested dataclass below `node`, deepest first, so a
    failure names its full key (`path.field`)."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and is_dataclass(OmegaConf.get_type(child)):
            _check_values(child, _prefixed(path, key))
            try:
                OmegaConf.to_object(child)
            except ConfigError as exc:
                raise ConfigError(_prefixed(_prefixed(path, key), exc.key), exc.value,
                                  exc.valid) from exc


def _lookup(values: Any, dotted: str) -> Any:
    """The value at `dotted` (keys and [i] indices) of plain nested `values`, None if absent."""
    for part in re.findall(r"[^.\[\]]+", dotted):
        if isinstance(values, dict):
            values = values.get(part)
        elif isinstance(values, list) and part.isdigit() and int(part) < len(values):
            values = values[int(part)]
        else:
            return None
    return values


def _expected_type(message: str) -> str:
    """What a value must be, from an OmegaConf ValidationError message."""
    wanted = re.search(r"converted to (\w+)", message)
    if wanted:
        return _TYPE_NAMES.get(wanted.group(1), wanted.group(1))
    if "ListConfig" in message:
        return "a list"
    if "DictConfig" in message:
        return "a mapping"
    return message.splitlines()[0]


def _scalar_section(cls: type, values: dict[str, Any]) -> str:
    """The first field of `cls` holding a dataclass that `values` gives as a non-mapping."""
    defaults = cls()
    return next((f.name for f in fields(cls) if is_dataclass(getattr(defaults, f.name))
                 and f.name in values and not isinstance(values[f.name], dict)), "")


def structured(cls: type[T], values: dict[str, Any], prefix: str) -> T:
    """`values` (plain, resolved) checked against the dataclass `cls`, as a `cls` instance;
    ConfigError names the full key (`prefix.<key>`) of a wrong type, unknown key or bad value."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), values)
    except ConfigKeyError as exc:
        parent = _prefixed(prefix, exc.full_key.rpartition(".")[0]) if "." in exc.full_key else prefix
        known = [f.name for f in fields(exc.object_type)] if is_dataclass(exc.object_type) else []
        raise ConfigError(_prefixed(prefix, exc.full_key), _lookup(values, exc.full_key),
                          f"a key of {parent}: " + ", ".join(known)) from None
    except ValidationError as exc:
        if not exc.full_key:  # a whole section given as a scalar
            key = _scalar_section(cls, values)
            raise ConfigError(_prefixed(prefix, key), values.get(key), "a mapping") from None
        raise ConfigError(_prefixed(prefix, exc.full_key), _lookup(values, exc.full_key),
                          _expected_type(exc.msg)) from None
    _check_values(merged, prefix)
    try:
        return OmegaConf.to_object(merged)
    except ConfigError as exc:
        raise ConfigError(_prefixed(prefix, exc.key), exc.value, exc.valid) from exc


def load_model_config(cfg: DictConfig) -> ModelConfig:
    """The checked config of `cfg.model` (see the module docstring)."""
    cls = model_config_class(cfg.model)
    values = OmegaConf.to_container(cfg.model, resolve=True)
    values.pop("_target_")
    with user_keys(cfg):
        config = structured(cls, values, "model")
        config.check_run(cfg)
    return config


def check_optimized_metric(cfg: DictConfig, config: ModelConfig, info: Any = None) -> None:
    """`optimized_metric` must be a metric the model logs (`ModelConfig.monitored_metrics`),
    `optimized_metric_mode` min or max (`cfg` without them, as evaluate.py's: nothing checked)."""
    if "optimized_metric" not in cfg:
        return
    one_of("optimized_metric_mode", cfg.get("optimized_metric_mode"), ("min", "max"))
    names = config.monitored_metrics(cfg, info)
    if names and cfg.optimized_metric not in names:
        raise ConfigError("optimized_metric", cfg.optimized_metric, names)


def validate_config(cfg: DictConfig) -> ModelConfig:
    """Check a composed run config before any data is generated or a model is built; return the
    model's checked config. Raises ConfigError on the first invalid setting."""
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ConfigError("seed", cfg.seed, "an integer")
    positive_int("trainer.max_epochs", cfg.trainer.max_epochs)
    every = cfg.trainer.get("check_val_every_n_epoch")
    if isinstance(every, int) and not isinstance(every, bool) and every > cfg.trainer.max_epochs:
        raise ConfigError("trainer.check_val_every_n_epoch", every,
                          f"at most trainer.max_epochs={cfg.trainer.max_epochs} (else no "
                          "validation runs and no checkpoint can be chosen)")
    config = load_model_config(cfg)
    check_optimized_metric(cfg, config)
    return config
