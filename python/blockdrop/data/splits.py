"""Derived datasets: a held-out validation split, a subset, another input normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from blockdrop.data.datasets import DataInfo, ImageArrayDataset, ImageFileDataset
from blockdrop.data.transforms import SmallImageTransform, imagenet_transform

__all__ = ["split_train_val", "take_subset", "with_normalization"]


def _stratified_pick(labels: Tensor, n: int, seed: int) -> Tensor:
    """Sorted indices of ``n`` items, as equal a share of every class as possible, drawn with
    ``seed``."""
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = [(labels == c).nonzero().flatten() for c in classes.tolist()]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    quota = [n // len(classes) + (1 if i < n % len(classes) else 0) for i in range(len(classes))]
    if any(q > len(idx) for q, idx in zip(quota, per_class)):
        raise ValueError(
            f"n_val: {n} held-out images do not fit the classes' sizes {[len(i) for i in per_class]}"
        )
    return torch.cat([idx[:q] for q, idx in zip(quota, per_class)]).sort().values


def split_train_val(info: DataInfo, n_val: int, seed: int = 0) -> tuple[DataInfo, DataInfo]:
    """Hold ``n_val`` images out of a training set: ``(train, val)``, disjoint, stratified by
    class, drawn with ``seed``; ``val`` is not augmented. Settings are chosen on ``val``; the test
    set stays untouched until the end."""
    ds = info.dataset
    n = len(ds)
    if not 0 < n_val < n:
        raise ValueError(f"n_val: expected 0 < n_val < {n} (the training set's size), got {n_val}")
    if isinstance(ds, ImageArrayDataset):
        labels = ds.labels
    elif isinstance(ds, ImageFileDataset):
        labels = torch.tensor([lab for _, lab in ds.samples])
    else:
        raise TypeError(f"split_train_val: unsupported dataset {type(ds).__name__}")
    val_idx = _stratified_pick(labels, n_val, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    train_idx = keep.nonzero().flatten()
    if isinstance(ds, ImageArrayDataset):
        t = ds.transform
        train_ds: Any = ImageArrayDataset(ds.images[train_idx], ds.labels[train_idx], t, ds.seed)
        val_tf = SmallImageTransform(False, t.pad, t.flip, t.mean, t.std)
        val_ds: Any = ImageArrayDataset(ds.images[val_idx], ds.labels[val_idx], val_tf, ds.seed)
    else:
        train_ds = ImageFileDataset(
            [ds.samples[i] for i in train_idx.tolist()], ds.transform, ds.train, ds.seed
        )
        val_ds = ImageFileDataset(
            [ds.samples[i] for i in val_idx.tolist()],
            imagenet_transform(False, info.image_size),
            False,
            ds.seed,
        )
    tag = f"held out {n_val}, seed {seed}"
    return (
        DataInfo(train_ds, info.classes, info.image_size, f"{info.source} (minus {tag})"),
        DataInfo(val_ds, info.classes, info.image_size, f"{info.source} ({tag})"),
    )


def with_normalization(info: DataInfo, mean: Sequence[float], std: Sequence[float]) -> DataInfo:
    """``info`` with its images normalised by ``mean``/``std`` instead (e.g. a converted official
    checkpoint's: CIFAR statistics, or mean 0 / std 1 for models that take [0, 1] images)."""
    ds = info.dataset
    if isinstance(ds, ImageArrayDataset):
        t = ds.transform
        new: Any = ImageArrayDataset(
            ds.images, ds.labels, SmallImageTransform(t.train, t.pad, t.flip, mean, std), ds.seed
        )
    elif isinstance(ds, ImageFileDataset):
        new = ImageFileDataset(
            ds.samples, imagenet_transform(ds.train, info.image_size, mean, std), ds.train, ds.seed
        )
    else:
        raise TypeError(f"with_normalization: unsupported dataset {type(ds).__name__}")
    return DataInfo(new, info.classes, info.image_size, info.source)


def take_subset(info: DataInfo, n: int | None, seed: int = 0) -> DataInfo:
    """``info`` limited to ``n`` images (all when ``n`` is None or larger): a seeded random
    subset of in-memory images, the first ``n`` files otherwise; the source says which."""
    ds = info.dataset
    if n is None or n >= len(ds):
        return info
    if isinstance(ds, ImageArrayDataset):
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        sub: Any = ImageArrayDataset(ds.images[idx], ds.labels[idx], ds.transform, ds.seed)
        label = f"random {n}"
    else:
        sub = ImageFileDataset(ds.samples[:n], ds.transform, ds.train, ds.seed)
        label = f"first {n}"
    return DataInfo(sub, info.classes, info.image_size, f"{info.source} ({label})")
