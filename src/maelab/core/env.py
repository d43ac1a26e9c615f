"""Process environment defaults: caches under the project, wandb offline without an account."""

from __future__ import annotations

import os
from pathlib import Path


def configure_environment(cache_root: str | os.PathLike | None = None) -> None:
    """Point matplotlib/wandb caches at `<cwd>/.cache` unless the user set them already."""
    root = Path(cache_root or Path.cwd() / ".cache")
    os.environ.setdefault("MPLCONFIGDIR", str(root / "matplotlib"))
    os.environ.setdefault("WANDB_CACHE_DIR", str(root / "wandb"))
    os.environ.setdefault("WANDB_CONFIG_DIR", str(root / "wandb-config"))
    os.environ.setdefault("WANDB_DATA_DIR", str(root / "wandb-data"))
    # idle OpenMP threads sleep instead of spinning: on a small shared CPU spinning threads
    # starve the busy ones (a 46x slower step was measured here, see README "Performance")
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    if not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
