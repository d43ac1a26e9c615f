"""Samplers that shard across DDP ranks themselves (`trainer.use_distributed_sampler=false`).

Training order depends only on (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one, and rank r of W takes every W-th index of that order: the W per-rank batches
of a step together are exactly the batch a single process would take. Lightning calls
`set_epoch` before each epoch. Shards are padded by repeating indices to equal length; evaluation
drops the copies when it gathers results.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shard(order: torch.Tensor) -> list[int]:
    rank, world = _rank_and_world()
    padded = order.repeat(math.ceil(max(len(order), 1) * world / max(len(order), 1)))
    return padded[: math.ceil(len(order) / world) * world][rank::world].tolist()


class EpochSeededSampler(Sampler[int]):
    """This rank's share of a permutation of range(n) drawn from seed + epoch."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(_shard(torch.randperm(self.n, generator=g)))

    def __len__(self) -> int:
        return math.ceil(self.n / _rank_and_world()[1])


class ShardSampler(Sampler[int]):
    """This rank's share of range(n) in order (validation and test)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        return iter(_shard(torch.arange(self.n)))

    def __len__(self) -> int:
        return math.ceil(self.n / _rank_and_world()[1])


def worker_start_method(num_workers: int) -> str | None:
    """The start method for DataLoader workers: the interpreter's default (None), except inside a
    joblib/loky process (`hydra/launcher=joblib`), whose default `loky` method cannot start
    plain multiprocessing workers; there the platform's own default (fork on Linux, else spawn)."""
    if num_workers == 0 or multiprocessing.get_start_method(allow_none=True) != "loky":
        return None
    return "fork" if sys.platform.startswith("linux") else "spawn"


def sharded_loader(
    data: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0, **kwargs
) -> DataLoader:
    """DataLoader over this rank's share: epoch-seeded shuffle for training, in order otherwise.
    Workers persist across epochs unless `persistent_workers=False` is passed."""
    sampler = EpochSeededSampler(len(data), seed) if shuffle else ShardSampler(len(data))
    kwargs["persistent_workers"] = kwargs.get("persistent_workers", True) and num_workers > 0
    kwargs.setdefault("multiprocessing_context", worker_start_method(num_workers))
    return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      **kwargs)
