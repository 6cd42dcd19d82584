"""Peak memory of a call, on CPU as on CUDA, so that the engine's memory bound can be tested here.

CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``) during the call, above what
was allocated before it. CPU: PyTorch's CPU allocator has no peak counter, so the call runs under
``torch.profiler`` with ``profile_memory=True`` and the peak is the largest running sum of its
allocation/free events (bytes allocated by the call and not yet freed). Both count tensors only:
caches and scratch space that do not go through PyTorch's allocator (oneDNN's, for instance) are not
seen, and on CUDA the cuDNN workspace is (it is allocated through the caching allocator).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["peak_memory"]


def peak_memory(fn: Callable[[], object], device: str | torch.device) -> int:
    """Bytes allocated by ``fn()`` at its peak, above what was allocated when it started.

    Args:
        fn: a zero-argument callable; its result is dropped after the measurement.
        device: ``"cpu"`` or ``"cuda"`` (a ``torch.device`` or ``"cuda:i"`` works too): whose
            allocator to watch.

    Returns:
        the peak, in bytes (>= 0).
    """
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return max(int(peak), 0)
    if kind != "cpu":
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        if e.device_type() == DeviceType.CPU:
            current += e.nbytes()
            peak = max(peak, current)
    return peak
