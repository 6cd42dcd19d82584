"""Op suite: blockdrop_ext.gather_rows / merge_block / merge_block_ / merge_block (option-A
downsample) / scatter_add_rows against the plain-PyTorch composition of the same result
(index_select, index_copy(_), index_add_, F.pad, relu) and against a plain copy of the same number
of bytes (the bandwidth ceiling). One group per (op, device, dtype, layout, shape, rows); rows are
``impl`` = blockdrop | torch | copy. extra_info: bytes moved at the least (inputs read once, outputs
written once), achieved GB/s from the median, and GB/s relative to the copy's.

CPU sizes run in seconds (one thread); the CUDA sizes (``gpu`` marker) are activation tensors of
a batch-256 ImageNet ResNet and a batch-2048 CIFAR one. GPU samples are ``inner`` back-to-back
calls followed by a synchronisation; times in extra_info are per call.
"""

from __future__ import annotations

import pytest

import opbench
from cases import op_cases
from env import default_machine, full_matrix

_COPY_GBPS: dict = {}


def _cases():
    """``cases.op_cases`` (CPU: the default subset, or "full"; CUDA: its default) x implementation."""
    out = []
    for device in ("cpu", "cuda"):
        marks = [pytest.mark.gpu] if device == "cuda" else []
        for op, size_name, shape, frac, dtype, cl in op_cases("full" if full_matrix() else "default", device):
            for impl in opbench.OP_IMPLS:
                dt = str(dtype).replace("torch.", "")
                pid = f"{device}-{op}-{size_name}-{dt}-{'cl' if cl else 'nchw'}-m{frac}-{impl}"
                out.append(
                    pytest.param(device, op, size_name, shape, dtype, cl, frac, impl, id=pid, marks=marks)
                )
    return out


@pytest.mark.parametrize("device,op,size_name,shape,dtype,channels_last,frac,impl", _cases())
def test_op(benchmark, device, op, size_name, shape, dtype, channels_last, frac, impl):
    if impl == "blockdrop":  # same result as the plain-PyTorch composition, before timing
        opbench.check_op(op, shape, frac, dtype, channels_last, device)
    payload = opbench.op_payload(op, shape, frac, dtype, channels_last, device)
    fn = payload.fns[impl]
    inner = opbench.inner_repeats(fn, device)
    call = opbench.repeated(fn, inner, device)
    benchmark.group = (
        f"{op} {device} {payload.info['dtype']} {payload.info['layout']} "
        f"{size_name}{list(shape)} rows={payload.info['rows']}"
    )
    benchmark.extra_info.update(payload.info)
    benchmark.extra_info.update(impl=impl, inner=inner, machine=default_machine(device))
    rounds = 20 if device == "cuda" else max(5, min(50, int(0.15 / max(opbench.once(fn, device), 1e-6))))
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    per_call = stats.stats.median / inner
    gbps = payload.bytes / per_call / 1e9
    benchmark.extra_info.update(median_s_per_call=per_call, GBps=round(gbps, 2))
    key = benchmark.group
    if impl == "copy":
        _COPY_GBPS[key] = gbps
    elif key in _COPY_GBPS:
        benchmark.extra_info["fraction_of_copy_bw"] = round(gbps / _COPY_GBPS[key], 3)
