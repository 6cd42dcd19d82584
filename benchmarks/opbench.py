"""Op payloads of the benchmarks: each op's blockdrop kernel, the plain-PyTorch composition of
the same result and a plain copy of the same bytes (the bandwidth ceiling), and the check that the
first two agree."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

import blockdrop_ext
from blockdrop.evaluation.timing import interleaved, sync
from blockdrop_ext.reference import downsample_a as downsample_a_reference
from env import clock

__all__ = [
    "OPS",
    "OP_IMPLS",
    "OP_SIZES_CPU",
    "OP_SIZES_GPU",
    "OpPayload",
    "op_payload",
    "check_op",
    "inner_repeats",
    "repeated",
    "once",
]


def row_bytes(t: Tensor) -> int:
    return t[0].numel() * t.element_size() if t.shape[0] else 0


def make_rows(n: int, m: int, device: str, seed: int = 3) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:m].sort().values.to(device)


OPS = ("gather_rows", "merge_block", "merge_block_", "merge_block_ds", "scatter_add_rows")
OP_IMPLS = ("copy", "blockdrop", "torch")

#: Op sizes (N, C, H, W): CIFAR stage-1 activations and ImageNet ResNet layer1/layer3 ones.
OP_SIZES_CPU = {"cifar-l1": (256, 16, 32, 32), "imnet-l1": (16, 256, 56, 56)}
OP_SIZES_GPU = {
    "cifar-l1": (2048, 16, 32, 32),
    "imnet-l1": (256, 256, 56, 56),
    "imnet-l3": (256, 1024, 14, 14),
}


@dataclass
class OpPayload:
    """Callables for one op case: ``fns[impl]`` with impl in OP_IMPLS, and the bytes each moves
    at the least (every input element read once, every output element written once)."""

    name: str
    fns: dict
    bytes: int
    info: dict
    targets: dict = field(default_factory=dict)  # in-place op: the tensor each impl updates


def op_payload(
    op: str,
    shape: tuple[int, int, int, int],
    m_frac: float,
    dtype: torch.dtype,
    channels_last: bool,
    device: str,
) -> OpPayload:

    n, c, h, w = shape
    m = max(1, round(m_frac * n))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator(device=device).manual_seed(5)  # drawn on the device: GPU sizes are GBs

    def rand(*s):
        return torch.randn(s, generator=g, device=device, dtype=dtype).contiguous(memory_format=fmt)

    rows = make_rows(n, m, device)
    el = torch.empty((), dtype=dtype).element_size()
    rb = c * h * w * el
    if op == "gather_rows":
        x = rand(n, c, h, w)
        fns = {
            "blockdrop": lambda: blockdrop_ext.gather_rows(x, rows, check=False),
            "torch": lambda: x.index_select(0, rows),
        }
        nbytes = 2 * m * rb
    elif op == "merge_block":
        s, y = rand(n, c, h, w), rand(m, c, h, w)
        fns = {
            "blockdrop": lambda: blockdrop_ext.merge_block(s, y, rows, relu=True, check=False),
            "torch": lambda: s.index_copy(0, rows, torch.relu(s.index_select(0, rows) + y)),
        }
        nbytes = (2 * n + m) * rb
    elif op == "merge_block_":
        s1, y = rand(n, c, h, w), rand(m, c, h, w)
        s2 = s1.clone()
        y = y - 3.0  # relu(s + y) stays bounded over thousands of in-place repeats
        fns = {
            "blockdrop": lambda: blockdrop_ext.merge_block_(s1, y, rows, relu=True, check=False),
            "torch": lambda: s2.index_copy_(0, rows, torch.relu(s2.index_select(0, rows) + y)),
        }
        nbytes = 3 * m * rb
    elif op == "merge_block_ds":  # CIFAR option-A downsampling block: C -> 2C, H -> H/2
        x = rand(n, c, h, w)
        y = rand(m, 2 * c, (h + 1) // 2, (w + 1) // 2)

        def torch_ds():
            s = downsample_a_reference(x, 2 * c)
            return s.index_copy(0, rows, torch.relu(s.index_select(0, rows) + y))

        fns = {
            "blockdrop": lambda: blockdrop_ext.merge_block(
                x, y, rows, relu=True, downsample=True, check=False
            ),
            "torch": torch_ds,
        }
        orb = 2 * c * ((h + 1) // 2) * ((w + 1) // 2) * el
        nbytes = n * rb // 4 + n * orb + m * orb  # read a quarter of x, write out, read y
    elif op == "scatter_add_rows":
        src = rand(m, c, h, w)
        fns = {
            "blockdrop": lambda: blockdrop_ext.scatter_add_rows(src, rows, n, check=False),
            "torch": lambda: src.new_zeros((n, c, h, w)).index_add_(0, rows, src),
        }
        nbytes = n * rb + m * rb
    else:
        raise ValueError(op)
    half = max(1, nbytes // 2 // el)
    a = torch.randn(half, generator=g, device=device, dtype=dtype)
    b = torch.empty_like(a)
    fns["copy"] = lambda: b.copy_(a)
    info = {
        "op": op,
        "shape": list(shape),
        "rows": m,
        "dtype": str(dtype).replace("torch.", ""),
        "layout": "channels_last" if channels_last else "NCHW",
        "device": device,
        "bytes": nbytes,
    }
    targets = {"blockdrop": s1, "torch": s2} if op == "merge_block_" else {}
    return OpPayload(op, fns, nbytes, info, targets)


def once(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call on the benchmarks' clock for ``device`` (env.clock)."""
    return interleaved({"f": fn}, rounds=1, warmup=0, device=device, clock=clock(device))["f"].median


def inner_repeats(fn: Callable[[], object], device: str, target_s: float = 2e-3) -> int:
    """How many back-to-back calls make one GPU timing sample last ~target_s (1 on the CPU)."""
    if device != "cuda":
        return 1
    fn()
    t = once(fn, device)
    return int(min(1000, max(1, target_s / max(t, 1e-6))))


def repeated(fn: Callable[[], object], inner: int, device: str) -> Callable[[], None]:
    """``inner`` calls then a device synchronisation: the unit a GPU timing sample measures."""

    def call():
        for _ in range(inner):
            fn()
        sync(device)

    return call


def check_op(op: str, shape, m_frac: float, dtype: torch.dtype, channels_last: bool, device: str) -> None:
    """Assert blockdrop's result equals the plain-PyTorch composition's (for the in-place op: the
    two targets start equal, each is updated once) and keeps channels_last."""
    p = op_payload(op, shape, m_frac, dtype, channels_last, device)
    got, want = p.fns["blockdrop"](), p.fns["torch"]()
    if op == "merge_block_":
        got, want = p.targets["blockdrop"], p.targets["torch"]
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    if channels_last and op != "scatter_add_rows":
        assert got.is_contiguous(memory_format=torch.channels_last), f"{op}: lost channels_last"
