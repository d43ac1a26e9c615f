"""Model configs check themselves before any work: full keys, types, ranges, the keys users type,
and no torch / Lightning import on the way."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from maelab.core.config import load_model_config, structured, user_key, validate_config
from maelab.core.errors import ConfigError
from maelab.models.mmmae.config import MMMAEConfig
from maelab.models.sdmae.config import THRESHOLD_METHODS, SDMAEConfig
from tests.conftest import ROOT, compose_cfg


def _raises(overrides: list[str], key: str) -> ConfigError:
    cfg = compose_cfg("train", overrides)
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert err.value.key == key, str(err.value)
    return err.value


@pytest.mark.parametrize(("overrides", "key", "expected"), [
    (["model.optim.lr=fast"], "model.optim.lr", "a number"),
    (["model.optim.lr=-1"], "model.optim.lr", "> 0"),
    (["model.net.dropout=2"], "model.net.dropout", "[0.0, 1.0)"),
    (["model.net.d_model=30"], "model.net.d_model", "a multiple of heads=4"),
    (["model.net.encoder_depth=1.5"], "model.net.encoder_depth", "an integer"),
    (["+model.net.width=3"], "model.net.width", "d_model"),
    (["model.net.decoders=[teacher,teacher]"], "model.net.decoders", "subset"),
    (["model.loss.margin=0"], "model.loss.margin", "> 0"),
    (["model.optim.betas=[0.9]"], "model.optim.betas", "two values"),
    (["score=bogus"], "score", "'discrepancy'"),  # typed at the top level, checked in the model
    (["mask_last_n=15"], "mask_last_n", "a multiple of patch_size=10"),
    (["threshold.method=median"], "threshold.method", "'percentile'"),
    (["threshold.percentile=100"], "threshold.percentile", "(0.0, 100.0)"),
    (["patch_size=7"], "patch_size", "a divisor of data.seq_length=100"),
    (["masking_ratio=1.2"], "masking_ratio", "strictly between 0 and 1"),
    (["masking=token", "masking_ratio=0.001"], "masking_ratio", "hiding between 1 and 99"),
    (["model.net.decoders=[teacher]", "score=combined"], "score", "auto or reconstruction"),
])
def test_sdmae_config_names_the_key(overrides: list[str], key: str, expected: str) -> None:
    assert expected in str(_raises(overrides, key))


@pytest.mark.parametrize(("overrides", "key"), [
    (["model.net.temporal_patch=7"], "model.net.temporal_patch"),
    (["model.hide_series=2"], "model.hide_series"),
    (["model.hide_series_others=all"], "model.hide_series_others"),
    (["model.hide_series_grids=shown"], "model.hide_series_grids"),
    (["model.hide_series_grids=visible"], "model.hide_series_grids"),  # others masked: no effect
    (["model.net.attention=joint", "model.net.grid_priors=[]", "model.net.series_priors=[]",
      "model.net.decode_fraction=1.0", "model.net.forcing_series=[riverflow]"],
     "model.net.forcing_series"),
    (["masking.series=both"], "masking.series"),
    (["model.net.antecedent_days=[]"], "model.net.antecedent_days"),
    (["model.net.antecedent_days=[3,-1]"], "model.net.antecedent_days"),
    (["model.net.attention=joint", "model.net.grid_priors=[]", "model.net.series_priors=[]",
      "model.net.decode_fraction=1.0", "model.net.antecedent_days=[3,90]"],
     "model.net.antecedent_days"),
    (["model.evaluation.cross_modal=null", "model.evaluation.regression=[evaporation]"],
     "model.evaluation.regression"),
    (["model.evaluation.regression_windows=0"], "model.evaluation.regression_windows"),
    (["model.evaluation.climatology_window=month"], "model.evaluation.climatology_window"),
    (["model.loss.weights.riverflow=heavy"], "model.loss.weights.riverflow"),
    (["data.patch_size=7"], "data.patch_size"),
    (["masking_ratio=0.999"], "masking_ratio"),
])
def test_mmmae_config_names_the_key(overrides: list[str], key: str) -> None:
    _raises(["experiment=hydro", *overrides], key)


def test_checked_config_fills_defaults_and_is_what_the_module_gets() -> None:
    cfg = compose_cfg("train", ["masking=token"])
    config = load_model_config(cfg)
    assert isinstance(config, SDMAEConfig)
    assert config.masking.strategy == "token" and config.masking.patch_size == 1  # default
    assert config.scoring.mask_last_n == cfg.mask_last_n and config.seed == cfg.seed
    assert isinstance(load_model_config(compose_cfg("train", ["experiment=hydro"])), MMMAEConfig)


def test_unknown_model_target_names_the_key() -> None:
    cfg = compose_cfg("train", ["model._target_=maelab.models.bogus.module.BogusModule"])
    with pytest.raises(ConfigError, match=r"model\._target_.*BogusConfig"):
        validate_config(cfg)


def test_user_key_follows_plain_interpolations() -> None:
    cfg = OmegaConf.create({"n": 3, "group": {"n": "${n}", "m": 1},
                            "model": {"group": "${group}", "x": "${group.m}", "y": "a${n}"}})
    assert user_key(cfg, "model.group.n") == "n"
    assert user_key(cfg, "model.x") == "group.m"
    assert user_key(cfg, "model.y") == "model.y"  # not a plain interpolation
    assert user_key(cfg, "model.missing") == "model.missing"


def test_structured_prefixes_nested_value_errors() -> None:
    with pytest.raises(ConfigError) as err:
        structured(SDMAEConfig, {"scoring": {"threshold": {"percentile": 0}}}, "model")
    assert err.value.key == "model.scoring.threshold.percentile"


def test_threshold_methods_match_the_scoring_functions() -> None:
    from maelab.scoring.thresholds import THRESHOLD_METHODS as SCORING_METHODS

    assert THRESHOLD_METHODS == SCORING_METHODS


def test_validation_imports_neither_torch_nor_lightning() -> None:
    """A bad key is reported without paying for torch / Lightning imports."""
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from maelab.core.config import validate_config\n"
        f"with initialize_config_dir(config_dir={str(ROOT / 'conf')!r}, version_base='1.3'):\n"
        "    for o in ([], ['experiment=hydro']):\n"
        "        validate_config(compose('train', overrides=o))\n"
        "print(sorted(m for m in ('torch', 'lightning', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
