"""The backbone contract every BlockDrop model follows: a stem, an ordered list of residual blocks
(each exposed as a :class:`BlockView`), and a head.

A block ``k`` maps ``h -> relu(shortcut(h) + residual(h))`` when executed and ``h -> shortcut(h)``
when dropped. The engine (``blockdrop.engine``) only ever talks to a model through this interface,
so any residual network that can describe itself this way can be run with real skipping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["BlockView", "Chain", "ResNetBackbone", "SHORTCUT_KINDS"]

#: The shortcut kinds the engine knows how to merge.
#: ``identity``: ``s = h``; ``option_a``: ``s = zero-pad-channels(h[:, :, ::2, ::2])`` (no
#: parameters); ``projection``: a module (1x1 conv + BN in torchvision) that must run on every row.
SHORTCUT_KINDS = ("identity", "option_a", "projection")


class Chain:
    """A residual branch written as a sequence of steps, ``F(x) = steps[-1](...steps[0](x))``.

    Calling it is plain composition. :meth:`consume` computes the same thing but takes the input
    out of a one-element list, so that no caller keeps a reference to it: the input (e.g. the rows
    the engine just gathered) and every intermediate are freed as soon as the next step has read
    them, which keeps the engine's peak memory at or below the full network's.
    """

    def __init__(self, *steps: Callable[[Tensor], Tensor]) -> None:
        if not steps or not all(callable(f) for f in steps):
            raise ValueError("steps: expected one or more callables")
        self.steps = steps

    def __call__(self, x: Tensor) -> Tensor:
        """``x: [N, C_in, H, W] -> [N, C_out, H', W']``."""
        for f in self.steps:
            x = f(x)
        return x

    def consume(self, box: list[Tensor]) -> Tensor:
        """``F(box.pop())``, releasing the input after the first step (``box`` is left empty)."""
        x = box.pop()
        for f in self.steps:
            x = f(x)
        return x


@dataclass(frozen=True)
class BlockView:
    """A view onto one residual block of a backbone (no parameters of its own, no copies).

    Attributes:
        residual: ``F(h)``: ``Tensor[N, C_in, H, W] -> Tensor[N, C_out, H', W']``, the block's
            branch without the final add and ReLU. A :class:`Chain` lets the engine free the
            gathered input early (:meth:`residual_consume`); any other callable works too.
        shortcut: ``s(h)``: ``Tensor[N, C_in, H, W] -> Tensor[N, C_out, H', W']``.
        shortcut_kind: one of :data:`SHORTCUT_KINDS`.
        module: the wrapped ``nn.Module`` (the user's own block, shared).
        in_channels: ``C_in``.
        out_channels: ``C_out``.
        stride: spatial stride of the block (``H' = ceil(H / stride)``).
        full_fn: optional exact forward of the executed block (e.g. the torchvision block's own
            ``forward``); defaults to ``relu(shortcut(h) + residual(h))``.
    """

    residual: Callable[[Tensor], Tensor]
    shortcut: Callable[[Tensor], Tensor]
    shortcut_kind: str
    module: nn.Module
    in_channels: int
    out_channels: int
    stride: int
    full_fn: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if self.shortcut_kind not in SHORTCUT_KINDS:
            raise ValueError(f"shortcut_kind must be one of {SHORTCUT_KINDS}, got {self.shortcut_kind!r}")

    def residual_consume(self, box: list[Tensor]) -> Tensor:
        """``residual(box.pop())``; with a :class:`Chain` the input is freed after its first step.

        Shapes: ``box[0]: [n, C_in, H, W] -> [n, C_out, H', W']``.
        """
        if isinstance(self.residual, Chain):
            return self.residual.consume(box)
        return self.residual(box.pop())

    def full(self, h: Tensor) -> Tensor:
        """The executed block on every row: ``relu(shortcut(h) + residual(h))``.

        Shapes: ``h: [N, C_in, H, W] -> [N, C_out, H', W']``.
        """
        if self.full_fn is not None:
            return self.full_fn(h)
        return torch.relu(self.shortcut(h) + self.residual(h))


class ResNetBackbone(nn.Module):
    """Abstract residual backbone (see module docstring).

    Subclasses set ``self._block_views`` (an ordered tuple of :class:`BlockView`) and implement
    :meth:`stem` and :meth:`head`; :meth:`forward` then runs the full network.

    Attributes:
        num_blocks: ``K``, the number of droppable blocks (= policy width).
        num_classes: width of the logits.
        in_channels: channel count the stem expects (3 for RGB).
        default_input_size: ``(C, H, W)`` used for FLOP accounting when none is given.
    """

    num_classes: int
    in_channels: int
    default_input_size: tuple[int, int, int]
    _block_views: tuple[BlockView, ...]

    @property
    def blocks(self) -> Sequence[BlockView]:
        """The ordered blocks, ``len(blocks) == num_blocks``."""
        return self._block_views

    @property
    def num_blocks(self) -> int:
        """``K``: the number of droppable residual blocks."""
        return len(self._block_views)

    def stem(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``x: [N, in_channels, H, W] -> h: [N, C0, H0, W0]``."""
        raise NotImplementedError

    def head(self, h: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``h: [N, C_last, H_last, W_last] -> logits: [N, num_classes]``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """The full network (every block executed).

        Shapes: ``x: [N, in_channels, H, W] -> logits: [N, num_classes]``.
        """
        h = self.stem(x)
        for block in self._block_views:
            h = block.full(h)
        return self.head(h)
