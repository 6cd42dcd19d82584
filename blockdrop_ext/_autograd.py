"""Autograd for the blockdrop ops: gather_rows and scatter_add_rows are each other's gradient;
merge_block's gradient flows to the shortcut and to y through the relu mask (and, for the option-A
shortcut, back through its strided, channel-padded view). merge_block_ (in place) is inference-only."""

from __future__ import annotations

import torch

_ops = torch.ops.blockdrop


def _gather_setup(ctx, inputs, output) -> None:
    x, rows = inputs
    ctx.save_for_backward(rows)
    ctx.n = x.shape[0]


def _gather_backward(ctx, grad: torch.Tensor):
    (rows,) = ctx.saved_tensors
    return _ops.scatter_add_rows(grad, rows, ctx.n), None


def _scatter_setup(ctx, inputs, output) -> None:
    _, rows, _ = inputs
    ctx.save_for_backward(rows)


def _scatter_backward(ctx, grad: torch.Tensor):
    (rows,) = ctx.saved_tensors
    return _ops.gather_rows(grad, rows), None, None


def _merge_setup(ctx, inputs, output) -> None:
    shortcut, y, rows, relu, downsample = inputs
    ctx.save_for_backward(rows, output)
    ctx.relu, ctx.downsample = relu, downsample
    ctx.shortcut_shape, ctx.y_shape = shortcut.shape, y.shape


def _merge_backward(ctx, grad: torch.Tensor):
    rows, out = ctx.saved_tensors
    grad_s = grad
    if rows.numel() > 0:
        grad_y = _ops.gather_rows(grad, rows)
        if ctx.relu:
            grad_y = grad_y * (_ops.gather_rows(out, rows) > 0).to(grad_y.dtype)
            grad_s = grad.index_copy(0, rows, grad_y)
    else:
        grad_y = grad.new_zeros(ctx.y_shape)
    if ctx.downsample:
        cin = ctx.shortcut_shape[1]
        pad = (ctx.y_shape[1] - cin) // 2
        grad_x = grad.new_zeros(ctx.shortcut_shape)
        grad_x[:, :, ::2, ::2] = grad_s[:, pad : pad + cin]
        grad_s = grad_x
    return grad_s, grad_y, None, None, None


torch.library.register_autograd("blockdrop::gather_rows", _gather_backward, setup_context=_gather_setup)
torch.library.register_autograd(
    "blockdrop::scatter_add_rows", _scatter_backward, setup_context=_scatter_setup
)
torch.library.register_autograd("blockdrop::merge_block", _merge_backward, setup_context=_merge_setup)
