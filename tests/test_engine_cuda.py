"""dynamic_forward on CUDA (the `gpu` marker; skipped with a reason without a GPU): every
strategy equals masked for each dtype and memory format, gradients, bad values, and a forward
synchronises only in its plan."""

from __future__ import annotations

import copy

import pytest
import torch

from _helpers import (
    expect_value_error as _expect,
    grads as _grads,
    inputs as _inputs,
    model as _model,
    policy as _policy,
)
from blockdrop import dynamic_forward

ALL = ("masked", "loop", "gather", "group", "auto")
FAST = ("loop", "gather", "group", "auto")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cifar20", "resnet50"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_cuda_equivalence(name: str, dtype: torch.dtype, fmt: torch.memory_format) -> None:
    model32 = _model(name)
    n = 16
    x = _inputs(name, n)
    policy = _policy("random", n, model32.num_blocks)
    policy[:4] = _policy("prototypes", 4, model32.num_blocks)
    model = copy.deepcopy(model32).cuda().to(dtype).to(memory_format=fmt)
    xc = x.cuda().to(dtype).contiguous(memory_format=fmt)
    pc = policy.cuda()
    m64 = copy.deepcopy(model32).double()
    with torch.no_grad():
        ref64 = dynamic_forward(m64, x.double(), policy, "masked")
        errs = {s: float((dynamic_forward(model, xc, pc, s).double().cpu() - ref64).abs().max()) for s in ALL}
    scale = float(ref64.abs().max())
    base = max(errs["masked"], (1e-4 if dtype == torch.float32 else 1e-3) * scale)
    for s, e in errs.items():
        assert e <= 4 * base, f"{s}: {e:.3g} vs masked {errs['masked']:.3g}"


@pytest.mark.gpu
def test_cuda_gradients_and_bad_values() -> None:
    model = copy.deepcopy(_model("cifar20")).cuda().eval()
    n = 8
    x = _inputs("cifar20", n).cuda()
    policy = _policy("prototypes", n, model.num_blocks).cuda()
    w = torch.randn(n, model.num_classes, device="cuda")
    ref = _grads(model, x, policy, "masked", w)
    for strategy in ("gather", "group"):
        got = _grads(model, x, policy, strategy, w)
        for key, g in ref.items():
            assert (got[key] - g).abs().max() <= 2e-4 * max(float(g.abs().max()), 1e-6) + 1e-6, (
                strategy,
                key,
            )
    bad = policy.float()
    bad[0, 0] = float("nan")
    for strategy in ALL:
        # B023: the lambda is called at once, inside the loop
        _expect("policy", lambda: dynamic_forward(model, x, bad, strategy))  # noqa: B023
    _expect("policy", lambda: dynamic_forward(model, x, policy.cpu(), "gather"))


@pytest.mark.gpu
@pytest.mark.parametrize("strategy", ["gather", "group", "auto"])
def test_cuda_forward_syncs_only_in_the_plan(strategy: str, monkeypatch) -> None:
    """One device->host synchronisation per forward, the plan's: with the plan computed first, the
    rest of the forward runs under torch's sync debug mode "error" (any sync raises)."""
    import blockdrop_ext

    model = copy.deepcopy(_model("cifar20")).cuda()
    x = _inputs("cifar20", 32).cuda()
    policy = _policy("prototypes" if strategy == "group" else "random", 32, model.num_blocks).cuda()
    with torch.no_grad():
        ref = dynamic_forward(model, x, policy, strategy)  # warm-up (kernels, allocator)
        plan = blockdrop_ext.plan(policy)
        torch.cuda.synchronize()
        monkeypatch.setattr(blockdrop_ext, "plan", lambda p: plan)
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = dynamic_forward(model, x, policy, strategy)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(got, ref)
