"""The walk from the seed study's configuration to maelab's pre-issue default composes, checks,
and changes a few settings per step."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from maelab.core.config import validate_config
from tests.conftest import CONF, compose_cfg

STEPS = sorted(p.stem for p in Path(CONF, "walk").glob("s*.yaml"))


def leaves(cfg) -> dict:
    flat = {k: cfg[k] for k in ("score", "patch_size", "masking_ratio", "mask_last_n")}
    for group in ("model", "data", "trainer", "scoring", "eval"):
        node = OmegaConf.to_container(cfg[group], resolve=False)

        def walk(prefix, value):
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}", v)
            else:
                flat[prefix] = value

        walk(group, node)
    return flat


def test_walk_steps_are_the_sweep():
    experiment = OmegaConf.load(Path(CONF, "experiment", "sdmae_walk.yaml"))
    assert experiment.hydra.sweeper.params.walk.split(",") == STEPS and STEPS[0] == "s00_seed"


@pytest.mark.parametrize("before, after", list(zip(STEPS[:-1], STEPS[1:], strict=True)))
def test_each_step_changes_one_knob(before, after, tmp_path):
    a = compose_cfg("train", ["experiment=sdmae_walk", f"walk={before}"], tmp_path)
    b = compose_cfg("train", ["experiment=sdmae_walk", f"walk={after}"], tmp_path)
    validate_config(b)
    changed = {k for k, v in leaves(b).items() if leaves(a).get(k) != v}
    assert 1 <= len(changed) <= 8, changed
