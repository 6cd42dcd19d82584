"""Measured time per image of several models side by side, each at its fastest chunk size.

``time_models({"full": f, "blockdrop": g, ...}, batches)`` runs every model over the same batches
(each ``[B, 3, H, W]``), whole and split into chunks of each of ``chunks`` images, in interleaved
rounds (:func:`blockdrop.evaluation.timing.interleaved`, the order rotating each round), with
``threads`` intra-op threads (default one: the ratios are then stable on a shared CPU), under
``torch.inference_mode``. A model's time is the median over the rounds; its *best chunk* is the
size (``B`` included) at which it runs fastest per image. On CPUs a small network can run 1.5-2x
faster per image in chunks of 32-128 than at 256 (its activations stay in cache), so each model is
judged at its own best chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from blockdrop.evaluation.timing import interleaved
from blockdrop.models.base import ResNetBackbone

__all__ = ["ModelSpeed", "static_forward", "time_models"]


@dataclass(frozen=True)
class ModelSpeed:
    """One model's measured time: milliseconds per image at each chunk size, and at its best."""

    ms_by_chunk: dict[int, float]

    @property
    def best_chunk(self) -> int:
        return min(self.ms_by_chunk, key=lambda c: self.ms_by_chunk[c])

    @property
    def ms_per_image(self) -> float:
        return self.ms_by_chunk[self.best_chunk]


def static_forward(backbone: ResNetBackbone, dropped: Sequence[int], x: Tensor) -> Tensor:
    """A statically pruned network as a user would run it: ``x [N,3,H,W] -> logits [N, classes]``
    through the stem, every block but ``dropped`` (those are their shortcuts: nothing for an
    identity, the parameter-free subsampling for option A) and the head -- no policy, no plan."""
    gone = {int(k) for k in dropped}
    h = backbone.stem(x)
    for k, block in enumerate(backbone.blocks):
        h = block.shortcut(h) if k in gone else block.full(h)
    return backbone.head(h)


def time_models(
    models: Mapping[str, Callable[[Tensor], Any]],
    batches: Sequence[Tensor],
    chunks: Sequence[int] = (128, 64, 32),
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = 1,
) -> dict[str, ModelSpeed]:
    """``{name: ModelSpeed}`` for every model (see the module docstring); ``batches`` on the
    models' device, all of one size ``B``; chunks of ``B`` or more are ignored. ValueError for
    no batches, batches of unequal sizes or a chunk < 1."""
    if not batches:
        raise ValueError("batches: expected at least one batch")
    b = int(batches[0].shape[0])
    if any(int(x.shape[0]) != b for x in batches):
        raise ValueError(f"batches: expected equal sizes, got {[int(x.shape[0]) for x in batches]}")
    if any(int(c) < 1 for c in chunks):
        raise ValueError(f"chunks: expected sizes >= 1, got {list(chunks)}")
    sizes = [b] + sorted({int(c) for c in chunks if int(c) < b}, reverse=True)
    n_img = b * len(batches)

    def run(fn: Callable[[Tensor], Any], c: int) -> Callable[[], None]:
        def go() -> None:
            for x in batches:
                for part in x.split(c):
                    fn(part)

        return go

    fns = {(name, c): run(fn, c) for name, fn in models.items() for c in sizes}
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            t = interleaved(
                {f"{n}@{c}": f for (n, c), f in fns.items()},
                rounds=max(1, repeats),
                warmup=warmup,
                device=batches[0].device,
                rotate=True,
            )
    finally:
        torch.set_num_threads(before)
    return {name: ModelSpeed({c: 1000.0 * t[f"{name}@{c}"].median / n_img for c in sizes}) for name in models}
