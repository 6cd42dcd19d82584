"""Normalisation constants and augmentation: a function of ``(seed, epoch, index)`` only, so a run
resumed mid-epoch sees the same images as an uninterrupted one, whatever the number of workers."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MEAN", "STD", "SmallImageTransform", "denormalize", "imagenet_transform", "sample_seed"]

#: Normalisation used by the pretrained CIFAR ResNets in ../shared/data (ImageNet statistics).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s augmentation in ``epoch`` of a run seeded ``seed``: a
    non-negative 63-bit int, a hash of the three (no state, so any worker order gives it)."""
    h = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def denormalize(x: Tensor, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> Tensor:
    """Undo the input normalisation: ``[N,3,H,W] -> [N,3,H,W]`` in [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)


class SmallImageTransform:
    """Tensor-native CIFAR-style transform on ``uint8 [H,W,3]`` -> ``float [3,H,W]`` normalised.

    train: random crop after zero-padding ``pad`` pixels (4 for CIFAR) and, if ``flip``, random
    horizontal flip, drawn from the per-sample generator.  eval: normalisation only.
    """

    def __init__(
        self,
        train: bool,
        pad: int = 4,
        flip: bool = True,
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
    ) -> None:
        self.train, self.pad, self.flip, self.mean, self.std = train, pad, flip, mean, std
        self._m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # built once, not per image
        self._s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: Tensor, gen: torch.Generator | None) -> Tensor:
        x = img.permute(2, 0, 1).float().div_(255.0)
        if self.train and gen is not None:
            h, w = x.shape[1:]
            if self.pad:
                x = F.pad(x, (self.pad,) * 4)
                i, j = torch.randint(0, 2 * self.pad + 1, (2,), generator=gen).tolist()
                x = x[:, i : i + h, j : j + w]
            if self.flip and torch.rand((), generator=gen).item() < 0.5:
                x = x.flip(2)
        return (x.contiguous() - self._m) / self._s


def imagenet_transform(
    train: bool, size: int = 224, mean: Sequence[float] = MEAN, std: Sequence[float] = STD
) -> Callable[[Any], Tensor]:
    """torchvision's ImageNet transform: a PIL image -> ``float [3, size, size]`` normalised.

    train: random resized crop and horizontal flip (drawn from torch's global generator, which
    the dataset seeds per sample with :func:`sample_seed`); eval: resize to ``size * 256 / 224``
    and centre crop.
    """
    from torchvision.transforms import v2 as T

    ops: list[Any] = (
        [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        if train
        else [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
    )
    return T.Compose(
        [T.ToImage(), *ops, T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]
    )
