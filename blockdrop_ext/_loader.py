"""Loads the compiled extension (blockdrop_ext._C) once and tells which backends it holds."""

from __future__ import annotations

import functools
import importlib

import torch

_ERROR: str | None = None
try:
    importlib.import_module("blockdrop_ext._C")
except ImportError as exc:  # not built: the ops fall back to blockdrop_ext.reference
    _ERROR = f"{type(exc).__name__}: {exc}"
else:  # outside the try: an error in these registrations must surface, not read as "not built"
    from . import _autograd, _fake  # noqa: F401


def loaded() -> bool:
    """True when the compiled extension is importable."""
    return _ERROR is None


@functools.cache
def has_kernel(op: str, key: str) -> bool:
    """True when blockdrop::<op> has a kernel for dispatch key `key` ("CPU" or "CUDA")."""
    return loaded() and torch._C._dispatch_has_kernel_for_dispatch_key(f"blockdrop::{op}", key)


def build_info() -> dict:
    """What was built: {'extension', 'cpu', 'cuda', 'cuda_reason', 'torch', 'torch_cuda',
    'gpu_visible', 'error'}."""
    cuda = has_kernel("gather_rows", "CUDA")
    if cuda:
        reason = "built"
    elif not loaded():
        reason = "extension not built"
    else:
        reason = "CPU-only build (torch without CUDA, nvcc not found, or BLOCKDROP_FORCE_CPU=1 at build time)"
    return {
        "extension": loaded(),
        "cpu": has_kernel("gather_rows", "CPU"),
        "cuda": cuda,
        "cuda_reason": reason,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu_visible": torch.cuda.is_available(),
        "error": _ERROR,
    }
