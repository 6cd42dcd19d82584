"""Deterministic, shardable, resumable loading: the sampler, the loader, and pointing both at an
epoch (and a batch within it, to resume)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EpochSampler", "make_loader", "set_loader_epoch"]


class EpochSampler(Sampler[int]):
    """Deterministic, shardable, resumable sampler.

    Epoch ``e``: a permutation drawn from ``seed + e`` (or ``arange`` if not shuffling), padded
    to a multiple of ``world_size`` by repeating its head, then every ``world_size``-th index
    from ``rank``; the first ``start`` indices of this rank are skipped (resume mid-epoch).
    """

    def __init__(
        self, n: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch, before skipping."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        total = -(-self.n // self.world) * self.world
        if self.n:  # repeat the head cyclically (more than once when n < world_size - 1)
            idx = (idx * -(-total // self.n))[:total]
        return idx[self.rank : total : self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start :])

    def __len__(self) -> int:
        return max(0, -(-self.n // self.world) - self.start)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over an :class:`EpochSampler` (``loader.sampler``); training drops the last
    partial batch.  Call ``loader.sampler.set_epoch(e, start)`` and ``dataset.set_epoch(e)``
    (or :func:`set_loader_epoch`) before each epoch."""
    n = len(dataset)  # type: ignore[arg-type]  # torch stubs: Dataset has no __len__
    sampler = EpochSampler(n, shuffle=train, seed=seed, rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Point ``loader`` at ``epoch``, skipping its first ``start_batch`` batches."""
    cast(EpochSampler, loader.sampler).set_epoch(epoch, start_batch * int(loader.batch_size or 1))
    ds = loader.dataset
    if not hasattr(ds, "set_epoch"):  # a torch.utils.data.Subset: its underlying dataset's epoch
        ds = getattr(ds, "dataset", ds)
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
