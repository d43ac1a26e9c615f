"""Atomic file writes (a crash mid-write never leaves a truncated result behind) and checkpoint
loads that never run code.

torch is imported where a checkpoint is written or read, so the Hydra callbacks that write
status files start without it.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from maelab.core.errors import ConfigError


def _umask_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process umask (0o644 for umask 022)."""
    try:  # Linux: read it without setting it (os.umask is process-wide, racy under threads)
        status = Path("/proc/self/status").read_text()
        mask = next(int(ln.split()[1], 8) for ln in status.splitlines() if ln.startswith("Umask:"))
    except (OSError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: str | os.PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _umask_mode())  # mkstemp creates 0600: collaborators could not read results
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temporary file and rename."""
    return _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` via a temporary file and rename."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """`torch.save` atomically (plain tensors and containers only, so `weights_only` loads work)."""
    import torch

    return _atomic_write(path, lambda fh: torch.save(obj, fh))


def safe_torch_load(path: str | os.PathLike) -> Any:
    """Load a checkpoint with `weights_only=True`: never unpickles arbitrary objects."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: str | os.PathLike, key: str) -> dict[str, Any]:
    """The checkpoint at `path` (given by the user as `key`), loaded weights-only.

    Anything but a readable checkpoint written by train.py (a Lightning checkpoint: `state_dict`
    and `hyper_parameters`) is a ConfigError naming `key` and the file: a missing file, a
    directory (its checkpoints are listed), a text or truncated file, or pickled objects.
    """
    p = Path(path).expanduser()
    written_by = "a checkpoint file written by train.py (<run>/checkpoints/best.ckpt or last.ckpt)"
    if p.is_dir():
        found = sorted(str(c) for c in (*p.glob("*.ckpt"), *p.glob("checkpoints/*.ckpt")))
        raise ConfigError(key, str(path), f"{written_by}, not a directory"
                          + (f"; checkpoints in it: {', '.join(found)}" if found else ""))
    if not p.is_file():
        raise ConfigError(key, str(path), f"{written_by}; there is no file {p}")
    if not zipfile.is_zipfile(p):
        raise ConfigError(key, str(path), f"{written_by}; {p} is not a maelab checkpoint (not a "
                          "torch archive: a text file, or truncated)")
    try:
        state = safe_torch_load(p)
    except pickle.UnpicklingError as exc:
        raise ConfigError(key, str(path), f"{written_by}; {p} is not a maelab checkpoint: it holds "
                          "objects other than tensors and plain types, which are never loaded") from exc
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as exc:
        raise ConfigError(key, str(path), f"{written_by}; {p} is not a maelab checkpoint (unreadable: "
                          f"{str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(state, dict) or not {"state_dict", "hyper_parameters"} <= set(state):
        raise ConfigError(key, str(path), f"{written_by}; {p} is not a maelab checkpoint (no "
                          "state_dict and hyper_parameters)")
    return state
