"""Train a model: `python train.py [overrides]` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from maelab.core.env import configure_environment


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from maelab.core.config import validate_config
    from maelab.core.phases import PHASES

    validate_config(cfg)  # before torch and Lightning are imported: a bad setting fails in seconds
    with PHASES.phase("import"):  # torch, Lightning, the model code: timings.json
        from maelab.pipeline import train

    metrics, _ = train(cfg)
    return metrics.get("optimized_metric")


if __name__ == "__main__":
    configure_environment()
    main()
