"""Shared pieces of the benchmark suite: config composition, timing, RSS, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parent.parent  # the project: benchmarks/ sits beside conf/
CONF_DIR = ROOT / "conf"
T = TypeVar("T")


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """`conf/train.yaml` composed with `overrides` (Hydra compose API, no run directory)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def device_of(device: str | None) -> torch.device:
    """`device` or the accelerator when there is one."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (no-op on CPU), so wall-clock timings are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def interleaved(fns: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Call each fn once per round, alternating the order every round (A B, B A, …).

    Each fn returns its own measurement; returns {name: [one value per round]}.
    """
    out: dict[str, list[T]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(fns[name]())
    return out


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of `fn` takes, queued device work included."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def _status_kb(key: str) -> float:
    """A `kB` field of /proc/self/status (Linux); NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def rss_mb() -> dict[str, float]:
    """This process's memory now and at its peak (MB): rss, peak (VmHWM), anon, file."""
    return {"rss": _status_kb("VmRSS") / 1024, "peak": _status_kb("VmHWM") / 1024,
            "anon": _status_kb("RssAnon") / 1024, "file": _status_kb("RssFile") / 1024}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 \
        if hasattr(os, "sysconf") else float("nan")
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1),
        "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def run_process(cmd: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                cwd: Path = ROOT) -> dict[str, Any]:
    """Run `cmd` to completion, stdout and stderr into `log_path`.

    Returns its exit code, wall-clock seconds (measured here) and CPU seconds (user + system of
    that process and the children it waited for, from the kernel's accounting).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                env=None if env is None else dict(env))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime}


def log_tail(log_path: Path, lines: int = 1) -> str:
    """The last non-empty lines of a log (the error of a failed job)."""
    text = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    return "\n".join(text[-lines:])


def single_thread_env(**extra: str) -> dict[str, str]:
    """This environment with one OpenMP thread, passive waits and `extra`."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive", **extra}
