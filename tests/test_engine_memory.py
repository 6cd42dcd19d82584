"""Inference peak memory of every strategy stays within the full network's (+10%), also for
channels_last, bf16 and autocast; the peak-memory meter itself counts live bytes."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

from _helpers import inputs as _inputs, model as _model, policy as _policy
from blockdrop import dynamic_forward
from conftest import DEVICES


def _dense_policy(n: int, k: int, keep: float, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, k, generator=g) < keep


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,n", [("cifar20", 64), ("resnet50", 8), ("resnet50", 1)])
@pytest.mark.parametrize("kind", ["random", "prototypes", "dense", "ones"])
def test_inference_peak_memory_within_full(name: str, n: int, kind: str, device: str) -> None:
    """Inference peak (bytes the call allocates: CPU allocator via the profiler, or CUDA's caching
    allocator) <= 1.10 x the full network's at the same batch, for every strategy that skips work.
    ``dense`` (keep 0.9) is gather's worst case: nearly every row is gathered into a second copy
    of the activation unless that copy is freed after the block's first layer."""
    from blockdrop.evaluation.memory import peak_memory

    model = _model(name) if device == "cpu" else copy.deepcopy(_model(name)).to(device)
    x = _inputs(name, n).to(device)
    k = model.num_blocks
    policy = (_dense_policy(n, k, 0.9) if kind == "dense" else _policy(kind, n, k)).to(device)
    with torch.inference_mode():
        model(x)  # oneDNN / cuDNN caches and workspaces outside the measurement
        full = peak_memory(lambda: model(x), device)
        assert full > 0
        for strategy in ("masked", "gather", "group", "auto"):
            dynamic_forward(model, x, policy, strategy)
            # B023: the lambda is called at once, inside the loop
            peak = peak_memory(lambda: dynamic_forward(model, x, policy, strategy), device)  # noqa: B023
            assert peak <= 1.10 * full, (
                f"{strategy}: peak {peak / 2**20:.1f} MiB vs full {full / 2**20:.1f} MiB"
            )


@pytest.mark.parametrize("variant", ["channels_last", "bfloat16", "autocast"])
def test_inference_peak_memory_formats_and_dtypes(variant: str) -> None:
    """The memory bound also holds for channels_last (resnet50), bf16 weights and bf16 autocast
    (cifar20: bf16 convolutions are slow on CPU), with gather's worst case keep 0.9, and
    prototypes for group."""
    from blockdrop.evaluation.memory import peak_memory

    name, n = ("resnet50", 8) if variant == "channels_last" else ("cifar20", 8)
    model = copy.deepcopy(_model(name))
    x = _inputs(name, n)
    if variant == "channels_last":
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    elif variant == "bfloat16":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    k = model.num_blocks
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "autocast" else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        model(x)
        full = peak_memory(lambda: model(x), "cpu")
        for policy in (_dense_policy(n, k, 0.9), _policy("prototypes", n, k)):
            for strategy in ("gather", "group", "auto"):
                dynamic_forward(model, x, policy, strategy)
                # B023: the lambda is called at once, inside the loop
                peak = peak_memory(lambda: dynamic_forward(model, x, policy, strategy), "cpu")  # noqa: B023
                assert peak <= 1.10 * full, (
                    f"{variant} {strategy}: {peak / 2**20:.1f} vs {full / 2**20:.1f} MiB"
                )


def test_peak_memory_counts_live_bytes() -> None:
    from blockdrop.evaluation.memory import peak_memory

    def fn():
        a = torch.empty(1000, 250)  # 1 MB
        b = torch.empty(500, 250)  # 0.5 MB
        del a
        c = torch.empty(2000, 250)  # 2 MB, with b alive: peak 2.5 MB
        return b, c

    assert peak_memory(fn, "cpu") == 2_500_000
    with pytest.raises(ValueError, match="device"):
        peak_memory(fn, "meta")
