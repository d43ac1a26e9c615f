"""CPU seconds from `python train.py <bad setting>` to its message, beside importing the pipeline.

train.py checks the config before torch and Lightning are imported, so a bad setting costs an
interpreter, Hydra and the config check only. Both commands run in fresh processes, interleaved
(A B, B A, …); CPU time is the children's user + system time (`getrusage`), so other load on a
shared machine does not count. The message must name the key, else the benchmark fails.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, interleaved, median


def cpu_seconds(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """User + system CPU seconds of the process `cmd` (run to its end here)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def run(override: str = "model.optim.lr=fast", repeats: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Median CPU seconds of the failing train.py and of `import maelab.pipeline`."""
    key = override.split("=", 1)[0]
    with tempfile.TemporaryDirectory() as tmp:
        def config_error() -> float:
            seconds, proc = cpu_seconds(
                [sys.executable, "train.py", override, f"hydra.run.dir={tmp}/run"], ROOT)
            if proc.returncode != 1 or f"`{key}=" not in proc.stderr:
                raise RuntimeError(f"train.py {override} did not fail naming {key}: "
                                   f"{proc.stderr.strip()[-300:]}")
            return seconds

        def import_pipeline() -> float:
            return cpu_seconds([sys.executable, "-c", "import maelab.pipeline"], ROOT)[0]

        fns = {"config_error": config_error, "import_pipeline": import_pipeline}
        for _ in range(warmup):  # file-system caches
            for fn in fns.values():
                fn()
        times = interleaved(fns, repeats)
    error_s, import_s = median(times["config_error"]), median(times["import_pipeline"])
    return {"settings": {"override": override, "repeats": repeats}, "cpu_s": error_s,
            "import_pipeline_cpu_s": import_s, "import_over_error": import_s / error_s}


def format_table(results: dict[str, Any]) -> str:
    return (f"python train.py {results['settings']['override']}: {results['cpu_s']:.2f} s CPU to "
            f"the message; importing the pipeline {results['import_pipeline_cpu_s']:.2f} s")


if __name__ == "__main__":
    print(format_table(run()))
