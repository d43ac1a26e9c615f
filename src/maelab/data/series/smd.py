"""Server Machine Dataset (SMD) loading, for both file layouts, with input checks.

Two layouts are read, detected from what lies under `root`:

- ``npy`` (the shared re-packaging): ``<root>/machine-X-Y_train.npy``, ``..._test.npy``,
  ``..._test_label.npy``;
- ``txt`` (the original OmniAnomaly layout): ``<root>/train/machine-X-Y.txt``,
  ``<root>/test/machine-X-Y.txt``, ``<root>/test_label/machine-X-Y.txt`` (comma-separated
  values, one label per line).

Optional training labels (``train_labels=True``) sit beside them: ``<root>/machine-X-Y_train_label.npy``
or ``<root>/train_label/machine-X-Y.txt``, one 0/1 per train row. The public SMD has none.

If a root holds both, the ``npy`` files are read. Every check runs on load, so bad input fails
before any training: missing files, unknown machines, non-finite values, label lengths, labels
other than 0/1. Columns constant on train are dropped from train and test with a warning.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maelab.core.errors import ConfigError, DataError

SPLITS = ("train", "test", "test_label", "train_label")
_NAME = re.compile(r"^machine-(\d+)-(\d+)$")
_NPY = re.compile(r"^(machine-\d+-\d+)_train\.npy$")


@dataclass(frozen=True)
class SMDMachine:
    """One SMD machine after checks and constant-column removal."""

    name: str  # e.g. "machine-1-2"
    train: np.ndarray  # (T_train, F) float32
    test: np.ndarray  # (T_test, F) float32
    test_labels: np.ndarray  # (T_test,) int64, 1 = anomalous minute
    features: np.ndarray  # (F,) int64 column indices kept from the original files
    paths: dict[str, Path]  # split ("train", "test", "test_label"[, "train_label"]) -> file
    layout: str  # "npy" or "txt"
    train_labels: np.ndarray | None = None  # (T_train,) int64 when training labels were read


def _sort_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in _NAME.match(name).groups())


def detect_layout(root: str | Path) -> str:
    """Return ``"npy"`` or ``"txt"`` for an SMD root; ConfigError if neither is found."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError("data.root", str(root), "an existing directory holding SMD files")
    if any(_NPY.match(p.name) for p in root.glob("machine-*_train.npy")):
        return "npy"
    if any(_NAME.match(p.stem) for p in (root / "train").glob("machine-*.txt")):
        return "txt"
    raise ConfigError(
        "data.root",
        str(root),
        "a directory with <root>/machine-X-Y_train.npy files or <root>/train/machine-X-Y.txt",
    )


def list_machines(root: str | Path) -> list[str]:
    """Names of the machines that have a train file under `root`, in numeric order."""
    root = Path(root).expanduser()
    if detect_layout(root) == "npy":
        names = [m.group(1) for p in root.glob("*_train.npy") if (m := _NPY.match(p.name))]
    else:
        names = [p.stem for p in (root / "train").glob("*.txt") if _NAME.match(p.stem)]
    return sorted(names, key=_sort_key)


def _canonical(name: object) -> str:
    text = str(name).strip()
    return text if text.startswith("machine-") else f"machine-{text}"


def resolve_machines(root: str | Path, machine: str | Sequence[str]) -> list[str]:
    """Expand `machine` (``"1-2"``, ``"machine-1-2"``, a list of those, or ``"all"``)."""
    found = list_machines(root)
    if isinstance(machine, str) and machine.strip().lower() == "all":
        return found
    requested = [machine] if isinstance(machine, str) else list(machine)
    if not requested:
        raise ConfigError("data.machine", machine, f"`all` or machines found in {root}: {found}")
    names = []
    for item in requested:
        name = _canonical(item)
        if name not in found:
            raise ConfigError(
                "data.machine", item, f"`all` or one of the machines found in {root}: {found}"
            )
        if name not in names:
            names.append(name)
    return names


def _paths(root: Path, name: str, layout: str) -> dict[str, Path]:
    if layout == "npy":
        return {split: root / f"{name}_{split}.npy" for split in SPLITS}
    return {split: root / split / f"{name}.txt" for split in SPLITS}


def _read(path: Path, layout: str, labels: bool = False) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"SMD file missing: {path}")
    try:
        if layout == "npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=1 if labels else 2)
    except ValueError as err:
        raise DataError(f"{path}: cannot be read as numbers ({err})") from err
    if labels:
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise DataError(f"{path}: labels must be one value per row, got shape {arr.shape}")
        return arr
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a (time, features) array, got shape {arr.shape}")
    return arr


def _check_finite(arr: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(arr)  # (T, F)
    if bad.any():
        rows, cols = np.nonzero(bad)  # row-major: the first hit is the first bad row
        r, c = int(rows[0]), int(cols[0])
        raise DataError(
            f"{path}: non-finite value ({arr[r, c]}) in column {c}, first at row {r} "
            f"({int(bad.sum())} such values)"
        )


def _check_labels(labels: np.ndarray, path: Path, series: Path, length: int) -> np.ndarray:
    """0/1 labels, one per row of `series`; DataError naming `path` otherwise."""
    if len(labels) != length:
        raise DataError(f"{path}: {len(labels)} labels, but the series {series} has {length} rows")
    if not np.isin(labels, (0, 1)).all():
        bad = np.unique(labels[~np.isin(labels, (0, 1))])[:5]
        raise DataError(f"{path}: labels must be 0 or 1, found {bad.tolist()}")
    return labels.astype(np.int64)


def _read_machine(
    root: Path, name: str, layout: str, train_labels: bool = False
) -> tuple[dict[str, np.ndarray], dict]:
    """Read and check one machine's files (all columns kept)."""
    paths = _paths(root, name, layout)
    if not train_labels:
        del paths["train_label"]
    train = _read(paths["train"], layout)
    test = _read(paths["test"], layout)
    _check_finite(train, paths["train"])
    _check_finite(test, paths["test"])
    if test.shape[1] != train.shape[1]:
        raise DataError(
            f"{paths['test']}: {test.shape[1]} columns, but {paths['train']} has {train.shape[1]}"
        )
    arrays = {
        "train": train.astype(np.float32, copy=False),
        "test": test.astype(np.float32, copy=False),
    }
    if "train_label" in paths and not paths["train_label"].is_file():
        raise DataError(f"SMD training labels missing: {paths['train_label']} (data.train_labels=true "
                        "needs one 0/1 label per train row; the public SMD has none)")
    for split, series in (("test_label", "test"), ("train_label", "train")):
        if split in paths:
            labels = _read(paths[split], layout, labels=True)
            arrays[split] = _check_labels(labels, paths[split], paths[series], len(arrays[series]))
    return arrays, paths


def constant_columns(train: np.ndarray) -> np.ndarray:
    """Indices of the columns of `train` (T, F) whose values never change."""
    return np.flatnonzero(np.ptp(train, axis=0) == 0)


def load_smd_machines(
    root: str | Path, machine: str | Sequence[str], train_labels: bool = False
) -> list[SMDMachine]:
    """Load the selected machines with one shared feature set (and their training labels).

    A column constant on the train split of any selected machine is dropped from every
    machine (train and test), with a warning naming the columns, so all machines keep the
    same features.
    """
    root = Path(root).expanduser()
    layout = detect_layout(root)
    names = resolve_machines(root, machine)
    raw = {name: _read_machine(root, name, layout, train_labels) for name in names}
    widths = {name: arrays["train"].shape[1] for name, (arrays, _) in raw.items()}
    if len(set(widths.values())) > 1:
        raise DataError(f"SMD machines under {root} differ in feature count: {widths}")
    drop: set[int] = set()
    for name, (arrays, paths) in raw.items():
        const = constant_columns(arrays["train"])
        if const.size:
            drop.update(const.tolist())
            warnings.warn(
                f"{name}: columns {const.tolist()} are constant on train ({paths['train']}); "
                "dropped from train and test",
                stacklevel=2,
            )
    keep = np.setdiff1d(np.arange(next(iter(widths.values()))), sorted(drop))  # (F,)
    if keep.size == 0:
        raise DataError(f"SMD machines {names} under {root}: every column is constant on train")
    return [
        SMDMachine(
            name=name,
            train=np.ascontiguousarray(arrays["train"][:, keep]),
            test=np.ascontiguousarray(arrays["test"][:, keep]),
            test_labels=arrays["test_label"],
            features=keep.astype(np.int64),
            paths=paths,
            layout=layout,
            train_labels=arrays.get("train_label"),
        )
        for name, (arrays, paths) in raw.items()
    ]


def load_smd(root: str | Path, machine: str) -> SMDMachine:
    """Load one machine (``"1-2"`` or ``"machine-1-2"``), dropping its constant train columns."""
    if not isinstance(machine, str) or machine.strip().lower() == "all":
        raise ConfigError("machine", machine, "a single machine name such as 'machine-1-2'")
    return load_smd_machines(root, machine)[0]
