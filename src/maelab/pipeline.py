"""train(cfg) and evaluate(cfg): everything between Hydra's config and the files of a run.

The pipeline knows no model: it checks the config (`maelab.core.config.validate_config`, which
finds the model's config class from `model._target_`), builds the DataModule (`cfg.data`) and the
model's LightningModule (a `maelab.lit.base.MaeModule`) from the checked `model` node and the
data's `info()`, and calls only the base module's interface.

Run directory layout:
    .hydra/config.yaml          the composed config (written by Hydra, or here when composed)
    .lock                       while a run holds the directory (maelab.core.rundir)
    checkpoints/{best,last}.ckpt  best `optimized_metric`; the last epoch
    metrics.json, figures/*.png (train) ; eval/metrics.json, eval/figures/*.png (evaluate.py;
        with overrides or another checkpoint, eval-<key=value,…>/: see `results_folder`)
    tables the model writes (e.g. catchments.csv) beside metrics.json
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf

from maelab.core.config import (
    check_optimized_metric,
    load_model_config,
    model_config_class,
    validate_config,
)
from maelab.core.errors import ConfigError, DataError
from maelab.core.io import atomic_torch_save, atomic_write_json, atomic_write_text, load_checkpoint
from maelab.core.phases import PHASES
from maelab.core.rundir import claim_run_dir, is_first_rank
from maelab.lit.base import MaeModule
from maelab.lit.phases import FitPhases
from maelab.report.tables import print_metrics_table

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig, stage: str = "fit") -> L.LightningDataModule:
    """The configured DataModule, prepared and set up for `stage` (fit: train + validation data;
    test: what testing needs). A bad `data.*` setting raises the DataModule's own ConfigError /
    DataError (not Hydra's wrapper of it)."""
    dm = _instantiate(cfg.data, "data")
    dm.prepare_data()
    dm.setup(stage)
    return dm


def build_module(cfg: DictConfig, dm: L.LightningDataModule) -> MaeModule:
    """The configured LightningModule: the checked `model` node (plain types, defaults filled in)
    as keyword arguments, plus the data's `info()` and the run config (hyper-parameters)."""
    config = load_model_config(cfg)
    cls = get_class(cfg.model._target_)
    if not (isinstance(cls, type) and issubclass(cls, MaeModule)):
        raise ConfigError("model._target_", cfg.model._target_, "a maelab.lit.base.MaeModule")
    return cls(**asdict(config), data_info=asdict(dm.info()),
               run_config=OmegaConf.to_container(cfg, resolve=False))


def save_run_config(cfg: DictConfig, out_dir: Path) -> None:
    """Write `.hydra/config.yaml` when Hydra did not (config composed in code or tests)."""
    path = out_dir / ".hydra" / "config.yaml"
    if not path.exists():
        atomic_write_text(path, OmegaConf.to_yaml(cfg))


def _instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`instantiate(node)`; the library's refusal of a setting becomes a ConfigError naming `key`."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, ConfigError | DataError):
            raise cause from None
        message = " ".join(str(cause).split())
        raise ConfigError(key, str(node.get("_target_")), f"settings it accepts; it refused them: "
                          f"{type(cause).__name__}: {message[:300]}") from exc


def _instantiate_all(group: DictConfig | None, key: str) -> list:
    return [_instantiate(c, f"{key}.{name}") for name, c in (group or {}).items()
            if c is not None and "_target_" in c]


def build_trainer(cfg: DictConfig, callbacks: list, **kwargs: Any) -> L.Trainer:
    """`cfg.trainer` with `callbacks`; Lightning's own progress bar only where the config asks
    for one (`callbacks.progress_bar=null` means no bar, unless `trainer.enable_progress_bar`)."""
    has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    return _instantiate(cfg.trainer, "trainer", callbacks=callbacks,
                        enable_progress_bar=cfg.trainer.get("enable_progress_bar", has_bar), **kwargs)


def resolve_resume(cfg: DictConfig, out_dir: Path) -> str | None:
    """`ckpt_path`: null, `last` (this run directory's last.ckpt) or a path, checked to be a
    checkpoint of this model (ConfigError naming `ckpt_path` otherwise)."""
    if cfg.ckpt_path in (None, ""):
        return None
    path = out_dir / "checkpoints" / "last.ckpt" if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
    if cfg.ckpt_path == "last" and not path.exists():
        raise ConfigError("ckpt_path", "last", f"a run directory with checkpoints/last.ckpt to "
                          f"resume; there is no {path}")
    state = load_checkpoint(path, "ckpt_path")
    saved_class = _saved_model_class(state)
    if saved_class != cfg.model._target_:
        raise ConfigError("ckpt_path", str(cfg.ckpt_path), f"a checkpoint of {cfg.model._target_}; "
                          f"{path} holds a {saved_class}")
    return str(path)


def _saved_model_class(state: dict) -> str | None:
    return (state["hyper_parameters"].get("run_config") or {}).get("model", {}).get("_target_")


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning_logging() -> None:
    """Each Lightning line once, without its advertisement. Lightning adds console handlers to
    `lightning`, `lightning.pytorch`, `lightning.fabric`; under Hydra's root handler lines would
    print twice."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLitLoggerTip) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLitLoggerTip())


def _strategy(cfg: DictConfig) -> str:
    """The trainer's strategy; `ddp` becomes `ddp_spawn` inside a Hydra multirun, and looks for
    unused parameters where the model says a step may leave some out (`unused_parameters`).

    Lightning's `ddp` launcher re-runs the command line for each extra rank; under `-m` that
    command starts a second sweep. Spawned ranks run inside this job instead. Ranks started by
    SLURM or torchrun are left alone: nothing is re-run there.
    """
    strategy = cfg.trainer.get("strategy", "auto")
    external_ranks = SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    if strategy == "ddp" and not external_ranks and HydraConfig.initialized() and \
            HydraConfig.get().mode == RunMode.MULTIRUN:
        log.info("multirun: trainer.strategy=ddp -> ddp_spawn (one sweep, not one per rank)")
        strategy = "ddp_spawn"
    if strategy in ("ddp", "ddp_spawn") and load_model_config(cfg).unused_parameters:
        strategy = f"{strategy}_find_unused_parameters_true"  # the model may skip parameters
    return strategy


def _run_dir_key() -> str:
    """The setting a user gives the run directory with."""
    if HydraConfig.initialized():
        return "hydra.sweep.dir" if HydraConfig.get().mode == RunMode.MULTIRUN else "hydra.run.dir"
    return "paths.output_dir"


@PHASES.run()
def train(cfg: DictConfig, print_table: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, calibrate on validation, test the best checkpoint; write metrics.json and figures.

    The run directory is claimed first (`maelab.core.rundir`): no other run may be using it, and
    unless resuming (`ckpt_path`) it must not hold an earlier run's results. `print_table=False`
    leaves the console table to the caller."""
    _quiet_lightning_logging()
    validate_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    with claim_run_dir(out_dir, resume=cfg.ckpt_path not in (None, ""), key=_run_dir_key()):
        return _train(cfg, out_dir, print_table)


def _train(cfg: DictConfig, out_dir: Path, print_table: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    resume = resolve_resume(cfg, out_dir)
    if is_first_rank():
        save_run_config(cfg, out_dir)
    L.seed_everything(cfg.seed, workers=True)
    # the trainer first: a bad trainer / callback / logger setting fails before any data work
    trainer = build_trainer(cfg, [*_instantiate_all(cfg.get("callbacks"), "callbacks"), FitPhases()],
                            logger=_instantiate_all(cfg.get("logger"), "logger") or False,
                            strategy=_strategy(cfg))
    with PHASES.phase("data"):
        dm = build_datamodule(cfg)
    check_optimized_metric(cfg, load_model_config(cfg), dm.info())
    with PHASES.phase("model"):
        module = build_module(cfg, dm)
        if resume is not None:  # Lightning loads it again in fit: here a mismatch is explained
            load_weights(module, load_checkpoint(resume, "ckpt_path"), dm, "ckpt_path", cfg.ckpt_path)
    with PHASES.phase("fit"):
        trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    ckpt_cb = trainer.checkpoint_callback  # the first: best.ckpt (conf/callbacks); then last.ckpt
    best = Path(next(c.best_model_path for c in trainer.checkpoint_callbacks if c.best_model_path))
    # spawned ranks send back fitted weights only, not calibration: evaluate in this process then
    eval_trainer = None if trainer.strategy.launcher and isinstance(
        trainer.strategy.launcher, _MultiProcessingLauncher) else trainer
    metrics = evaluate_checkpoint(cfg, best, out_dir, trainer=eval_trainer, datamodule=dm,
                                  write_calibration=True, print_table=print_table)
    if ckpt_cb.best_model_score is not None:
        metrics["optimized_metric"] = float(ckpt_cb.best_model_score)
        metrics["optimized_metric_name"] = str(cfg.optimized_metric)
    if trainer.is_global_zero:
        atomic_write_json(out_dir / "metrics.json", metrics)
        atomic_write_json(out_dir / "timings.json", PHASES.take())
    return metrics, {"trainer": trainer, "module": module, "datamodule": dm}


# data_info fields named by the data setting a user types, where the two differ
_DATA_KEYS = {"donor_series": "donors.series", "n_donors": "donors.count"}


def load_weights(module: MaeModule, state: dict, dm: L.LightningDataModule, key: str,
                 value: Any) -> None:
    """Load the checkpoint `state` (given as `key`=`value`) into `module`. When the data `dm` do
    not have the shapes the checkpoint's model was built for, a ConfigError names each data
    setting that differs instead of a `size mismatch` traceback."""
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        saved = state["hyper_parameters"].get("data_info") or {}
        now = asdict(dm.info())
        differ = {k: (saved[k], now[k]) for k in saved
                  if k in now and saved[k] != now[k] and k != "batch_size"}
        if not differ:
            raise
        if "donor_series" in differ:  # donors on / off: the series say it, the count follows
            differ.pop("n_donors", None)
        sizes = [k for k, (old, _) in differ.items() if k == "donor_series"
                 or (isinstance(old, int) and not isinstance(old, bool))] or list(differ)
        text = "; ".join(f"data.{_DATA_KEYS.get(k, k)}={_short(differ[k][1])} (the checkpoint's: "
                         f"{_short(differ[k][0])})" for k in sizes)
        others = [k for k in differ if k not in sizes]
        raise ConfigError(key, str(value), "a checkpoint trained on data of these shapes; the "
                          f"data differ from the checkpoint's: {text}"
                          + (f" (also: {', '.join(others)})" if others else "")) from exc


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def evaluate_checkpoint(
    cfg: DictConfig, ckpt_path: Path, out_dir: Path, trainer: L.Trainer | None = None,
    datamodule: L.LightningDataModule | None = None, write_calibration: bool = False,
    recalibrate: bool = False, print_table: bool = True, split: str = "test",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load `ckpt_path` safely, calibrate on validation if needed, test; write results to out_dir.

    `split="val"` runs the validation windows through the test loop instead (for choices made
    on validation). `overrides` (evaluate.py's, as given) are recorded in metrics.json. Uses the
    base module's interface only (`maelab.lit.base.MaeModule`).
    """
    with PHASES.phase("checkpoint load"):
        state = load_checkpoint(ckpt_path, "ckpt")
    with PHASES.phase("data"):  # the validation split only if calibration needs it
        dm = datamodule or build_datamodule(cfg, stage="test")
    with PHASES.phase("model"):
        module = build_module(cfg, dm)
        load_weights(module, state, dm, "ckpt", ckpt_path)
    if trainer is None:  # one device: results are the same as gathered over ranks
        trainer = build_trainer(
            cfg, _instantiate_all(
                {k: v for k, v in (cfg.get("callbacks") or {}).items() if k == "progress_bar"},
                "callbacks"),
            logger=False, devices=1, num_nodes=1, strategy="auto")
    if recalibrate or module.needs_calibration(split):
        with PHASES.phase("calibration"):
            module.calibrate(trainer, dm)
            if write_calibration and trainer.is_global_zero:
                state["state_dict"] = {**state["state_dict"], **module.calibration_state()}
                atomic_torch_save(ckpt_path, state)
    with PHASES.phase("test data"):
        dm.setup("test")
        if split == "val":  # the validation windows through the test loop
            dm.setup("validate")
            dm.test_dataloader = dm.val_dataloader
    module.test_split = split
    with PHASES.phase("test"):
        trainer.test(module, datamodule=dm, verbose=False)
    metrics = {"model": module.name, "checkpoint": str(ckpt_path), "split": split,
               **({"overrides": _plain(overrides)} if overrides else {}), **module.summary()}
    if trainer.is_global_zero:  # every rank holds the same gathered results; one writes them
        atomic_write_json(out_dir / "metrics.json", metrics)
        with PHASES.phase("figures"):
            _log_figures(trainer.loggers, module.write_figures(dm, out_dir / "figures"))
            module.write_tables(dm, out_dir)
        if print_table:
            print_metrics_table(metrics)
    return metrics


def _log_figures(loggers: list, figures: dict) -> None:
    """Send figures to loggers that take images (TensorBoard, wandb); CSV takes none."""
    for lg in loggers:
        for name, fig in figures.items():
            if hasattr(lg.experiment, "add_figure"):
                lg.experiment.add_figure(f"eval/{name}", fig)
            elif hasattr(lg, "log_image"):
                lg.log_image(key=f"eval/{name}", images=[fig])


def load_run_config(ckpt_path: Path) -> DictConfig:
    """The config of the run that wrote `ckpt_path`: <run>/.hydra/config.yaml. A checkpoint's own
    copy of the config is never used to build anything (a crafted file could name any class)."""
    cfg_path = ckpt_path.parent.parent / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError("ckpt", str(ckpt_path), f"a checkpoint inside the run directory that "
                          f"wrote it: its config {cfg_path} is missing (data and model are rebuilt "
                          "from that file, never from the checkpoint's own copy)")
    return OmegaConf.load(cfg_path)


# what a `_target_` of a run config read from disk may build, by where it sits
SPLITS = {"test": "eval", "val": "eval_val"}  # evaluate.py split= → results folder in the run
_TARGET_KINDS = {"data": L.LightningDataModule, "trainer": L.Trainer, "callbacks": L.Callback,
                 "logger": Logger}


def _target_kind(path: tuple[str, ...]) -> type | None:
    """The base class of a `_target_` at `path` (`data`, `trainer`, `callbacks.<name>`,
    `logger.<name>`); None where no `_target_` may be."""
    if path in (("data",), ("trainer",)) or (len(path) == 2 and path[0] in ("callbacks", "logger")):
        return _TARGET_KINDS[path[0]]
    return None


def check_targets(cfg: DictConfig, source: Path) -> None:
    """Every `_target_` of the run config `source` names a class of the kind its place builds
    (`model` is checked by `build_module`), and there are none elsewhere: a config from another
    machine cannot make evaluate.py call a function such as `builtins.open`."""
    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            if "_target_" in node and path != ("model",):
                key, kind = ".".join((*path, "_target_")), _target_kind(path)
                if kind is None:
                    raise ConfigError(key, node["_target_"], f"no _target_ here (in {source})")
                try:
                    cls = get_class(str(node["_target_"]))
                except (ImportError, ValueError) as exc:
                    raise ConfigError(key, node["_target_"],
                                      f"a {kind.__name__} class (in {source})") from exc
                if not issubclass(cls, kind):
                    raise ConfigError(key, node["_target_"], f"a {kind.__name__} class (in {source})")
            for k, v in node.items():
                walk(v, (*path, str(k)))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, (*path, str(i)))

    walk(OmegaConf.to_container(cfg, resolve=False), ())


def _plain(overrides: dict[str, Any]) -> dict[str, Any]:
    """Override values as plain containers (config nodes resolved where they sit)."""
    return {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in overrides.items()}


def results_folder(split: str, ckpt_path: Path, overrides: dict[str, Any]) -> str:
    """The run's folder for an evaluation: `eval` (`eval_val` for split=val) for best.ckpt as
    trained, else `eval-<key=value,…>` named by the checkpoint and the overrides, so that no
    evaluation overwrites another's results (repeating one rewrites its own folder). A name
    over 100 characters keeps its first 80 and a hash of the whole."""
    parts = [] if ckpt_path.name == "best.ckpt" else [f"ckpt={ckpt_path.stem}"]

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k in sorted(node):
                walk(node[k], f"{key}.{k}" if key else str(k))
        else:
            parts.append(f"{key}={node}")

    walk(_plain(overrides), "")
    if not parts:
        return SPLITS[split]
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(parts))
    if len(name) > 100:
        name = f"{name[:80]}-{hashlib.sha1(name.encode()).hexdigest()[:10]}"
    return f"{SPLITS[split]}-{name}"


@PHASES.run()
def evaluate(cfg: DictConfig, print_table: bool = True) -> dict[str, Any]:
    """evaluate.py: rebuild data and model from the run's saved config and test the checkpoint.

    `data` overrides are merged into the run's data settings (`+data.num_workers=0`), or replace
    them when they name a DataModule (`data=smd`)."""
    _quiet_lightning_logging()
    split = cfg.get("split") or "test"
    if split not in SPLITS:
        raise ConfigError("split", split, " | ".join(SPLITS))
    state = load_checkpoint(cfg.ckpt, "ckpt")
    ckpt_path = Path(cfg.ckpt).expanduser().resolve()
    run_cfg = load_run_config(ckpt_path)
    check_targets(run_cfg, ckpt_path.parent.parent / ".hydra" / "config.yaml")
    saved_class = _saved_model_class(state)
    if saved_class != run_cfg.model._target_:
        raise ConfigError("ckpt", str(cfg.ckpt), f"a checkpoint of the model its run config builds "
                          f"({run_cfg.model._target_}); it holds a {saved_class}")
    run_dir = ckpt_path.parent.parent
    overrides = {k: cfg[k] for k in ("score", "mask_last_n", "point_adjust", "data")
                 if cfg.get(k) not in (None, {})}  # given on the command line (`data` is {} if not)
    threshold = {k: v for k, v in (cfg.get("threshold") or {}).items() if v is not None}
    if threshold:
        overrides["threshold"] = threshold
    for group in ("eval", "scoring"):  # only the keys given on the command line
        given = {k: v for k, v in (cfg.get(group) or {}).items() if v is not None}
        if given:
            overrides[group] = given
    named = dict(overrides)  # as given on the command line: names the results folder
    calibration = {k: v for k, v in (cfg.get("calibration") or {}).items() if v is not None}
    for key, value in calibration.items():  # model settings evaluation may change: refitted
        if "calibration" not in {f.name for f in fields(model_config_class(run_cfg.model))}:
            raise ConfigError(f"calibration.{key}", value,
                              "null: only MM-MAE checkpoints have a series calibration")
        if key == "series_stretch":
            if isinstance(value, str):
                raise ConfigError("calibration.series_stretch", value,
                                  "a list of series, e.g. '[riverflow]' ([]: none)")
            value = list(value)
            named.setdefault("calibration", {})[key] = ",".join(value) or "none"
        else:
            named.setdefault("calibration", {})[key] = value
        overrides[f"model.calibration.{key}"] = value
    regression = cfg.get("regression")
    if regression is not None:  # MM-MAE's learned baseline: fitted before the test
        if "calibration" not in {f.name for f in fields(model_config_class(run_cfg.model))}:
            raise ConfigError("regression", regression,
                              "null: only MM-MAE checkpoints have the regression baseline")
        named["regression"] = ",".join(regression) or "none"
        overrides["model.evaluation.regression"] = list(regression)
    run_cfg = OmegaConf.merge(run_cfg, {"paths": {"output_dir": str(run_dir)}})
    for key, value in overrides.items():
        replace = key == "data" and "_target_" in value  # another dataset, not a few settings
        OmegaConf.update(run_cfg, key, value, merge=not replace, force_add=True)
    validate_config(run_cfg)
    L.seed_everything(run_cfg.seed, workers=True)
    out_dir = run_dir / results_folder(split, ckpt_path, named)
    refit = "threshold" in overrides or bool(calibration)  # a fitted setting changed: refit all
    metrics = evaluate_checkpoint(run_cfg, ckpt_path, out_dir, recalibrate=refit,
                                  print_table=print_table, split=split, overrides=named)
    atomic_write_json(out_dir / "timings.json", PHASES.take())
    log.info("evaluation written to %s", out_dir)
    return metrics
