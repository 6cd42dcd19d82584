"""Typed Python wrappers of the blockdrop ops, with argument checks that name the argument.

Every function runs the compiled kernel (CPU or CUDA, `torch.ops.blockdrop.*`) when the extension
is built, and the plain-PyTorch reference (`blockdrop_ext.reference`) when it is not.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from . import _loader, reference

__all__ = [
    "Plan",
    "kernel",
    "plan",
    "gather_rows",
    "scatter_add_rows",
    "merge_block",
    "merge_block_",
    "downsample_a",
]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def kernel(name: str, device: torch.device | str):
    """The op ``name`` (``"gather_rows"``, ``"merge_block"``, ...) for tensors on ``device``, with
    none of the Python argument checks of the typed wrappers: for callers whose arguments are valid
    by construction (the engine, with rows from :func:`plan`), where those checks would cost a few
    microseconds per call on every block. The compiled kernel, or the plain-PyTorch reference when
    nothing is built. Raises RuntimeError for CUDA when this build has no CUDA kernels.
    """
    if not _loader.loaded():
        return getattr(reference, name)
    if torch.device(device).type == "cuda" and not _loader.has_kernel(name, "CUDA"):
        raise RuntimeError(
            f"blockdrop_ext.{name}: got a CUDA tensor, but this build of blockdrop_ext has no CUDA kernels "
            f"({_loader.build_info()['cuda_reason']}); reinstall on a machine with nvcc "
            "(pip install --no-build-isolation .) or move the tensors to the CPU"
        )
    return getattr(torch.ops.blockdrop, name)


def _impl(name: str, *tensors: torch.Tensor):
    """The kernel for `name` on the tensors' device, or the reference when nothing is built."""
    return kernel(name, "cuda" if any(t.is_cuda for t in tensors) else "cpu")


def _check_tensor(t: object, name: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _check_float(t: torch.Tensor, name: str, op: str) -> None:
    if t.dtype not in _FLOATS:
        raise ValueError(f"{op}: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def _check_rows(
    rows: torch.Tensor, n: int, device: torch.device, op: str, check: bool, unique: bool = False
) -> None:
    """Type, shape and device always; values (range, and distinctness when `unique`) when `check`.
    On CUDA the value check is one device->host copy: pass check=False for rows made by plan().
    All checks happen here, before any kernel runs, so that bad input is a Python ValueError."""
    _check_tensor(rows, "rows", op)
    if rows.dim() != 1:
        raise ValueError(f"{op}: rows must be a 1-D index tensor, got shape {tuple(rows.shape)}")
    if rows.dtype != torch.long:
        raise ValueError(f"{op}: rows must be int64 (torch.long), got {rows.dtype}")
    if rows.device != device:
        raise ValueError(f"{op}: rows must be on {device} like the data, got {rows.device}")
    if not check or rows.numel() == 0 or torch.compiler.is_compiling():
        return
    bad = ((rows < 0) | (rows >= n)).any()
    if unique and rows.numel() > 1:
        s = rows.sort().values
        dup = (s[1:] == s[:-1]).any()
        flags = torch.stack([bad, dup]).tolist()
    else:
        flags = [bool(bad), False]
    if flags[0]:
        raise ValueError(
            f"{op}: rows must lie in [0, {n}), got values from {int(rows.min())} to {int(rows.max())}"
        )
    if flags[1]:
        raise ValueError(f"{op}: rows must be distinct (each image merged once)")


@dataclass(frozen=True)
class Plan:
    """Execution plan of a policy [N, K] (host-side sizes, device-side indices).

    counts[k]          number of images that run block k
    offsets            K+1 CSR offsets (host ints) into `rows`
    rows               int64 [>= offsets[K]] on the policy's device; block k's rows ascending
    num_groups         G, the number of distinct policies
    group_counts       G sizes; group_offsets: G+1 offsets into `perm`
    perm               int64 [N]: images ordered so identical policies are contiguous (stable)
    group_policy       uint8 [G, K]: the distinct policies, in perm order (policy's device)
    group_policy_host  uint8 [G, K] on the CPU: the same, brought over in the plan's one copy
    """

    counts: list[int]
    offsets: list[int]
    rows: torch.Tensor
    num_groups: int
    group_counts: list[int]
    group_offsets: list[int]
    perm: torch.Tensor
    group_policy: torch.Tensor
    group_policy_host: torch.Tensor

    def block_rows(self, k: int) -> torch.Tensor:
        """int64 [counts[k]]: the images that run block k, ascending (a view, no copy)."""
        return self.rows[self.offsets[k] : self.offsets[k + 1]]

    def group_rows(self, g: int) -> torch.Tensor:
        """int64 [group_counts[g]]: the images of group g, ascending (a view of perm)."""
        return self.perm[self.group_offsets[g] : self.group_offsets[g + 1]]


def _policy_uint8(policy: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] where any value other than 0/1 (NaN included) becomes 2, which plan flags."""
    if policy.dtype in (torch.bool, torch.uint8):
        return policy
    if policy.is_complex():
        raise ValueError(f"plan: policy must be real with values 0/1, got {policy.dtype}")
    valid = (policy == 0) | (policy == 1)
    return torch.where(valid, policy, torch.full_like(policy, 2)).to(torch.uint8)


def plan(policy: torch.Tensor) -> Plan:
    """Execution plan of `policy` [N, K] (0/1; bool, uint8, integer or float), computed on its device
    in one call with exactly one device->host copy (the sizes).

    Raises ValueError when policy is not 2-D or holds a value other than 0/1 (NaN included)."""
    _check_tensor(policy, "policy", "plan")
    if policy.dim() != 2:
        raise ValueError(f"plan: policy must be 2-D [N, K], got shape {tuple(policy.shape)}")
    if policy.shape[1] == 0:
        raise ValueError("plan: policy must have at least one block (K >= 1), got K = 0")
    p = _policy_uint8(policy)
    try:
        meta, _, rows, perm, _, group_policy = _impl("plan", p)(p)
    except RuntimeError as exc:  # the CPU kernel checks values itself
        if "only 0 and 1" in str(exc):
            raise ValueError("plan: policy must contain only 0 and 1 (found another value or NaN)") from exc
        raise
    n, k = policy.shape
    # The one device->host copy: the sizes and the distinct policies, as one byte buffer.
    packed = torch.cat([meta.view(torch.uint8), group_policy.reshape(-1)]).cpu()
    nmeta = meta.numel() * meta.element_size()
    host = packed[:nmeta].view(torch.long).tolist()
    if host[k + n + 1]:
        raise ValueError("plan: policy must contain only 0 and 1 (found another value or NaN)")
    counts = host[:k]
    g = host[k + n]
    group_counts = host[k : k + g]
    offsets = list(itertools.accumulate(counts, initial=0))
    group_offsets = list(itertools.accumulate(group_counts, initial=0))
    group_policy_host = packed[nmeta:].view(n, k)[:g]
    return Plan(
        counts, offsets, rows, g, group_counts, group_offsets, perm, group_policy[:g], group_policy_host
    )


def gather_rows(x: torch.Tensor, rows: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """x [N, ...] (4-D NCHW or channels_last, or any rank), rows int64 [M] -> x[rows] [M, ...],
    keeping the memory format. Differentiable (the gradient is scatter_add_rows).
    check=False skips the range check (a device->host copy on CUDA) for rows known to be valid."""
    _check_tensor(x, "x", "gather_rows")
    if x.dim() < 1:
        raise ValueError("gather_rows: x must have at least one dimension")
    _check_float(x, "x", "gather_rows")
    _check_rows(rows, x.shape[0], x.device, "gather_rows", check)
    return _impl("gather_rows", x)(x, rows)


def scatter_add_rows(src: torch.Tensor, rows: torch.Tensor, n: int, *, check: bool = True) -> torch.Tensor:
    """src [M, ...], rows int64 [M], n -> out [n, ...]: zeros, then out[rows[i]] += src[i].
    Differentiable (the gradient is gather_rows)."""
    _check_tensor(src, "src", "scatter_add_rows")
    _check_float(src, "src", "scatter_add_rows")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"scatter_add_rows: n must be a non-negative int, got {n!r}")
    _check_rows(rows, n, src.device, "scatter_add_rows", check)
    if src.dim() < 1 or src.shape[0] != rows.shape[0]:
        raise ValueError(
            f"scatter_add_rows: src must have one row per entry of rows ({rows.shape[0]}), "
            f"got shape {tuple(src.shape)}"
        )
    return _impl("scatter_add_rows", src)(src, rows, n)


def _check_merge(
    shortcut: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    op: str,
    name: str,
    downsample: bool,
    check: bool,
) -> None:
    """The checks of csrc/ops.cpp check_merge, as ValueErrors naming the argument (`name` is the
    first one: "shortcut" for merge_block, "x" for merge_block_)."""
    _check_tensor(shortcut, name, op)
    _check_tensor(y, "y", op)
    if shortcut.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D [N, C, H, W], got shape {tuple(shortcut.shape)}")
    if y.dim() != 4:
        raise ValueError(f"{op}: y must be 4-D [M, C, H, W], got shape {tuple(y.shape)}")
    _check_float(shortcut, name, op)
    if y.dtype != shortcut.dtype:
        raise ValueError(f"{op}: y must have the dtype of {name} ({shortcut.dtype}), got {y.dtype}")
    if y.device != shortcut.device:
        raise ValueError(f"{op}: y must be on {shortcut.device} like {name}, got {y.device}")
    _check_rows(rows, shortcut.shape[0], shortcut.device, op, check, unique=True)
    if y.shape[0] != rows.shape[0]:
        raise ValueError(f"{op}: y must have one row per entry of rows ({rows.shape[0]}), got {y.shape[0]}")
    c, h, w = shortcut.shape[1:]
    if not downsample:
        if tuple(y.shape[1:]) != (c, h, w):
            raise ValueError(f"{op}: y must have the C, H, W of {name} {(c, h, w)}, got {tuple(y.shape[1:])}")
        return
    if y.shape[1] < c or (y.shape[1] - c) % 2:
        raise ValueError(
            f"{op}(downsample=True): y's channels ({y.shape[1]}) must be >= {name}'s ({c}) and differ "
            "by an even number (option-A zero padding on both sides)"
        )
    if tuple(y.shape[2:]) != ((h + 1) // 2, (w + 1) // 2):
        raise ValueError(
            f"{op}(downsample=True): y's H, W must be ceil(H/2), ceil(W/2) of {name} = "
            f"{((h + 1) // 2, (w + 1) // 2)}, got {tuple(y.shape[2:])}"
        )


def merge_block(
    shortcut: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    relu: bool = True,
    downsample: bool = False,
    *,
    check: bool = True,
) -> torch.Tensor:
    """The fused skip connection of a block run on `rows` only.

    shortcut [N, C, H, W] (the block's input, or its shortcut), y [M, C', H', W'] (the residual
    branch's output for the M executed rows), rows int64 [M] (distinct) -> out [N, C', H', W']:
    out[rows[i]] = relu(s[rows[i]] + y[i]), out[n] = s[n] for dropped n, where s = shortcut, or with
    downsample=True the CIFAR option-A shortcut of it (x[:, :, ::2, ::2], channels zero-padded by
    (C' - C) / 2 on both sides), computed inside the same pass. Keeps shortcut's memory format.
    Differentiable in shortcut and y."""
    _check_merge(shortcut, y, rows, "merge_block", "shortcut", downsample, check)
    return _impl("merge_block", shortcut, y)(shortcut, y, rows, relu, downsample)


def merge_block_(
    x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, relu: bool = True, *, check: bool = True
) -> None:
    """In place, identity shortcut, inference only: x[rows[i]] = relu(x[rows[i]] + y[i]);
    only executed rows are touched. x [N, C, H, W] (contiguous NCHW or channels_last),
    y [M, C, H, W], rows int64 [M] distinct."""
    _check_merge(x, y, rows, "merge_block_", "x", False, check)
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
        raise ValueError(
            "merge_block_: in-place merge is inference-only; use merge_block when gradients are needed"
        )
    _impl("merge_block_", x, y)(x, y, rows, relu)


def downsample_a(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """CIFAR option-A shortcut as one kernel: x [N, C, H, W] -> [N, out_channels, ceil(H/2), ceil(W/2)]
    (every second pixel; channels zero-padded by (out_channels - C) / 2 on both sides). Differentiable."""
    _check_tensor(x, "x", "downsample_a")
    if x.dim() != 4:
        raise ValueError(f"downsample_a: x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    c = x.shape[1]
    if out_channels < c or (out_channels - c) % 2:
        raise ValueError(
            f"downsample_a: out_channels must be >= {c} "
            f"and differ from it by an even number, got {out_channels}"
        )
    empty = x.new_empty((0, out_channels, (x.shape[2] + 1) // 2, (x.shape[3] + 1) // 2))
    rows = torch.empty(0, dtype=torch.long, device=x.device)
    return merge_block(x, empty, rows, relu=False, downsample=True, check=False)
