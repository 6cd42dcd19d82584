"""Fake (meta) implementations of the blockdrop ops, for torch.compile, FakeTensor and opcheck.
Output shapes never depend on data (plan pads its outputs), so no dynamic sizes are needed."""

from __future__ import annotations

from typing import Any

import torch


def row_format(t: torch.Tensor) -> torch.memory_format:
    """The layout the kernels keep (mirror of csrc/ops.cpp row_format)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@torch.library.register_fake("blockdrop::plan")
def _plan_fake(policy: torch.Tensor):
    n, k = policy.shape
    long: dict[str, Any] = dict(dtype=torch.long, device=policy.device)
    return (
        policy.new_empty(k + n + 2, **long),
        policy.new_empty(k + 1, **long),
        policy.new_empty(n * k, **long),
        policy.new_empty(n, **long),
        policy.new_empty(n + 1, **long),
        policy.new_empty((n, k), dtype=torch.uint8),
    )


@torch.library.register_fake("blockdrop::gather_rows")
def _gather_rows_fake(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.empty(
        (rows.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device, memory_format=row_format(x)
    )


@torch.library.register_fake("blockdrop::scatter_add_rows")
def _scatter_add_rows_fake(src: torch.Tensor, rows: torch.Tensor, n) -> torch.Tensor:
    return torch.empty((n, *src.shape[1:]), dtype=src.dtype, device=src.device, memory_format=row_format(src))


@torch.library.register_fake("blockdrop::merge_block")
def _merge_block_fake(shortcut, y, rows, relu=True, downsample=False) -> torch.Tensor:
    shape = (shortcut.shape[0], *y.shape[1:])
    return torch.empty(
        shape, dtype=shortcut.dtype, device=shortcut.device, memory_format=row_format(shortcut)
    )


@torch.library.register_fake("blockdrop::merge_block_")
def _merge_block__fake(x, y, rows, relu=True) -> None:
    return None
