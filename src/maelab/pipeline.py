"""train(cfg) and evaluate(cfg): everything between Hydra's config and the files of a run.

The pipeline knows no model: it checks the config (`maelab.core.config.validate_config`, which
finds the model's config class from `model._target_`), builds the DataModule (`cfg.data`) and the
model's LightningModule (a `maelab.lit.base.MaeModule`) from the checked `model` node and the
data's `info()`, and calls only the base module's interface.

Run directory layout:
    .hydra/config.yaml          the composed config (written by Hydra, or here when composed)
    checkpoints/{best,last}.ckpt
    metrics.json, figures/*.png (train) ; eval/metrics.json, eval/figures/*.png (evaluate.py)
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf

from maelab.core.config import load_model_config, validate_config
from maelab.core.errors import ConfigError, DataError
from maelab.core.io import atomic_torch_save, atomic_write_json, atomic_write_text, safe_torch_load
from maelab.lit.base import MaeModule
from maelab.report.tables import print_metrics_table

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The configured DataModule, prepared and set up for fitting. A bad `data.*` setting raises
    the DataModule's own ConfigError / DataError (not Hydra's wrapper of it)."""
    try:
        dm = instantiate(cfg.data)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError | DataError):
            raise exc.__cause__ from None
        raise
    dm.prepare_data()
    dm.setup("fit")
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


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def resolve_resume(cfg: DictConfig, out_dir: Path) -> str | None:
    """`ckpt_path`: null, `last` (this run directory's last.ckpt) or a path."""
    if cfg.ckpt_path in (None, ""):
        return None
    path = out_dir / "checkpoints" / "last.ckpt" if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path!r}: no checkpoint at {path}")
    return str(path)


def _single_log_lines() -> None:
    """Lightning adds its own console handler; under Hydra's root handler lines print twice."""
    if logging.getLogger().handlers:
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True


def _strategy(cfg: DictConfig) -> str:
    """The trainer's strategy; `ddp` becomes `ddp_spawn` inside a Hydra multirun.

    Lightning's `ddp` launcher re-runs the command line for each extra rank; under `-m` that
    command starts a second sweep. Spawned ranks run inside this job instead. Ranks started by
    SLURM or torchrun are left alone: nothing is re-run there.
    """
    strategy = cfg.trainer.get("strategy", "auto")
    external_ranks = SLURMEnvironment.detect() or TorchElasticEnvironment.detect()
    if strategy == "ddp" and not external_ranks and HydraConfig.initialized() and \
            HydraConfig.get().mode == RunMode.MULTIRUN:
        log.info("multirun: trainer.strategy=ddp -> ddp_spawn (one sweep, not one per rank)")
        return "ddp_spawn"
    return strategy


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, calibrate on validation, test the best checkpoint; write metrics.json and figures."""
    _single_log_lines()
    validate_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        save_run_config(cfg, out_dir)
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    resume = resolve_resume(cfg, out_dir)
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=_instantiate_all(cfg.get("callbacks")),
                          logger=loggers or False, strategy=_strategy(cfg))
    trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
    ckpt_cb = trainer.checkpoint_callback
    best = Path(ckpt_cb.best_model_path or ckpt_cb.last_model_path)
    # spawned ranks send back fitted weights only, not calibration: evaluate in this process then
    eval_trainer = None if trainer.strategy.launcher and isinstance(
        trainer.strategy.launcher, _MultiProcessingLauncher) else trainer
    metrics = evaluate_checkpoint(cfg, best, out_dir, trainer=eval_trainer, datamodule=dm,
                                  write_calibration=True)
    if ckpt_cb.best_model_score is not None:
        metrics["optimized_metric"] = float(ckpt_cb.best_model_score)
        metrics["optimized_metric_name"] = str(cfg.optimized_metric)
    if trainer.is_global_zero:
        atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics, {"trainer": trainer, "module": module, "datamodule": dm}


def evaluate_checkpoint(
    cfg: DictConfig, ckpt_path: Path, out_dir: Path, trainer: L.Trainer | None = None,
    datamodule: L.LightningDataModule | None = None, write_calibration: bool = False,
    recalibrate: bool = False,
) -> dict[str, Any]:
    """Load `ckpt_path` safely, calibrate on validation if needed, test; write results to out_dir.

    Uses the base module's interface only (`maelab.lit.base.MaeModule`).
    """
    state = safe_torch_load(ckpt_path)
    dm = datamodule or build_datamodule(cfg)
    module = build_module(cfg, dm)
    module.load_state_dict(state["state_dict"])
    if trainer is None:  # one device: results are the same as gathered over ranks
        trainer = instantiate(
            cfg.trainer, logger=False, devices=1, num_nodes=1, strategy="auto",
            callbacks=_instantiate_all(
                {k: v for k, v in (cfg.get("callbacks") or {}).items() if k == "progress_bar"}))
    if recalibrate or not module.calibrated:
        module.calibrate(trainer, dm)
        if write_calibration and trainer.is_global_zero:
            state["state_dict"] = {**state["state_dict"], **module.calibration_state()}
            atomic_torch_save(ckpt_path, state)
    trainer.test(module, datamodule=dm, verbose=False)
    metrics = {"model": module.name, "checkpoint": str(ckpt_path), **module.summary()}
    if trainer.is_global_zero:  # every rank holds the same gathered results; one writes them
        atomic_write_json(out_dir / "metrics.json", metrics)
        _log_figures(trainer.loggers, module.write_figures(dm, out_dir / "figures"))
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


def load_run_config(ckpt_path: Path, state: dict) -> DictConfig:
    """The config of the run that wrote `ckpt_path`: <run>/.hydra/config.yaml, else the ckpt's."""
    cfg_path = ckpt_path.parent.parent / ".hydra" / "config.yaml"
    if cfg_path.exists():
        return OmegaConf.load(cfg_path)
    run_config = state.get("hyper_parameters", {}).get("run_config")
    if run_config is None:
        raise FileNotFoundError(
            f"no run config for {ckpt_path}: expected {cfg_path} (the run's Hydra config) or "
            "hyper-parameters inside the checkpoint"
        )
    return OmegaConf.create(run_config)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """evaluate.py: rebuild data and model from the run's saved config and test the checkpoint."""
    ckpt_path = Path(cfg.ckpt).expanduser().resolve()
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt={cfg.ckpt!r}: no such checkpoint file")
    state = safe_torch_load(ckpt_path)
    if "state_dict" not in state or "hyper_parameters" not in state:
        raise ValueError(f"ckpt={cfg.ckpt!r} is not a maelab/Lightning checkpoint")
    run_cfg = load_run_config(ckpt_path, state)
    saved_class = (state["hyper_parameters"].get("run_config") or {}).get("model", {}).get("_target_")
    if saved_class != run_cfg.model._target_:
        raise ValueError(f"ckpt={cfg.ckpt!r} holds a {saved_class} but the run config builds "
                         f"{run_cfg.model._target_}")
    run_dir = ckpt_path.parent.parent
    overrides = {k: cfg[k] for k in ("score", "mask_last_n", "threshold", "point_adjust", "data")
                 if cfg.get(k) is not None}
    for group in ("eval", "scoring"):  # only the keys given on the command line
        given = {k: v for k, v in (cfg.get(group) or {}).items() if v is not None}
        if given:
            overrides[group] = given
    run_cfg = OmegaConf.merge(run_cfg, {"paths": {"output_dir": str(run_dir)}})
    for key, value in overrides.items():
        OmegaConf.update(run_cfg, key, value, merge=key != "data", force_add=True)
    validate_config(run_cfg)
    L.seed_everything(run_cfg.seed, workers=True)
    return evaluate_checkpoint(run_cfg, ckpt_path, run_dir / "eval",
                               recalibrate="threshold" in overrides)
