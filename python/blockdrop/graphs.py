"""``cuda_graphed``: a network captured once into a CUDA graph and replayed on static buffers.

A CUDA graph replays a fixed sequence of kernels on fixed memory: no Python, no dispatcher, no
launches per op, which is what launch-bound GPU runs pay (a CIFAR ResNet-110 spends ~130 us of
host time per block in eager PyTorch). Capture needs a forward with no host synchronisation and no
data-dependent shape: a :class:`~blockdrop.BlockDropNet` in **capacity mode**
(:mod:`blockdrop.capacity`), or any plain network (the fair dense baseline is graphed too).
Threshold mode is refused: its plan is copied to the host on every batch. (The compiled route,
``torch.compile(net, mode="reduce-overhead")`` on a capacity-mode net, captures the same way, as the
net compiles into one graph with static shapes; not yet measured on a GPU.)

Contract of the returned :class:`GraphedNet` (the same on every device):

* it is bound to the example's shape, dtype and device (one capture per batch size); an input
  of another shape, dtype or device is a ``ValueError`` naming ``x``;
* each call copies ``x`` into the static input buffer, replays, and returns the static outputs --
  cloned by default; with ``clone_outputs=False`` the very same tensors every call, overwritten by
  the next call;
* the network runs under ``torch.no_grad`` in eval mode; parameters are read at replay time, so
  in-place weight updates show, but replaced tensors (``load_state_dict`` with other storage,
  ``.to()``) need a new capture.

On a CPU example there is no graph to capture: the same buffers and contract are kept and each call
runs the network on the static input and copies its results into the static outputs. That is what
the CPU tests check (static buffers, replay equals eager); the capture itself runs on a GPU.
Synchronisation: none per call (the input copy and the replay are queued on the current stream).
Memory: the static input, the outputs and the graph's private pool (the forward's activations).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["GraphedNet", "cuda_graphed"]

Outputs = Tensor | tuple[Tensor, ...]


def _as_tuple(out: Any) -> tuple[Tensor, ...]:
    """The forward's outputs as a tuple of tensors (a tensor, or a tuple/list of tensors)."""
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if not outs or not all(isinstance(t, Tensor) for t in outs):
        raise ValueError(
            f"net: expected a forward returning a tensor or a tuple of tensors, got {type(out).__name__}"
        )
    return outs


def _check_net(net: nn.Module) -> None:
    if not isinstance(net, nn.Module):
        raise ValueError(f"net: expected a torch.nn.Module, got {type(net).__name__}")
    if net.training:
        raise ValueError(
            "net: expected eval mode (call net.eval() first: a graph replays the "
            "same kernels, so no sampled policies or batch statistics)"
        )
    mode = getattr(net, "mode", None)
    if mode is not None and mode != "capacity":
        raise ValueError(
            f"net: expected a BlockDropNet in capacity mode (static shapes, no host "
            f"synchronisation), got mode {mode!r}; call net.set_capacity(...) or "
            "net.calibrate_capacity(loader) first"
        )


class GraphedNet:
    """``net`` replayed on static buffers (see the module docstring). Call it with
    ``x: Tensor`` of the example's shape, dtype and device; returns what ``net(x)`` returns."""

    def __init__(self, net: nn.Module, example: Tensor, warmup: int = 3, clone_outputs: bool = True) -> None:
        _check_net(net)
        if not isinstance(example, Tensor) or not example.is_floating_point():
            raise ValueError(
                f"example: expected a floating-point tensor, got "
                f"{example.dtype if isinstance(example, Tensor) else type(example).__name__}"
            )
        if warmup < 1:
            raise ValueError(f"warmup: expected at least 1 warm-up call, got {warmup}")
        self.net, self.clone_outputs = net, clone_outputs
        self.static_input = torch.empty_like(example).copy_(example)  # keeps the memory format
        self.graph: Any = None
        first = self._run_eager()
        self._single = not isinstance(first, (tuple, list))
        if example.device.type == "cuda":
            self.static_outputs = self._capture(warmup)
        else:
            self.static_outputs = tuple(t.clone() for t in _as_tuple(first))

    def _run_eager(self) -> Any:
        with torch.no_grad():
            return self.net(self.static_input)

    def _capture(self, warmup: int) -> tuple[Tensor, ...]:
        """Warm up on a side stream (lazy initialisation, allocator), then capture one forward."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._run_eager()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            outs = _as_tuple(self.net(self.static_input))
        return outs

    def _check_input(self, x: Tensor) -> None:
        s = self.static_input
        if not isinstance(x, Tensor) or x.shape != s.shape or x.dtype != s.dtype or x.device != s.device:
            got = f"{list(x.shape)} {x.dtype} on {x.device}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x: expected {list(s.shape)} {s.dtype} on {s.device} (the captured "
                f"example; capture once per batch size), got {got}"
            )

    def replay(self) -> None:
        """Run the network on the current static input into the static outputs."""
        if self.graph is not None:
            self.graph.replay()
            return
        for dst, src in zip(self.static_outputs, _as_tuple(self._run_eager())):
            dst.copy_(src)

    def __call__(self, x: Tensor) -> Outputs:
        """``x``: like the example -> the net's outputs (clones, or the static tensors)."""
        self._check_input(x)
        self.static_input.copy_(x)
        self.replay()
        outs = tuple(t.clone() for t in self.static_outputs) if self.clone_outputs else self.static_outputs
        return outs[0] if self._single else outs


def cuda_graphed(
    net: nn.Module, example: Tensor, *, warmup: int = 3, clone_outputs: bool = True
) -> Callable[[Tensor], Outputs]:
    """Capture ``net`` (eval mode; a BlockDropNet must be in capacity mode) for inputs like
    ``example`` (``Tensor[N, C, H, W]``) into a CUDA graph, after ``warmup`` eager calls.

    Returns a :class:`GraphedNet`: ``graphed(x)`` equals ``net(x)`` for any ``x`` of the example's
    shape, dtype and device (module docstring: buffers, outputs, CPU behaviour). Raises ValueError
    naming ``net`` (training mode, threshold mode), ``example`` or ``warmup``.
    """
    return GraphedNet(net, example, warmup, clone_outputs)
