"""The blockdrop ops in plain PyTorch: the tests' independent reference and the fallback used when
the compiled extension is absent. Same contracts as csrc/ops.cpp (shapes in each docstring)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["plan", "gather_rows", "scatter_add_rows", "merge_block", "merge_block_", "downsample_a"]


def plan(policy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """policy [N, K] uint8/bool -> (meta [K+N+2], offsets [K+1], rows [N*K], perm [N],
    group_offsets [N+1], group_policy [N, K] uint8); see csrc/ops.cpp."""
    p = policy.to(torch.uint8)
    n, k = p.shape
    dev = p.device
    on = p != 0
    counts = on.sum(0)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    rows = torch.full((n * k,), -1, dtype=torch.long, device=dev)
    flat = torch.cat([on[:, j].nonzero().flatten() for j in range(k)]) if n else rows[:0]
    rows[: flat.numel()] = flat
    meta = torch.zeros(k + n + 2, dtype=torch.long, device=dev)
    meta[:k] = counts
    meta[k + n + 1] = int((p > 1).any())
    group_policy = torch.zeros(n, k, dtype=torch.uint8, device=dev)
    group_offsets = torch.full((n + 1,), n, dtype=torch.long, device=dev)
    group_offsets[0] = 0
    if n == 0:
        return meta, offsets, rows, rows[:0].clone(), group_offsets, group_policy
    uniq, inverse, sizes = torch.unique(on.to(torch.uint8), dim=0, return_inverse=True, return_counts=True)
    g = uniq.shape[0]
    perm = torch.sort(inverse, stable=True).indices
    meta[k : k + g] = sizes
    meta[k + n] = g
    group_offsets[1 : g + 1] = sizes.cumsum(0)
    group_policy[:g] = uniq
    return meta, offsets, rows, perm, group_offsets, group_policy


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [N, ...], rows [M] int64 -> x[rows] [M, ...]."""
    return x.index_select(0, rows)


def scatter_add_rows(src: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """src [M, ...], rows [M] int64 -> out [n, ...] = zeros, out[rows[i]] += src[i]."""
    out = src.new_zeros((n, *src.shape[1:]))
    return out.index_add(0, rows, src)


def downsample_a(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Option-A shortcut: x [N, C, H, W] -> [N, out_channels, ceil(H/2), ceil(W/2)], every second
    pixel, channels zero-padded by (out_channels - C) / 2 on both sides."""
    pad = (out_channels - x.shape[1]) // 2
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))


def merge_block(
    shortcut: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, relu: bool = True, downsample: bool = False
) -> torch.Tensor:
    """shortcut [N, C, H, W], y [M, C', H', W'], rows [M] -> out [N, C', H', W'] with
    out[rows[i]] = relu(s[rows[i]] + y[i]) and out[n] = s[n] elsewhere (s = option A of shortcut
    when downsample)."""
    s = downsample_a(shortcut, y.shape[1]) if downsample else shortcut
    if rows.numel() == 0:
        return s.clone()
    v = s.index_select(0, rows) + y
    if relu:
        v = torch.relu(v)
    return s.index_copy(0, rows, v)


def merge_block_(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, relu: bool = True) -> None:
    """In place: x[rows[i]] = relu(x[rows[i]] + y[i]); x [N, C, H, W], y [M, C, H, W]."""
    if rows.numel() == 0:
        return
    v = x.index_select(0, rows) + y
    x.index_copy_(0, rows, torch.relu(v) if relu else v)
