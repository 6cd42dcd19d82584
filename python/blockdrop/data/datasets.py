"""Datasets: images in memory (small ones, e.g. CIFAR) or on disk, with per-epoch augmentation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from blockdrop.data.transforms import SmallImageTransform, sample_seed

__all__ = ["DataInfo", "DatasetNotFoundError", "ImageArrayDataset", "ImageFileDataset"]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset path does not exist or holds no recognisable dataset."""


@dataclass
class DataInfo:
    """A dataset and what the trainer needs to know about it."""

    dataset: ImageArrayDataset | ImageFileDataset
    classes: list[str]
    image_size: int  # side of the network input (H == W)
    source: str  # what was loaded, for logs

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class _EpochDataset(Dataset):
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (call before building the iterator)."""
        self.epoch = int(epoch)


class ImageArrayDataset(_EpochDataset):
    """In-memory images ``uint8 [N,H,W,3]`` + labels ``int64 [N]``; item -> ``(float [3,H,W], int)``."""

    def __init__(self, images: Tensor, labels: Tensor, transform: SmallImageTransform, seed: int = 0) -> None:
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[-1] == 3
        self.images, self.labels, self.transform, self.seed = images, labels.long(), transform, seed

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        gen = None
        if self.transform.train:
            gen = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, i))
        return self.transform(self.images[i], gen), int(self.labels[i])

    def with_transform(self, transform: SmallImageTransform) -> ImageArrayDataset:
        """Same images, another transform (e.g. train vs eval)."""
        return ImageArrayDataset(self.images, self.labels, transform, self.seed)


class ImageFileDataset(_EpochDataset):
    """Images on disk (large ones); item -> ``(float [3,S,S], int)`` through torchvision transforms
    run under a per-sample seed."""

    def __init__(
        self, samples: list[tuple[str, int]], transform: Callable[[Any], Tensor], train: bool, seed: int = 0
    ) -> None:
        self.samples, self.transform, self.train, self.seed = samples, transform, train, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        if not self.train:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, self.epoch, i))
            return self.transform(img), label
