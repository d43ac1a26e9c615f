"""Evaluate a checkpoint: `python evaluate.py ckpt=<run>/checkpoints/best.ckpt [overrides]`."""

import hydra
from omegaconf import DictConfig

from maelab.core.env import configure_environment


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from maelab.core.phases import PHASES

    with PHASES.phase("import"):  # torch, Lightning, the model code: timings.json
        from maelab.pipeline import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    configure_environment()
    main()
