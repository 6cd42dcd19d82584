"""blockdrop_ext ops against plain-PyTorch references (blockdrop_ext.reference / indexing), on fresh
random inputs: plan, gather_rows, scatter_add_rows, merge_block (+ option A), merge_block_;
opcheck, gradcheck (float64), torch.compile(fullgraph=True), bad input, build info."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import blockdrop_ext
from blockdrop_ext import reference as ref
from conftest import DEVICES

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FORMATS = [torch.contiguous_format, torch.channels_last]
ROWS = ["empty", "partial", "full"]


def _gen(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _rows(kind: str, n: int, device: str, seed: int) -> torch.Tensor:
    """Distinct ascending rows: none, a random strict subset (when n > 1), or all."""
    if kind == "empty":
        return torch.empty(0, dtype=torch.long, device=device)
    if kind == "full":
        return torch.arange(n, device=device)
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(n, generator=g) < 0.5
    if n > 1:
        keep[0], keep[-1] = True, False
    return keep.nonzero().flatten().to(device)


def _act(shape, dtype, fmt, device, seed) -> torch.Tensor:
    x = torch.randn(shape, generator=_gen("cpu", seed)).to(device=device, dtype=dtype)
    return x.contiguous(memory_format=fmt)


# ---------------------------------------------------------------- plan
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "n,k,keep",
    [
        (0, 5, 0.5),
        (1, 54, 0.3),
        (17, 15, 0.5),
        (256, 54, 0.31),
        (300, 256, 0.5),
        (64, 130, 0.9),
        (40, 7, 0.0),
        (40, 7, 1.0),
    ],
)
def test_plan_matches_reference(device, n, k, keep):
    policy = torch.rand(n, k, generator=_gen("cpu", n * 1000 + k)) < keep
    got = torch.ops.blockdrop.plan(policy.to(device=device, dtype=torch.uint8))
    want = ref.plan(policy)
    names = ["meta", "offsets", "rows", "perm", "group_offsets", "group_policy"]
    for name, a, b in zip(names, got, want):
        assert a.device.type == device, name
        assert torch.equal(a.cpu(), b), name


@pytest.mark.parametrize("device", DEVICES)
def test_plan_wrapper_structure(device):
    """Independent of reference.plan: rows of block k are exactly the images with policy[:, k] = 1,
    ascending; groups partition the batch into identical policies, stable."""
    n, k = 200, 20
    # few prototypes so that groups have several members
    protos = torch.rand(6, k, generator=_gen("cpu", 3)) < 0.5
    policy = protos[torch.randint(0, 6, (n,), generator=_gen("cpu", 4))].to(device)
    p = blockdrop_ext.plan(policy.float())
    for j in range(k):
        assert p.block_rows(j).tolist() == policy[:, j].nonzero().flatten().tolist()
    assert p.counts == policy.sum(0).tolist()
    assert sorted(p.perm.tolist()) == list(range(n))
    assert p.num_groups == len({tuple(r) for r in policy.int().tolist()})
    seen = []
    for g in range(p.num_groups):
        members = p.group_rows(g)
        assert members.tolist() == sorted(members.tolist())
        assert (policy[members] == p.group_policy[g].bool()).all()
        assert torch.equal(p.group_policy_host[g], p.group_policy[g].cpu())
        seen.append(tuple(p.group_policy_host[g].tolist()))
    assert len(set(seen)) == p.num_groups and sum(p.group_counts) == n


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [2.0, 0.5, float("nan"), -1.0])
def test_plan_rejects_non_binary(device, bad):
    policy = torch.ones(4, 6, device=device)
    policy[2, 3] = bad
    with pytest.raises(ValueError, match="policy must contain only 0 and 1"):
        blockdrop_ext.plan(policy)


def test_plan_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match="policy must be 2-D"):
        blockdrop_ext.plan(torch.ones(3))
    with pytest.raises(ValueError, match="K >= 1"):
        blockdrop_ext.plan(torch.ones(3, 0))
    with pytest.raises(RuntimeError, match="policy must be uint8 or bool"):
        torch.ops.blockdrop.plan(torch.ones(3, 2))
    with pytest.raises(RuntimeError, match="only 0 and 1"):
        torch.ops.blockdrop.plan(torch.full((3, 2), 3, dtype=torch.uint8))


# ---------------------------------------------------------------- gather / scatter
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ROWS)
@pytest.mark.parametrize("n", [1, 96])
def test_gather_rows(device, dtype, fmt, kind, n):
    x = _act((n, 12, 5, 7), dtype, fmt, device, seed=n)
    rows = _rows(kind, n, device, seed=n + 1)
    out = blockdrop_ext.gather_rows(x, rows)
    assert torch.equal(out, x[rows])
    if rows.numel() and fmt == torch.channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_repeats_odd_sizes_and_2d(device, dtype):
    x = torch.randn(9, 3, 3, 1, dtype=dtype, device=device)  # 9 elements a row: no 16-byte packs
    rows = torch.tensor([4, 4, 0, 8, 2], device=device)
    assert torch.equal(blockdrop_ext.gather_rows(x, rows), x[rows])
    logits = torch.randn(11, 10, dtype=dtype, device=device)
    assert torch.equal(blockdrop_ext.gather_rows(logits, rows), logits[rows])
    sliced = torch.randn(20, 6, 4, 4, dtype=dtype, device=device)[3:15]  # offset data pointer
    assert torch.equal(blockdrop_ext.gather_rows(sliced, rows), sliced[rows])


def test_merge_block_inplace_messages_name_x():
    """merge_block_'s checks name its own arguments (x, not shortcut) and include the C, H, W check."""
    x = torch.randn(4, 3, 5, 5)
    rows = torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"merge_block_: y must have the C, H, W of x"):
        blockdrop_ext.merge_block_(x, torch.randn(2, 3, 4, 4), rows)
    with pytest.raises(ValueError, match=r"merge_block_: x must be 4-D"):
        blockdrop_ext.merge_block_(x[0], x[:2], rows)
    with pytest.raises(RuntimeError, match=r"merge_block_: y must have the C, H, W of x"):
        torch.ops.blockdrop.merge_block_(x, torch.randn(2, 3, 4, 4), rows)


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_accessor_is_the_unchecked_op(device):
    """blockdrop_ext.kernel(name, device): the op without the wrappers' Python checks, same result."""
    x = _act((10, 6, 3, 3), torch.float32, torch.contiguous_format, device, seed=3)
    rows = torch.tensor([7, 1, 4], device=device)
    y = torch.randn(3, 6, 3, 3, device=device)
    assert torch.equal(blockdrop_ext.kernel("gather_rows", device)(x, rows), x[rows])
    merged = blockdrop_ext.kernel("merge_block", device)(x, y, rows, True, False)
    assert torch.equal(merged, ref.merge_block(x, y, rows, True, False))
    out = blockdrop_ext.kernel("scatter_add_rows", device)(y, rows, 10)
    assert torch.equal(out, ref.scatter_add_rows(y, rows, 10))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_scatter_add_rows(device, dtype, fmt):
    src = _act((30, 8, 4, 4), dtype, fmt, device, seed=5)
    rows = torch.randint(0, 12, (30,), generator=_gen("cpu", 6)).to(device)  # repeats accumulate
    out = blockdrop_ext.scatter_add_rows(src, rows, 12)
    want = torch.zeros(12, 8, 4, 4, dtype=torch.float64).index_add_(0, rows.cpu(), src.double().cpu())
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(out.double().cpu(), want, atol=tol, rtol=tol)
    assert blockdrop_ext.scatter_add_rows(src[:0], rows[:0], 5).abs().sum() == 0


# ---------------------------------------------------------------- merge_block
def _merge_want(s64: torch.Tensor, y64: torch.Tensor, rows: torch.Tensor, relu: bool, downsample: bool):
    """float64 plain-PyTorch reference, written independently of blockdrop_ext.reference."""
    if downsample:
        pad = (y64.shape[1] - s64.shape[1]) // 2
        s64 = F.pad(s64[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
    out = s64.clone()
    for i, r in enumerate(rows.tolist()):
        v = s64[r] + y64[i]
        out[r] = torch.relu(v) if relu else v
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ROWS)
@pytest.mark.parametrize("n", [1, 64])
@pytest.mark.parametrize("downsample", [False, True])
def test_merge_block(device, dtype, fmt, kind, n, downsample):
    s = _act((n, 16, 8, 8), dtype, fmt, device, seed=10 + n)
    rows = _rows(kind, n, device, seed=n)
    yshape = (rows.numel(), 32, 4, 4) if downsample else (rows.numel(), 16, 8, 8)
    y = _act(yshape, dtype, fmt, device, seed=20 + n)
    for relu in (True, False):
        out = blockdrop_ext.merge_block(s, y, rows, relu=relu, downsample=downsample)
        want = _merge_want(s.double().cpu(), y.double().cpu(), rows.cpu(), relu, downsample)
        assert out.dtype == dtype and out.shape == want.shape
        # one rounding of an exact float sum: within half an ulp of the float64 result
        tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
        torch.testing.assert_close(out.double().cpu(), want, atol=tol, rtol=tol)
        if fmt == torch.channels_last and n > 1:
            assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ROWS)
def test_merge_block_inplace(device, dtype, fmt, kind):
    x = _act((33, 8, 6, 6), dtype, fmt, device, seed=1)
    rows = _rows(kind, 33, device, seed=2)
    y = _act((rows.numel(), 8, 6, 6), dtype, fmt, device, seed=3)
    want = blockdrop_ext.merge_block(x, y, rows)
    before = x.clone()
    blockdrop_ext.merge_block_(x, y, rows)
    assert torch.equal(x, want)
    dropped = torch.ones(33, dtype=torch.bool)
    dropped[rows.cpu()] = False
    assert torch.equal(x[dropped.to(device)], before[dropped.to(device)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_downsample_a(device, fmt):
    for h in (8, 7):  # odd sizes take ceil(H/2)
        x = _act((5, 16, h, h), torch.float32, fmt, device, seed=h)
        out = blockdrop_ext.downsample_a(x, 32)
        want = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8))
        assert torch.equal(out, want)


def test_merge_nan_propagates_like_relu():
    s = torch.zeros(2, 1, 1, 1)
    y = torch.full((1, 1, 1, 1), float("nan"))
    out = blockdrop_ext.merge_block(s, y, torch.tensor([1]))
    assert out[0].item() == 0 and torch.isnan(out[1]).all()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_messages(device):
    x = torch.randn(4, 3, 5, 5, device=device)
    rows = torch.tensor([0, 2], device=device)
    with pytest.raises(ValueError, match="rows must be int64"):
        blockdrop_ext.gather_rows(x, rows.int())
    with pytest.raises(ValueError, match="rows must be a 1-D"):
        blockdrop_ext.gather_rows(x, rows[None])
    with pytest.raises(ValueError, match=r"must lie in"):
        blockdrop_ext.gather_rows(x, torch.tensor([0, 4], device=device))
    with pytest.raises(ValueError, match=r"must lie in"):
        blockdrop_ext.gather_rows(x, torch.tensor([-1], device=device))
    with pytest.raises(ValueError, match="x must be float32"):
        blockdrop_ext.gather_rows(x.int(), rows)
    with pytest.raises(ValueError, match="shortcut must be 4-D"):
        blockdrop_ext.merge_block(x[0], x[:2], rows)
    with pytest.raises(ValueError, match="y must have the C, H, W of shortcut"):
        blockdrop_ext.merge_block(x, torch.randn(2, 3, 4, 5, device=device), rows)
    with pytest.raises(ValueError, match="one row per entry of rows"):
        blockdrop_ext.merge_block(x, x[:3], rows)
    with pytest.raises(ValueError, match="dtype of shortcut"):
        blockdrop_ext.merge_block(x, x[:2].double(), rows)
    with pytest.raises(ValueError, match="even number"):
        blockdrop_ext.merge_block(x, torch.randn(2, 4, 3, 3, device=device), rows, downsample=True)
    with pytest.raises(ValueError, match=r"ceil\(H/2\)"):
        blockdrop_ext.merge_block(x, torch.randn(2, 5, 2, 2, device=device), rows, downsample=True)
    with pytest.raises(ValueError, match="must be distinct"):
        blockdrop_ext.merge_block(x, x[:2], torch.tensor([1, 1], device=device))
    with pytest.raises(ValueError, match="inference-only"):
        blockdrop_ext.merge_block_(x.requires_grad_(), x[:2].detach(), rows)


def test_bad_input_kernels_directly():
    """The C++ entry points check too (no Python wrapper in between)."""
    x = torch.randn(4, 3, 5, 5)
    with pytest.raises(RuntimeError, match="rows\\[1\\] = 7 is out of range"):
        torch.ops.blockdrop.gather_rows(x, torch.tensor([0, 7]))
    with pytest.raises(RuntimeError, match="must not repeat"):
        torch.ops.blockdrop.merge_block(x, x[:2], torch.tensor([1, 1]))
    with pytest.raises(RuntimeError, match="int64"):
        torch.ops.blockdrop.merge_block(x, x[:2], torch.tensor([1, 2], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="float32, float16, bfloat16 or float64"):
        torch.ops.blockdrop.gather_rows(x.long(), torch.tensor([0]))


@pytest.mark.gpu
def test_device_mismatch_and_cuda_out_of_range():
    x = torch.randn(4, 3, 5, 5, device="cuda")
    with pytest.raises(ValueError, match="rows must be on"):
        blockdrop_ext.gather_rows(x, torch.tensor([0]))
    with pytest.raises(ValueError, match="y must be on"):
        blockdrop_ext.merge_block(x, torch.randn(1, 3, 5, 5), torch.tensor([0], device="cuda"))
    # the raw CUDA kernel never touches memory out of bounds: an invalid row gives a zero row
    out = torch.ops.blockdrop.gather_rows(x, torch.tensor([1, 99], device="cuda"))
    assert torch.equal(out[0], x[1]) and out[1].abs().sum() == 0
    torch.cuda.synchronize()


@pytest.mark.gpu
def test_cuda_plan_makes_one_host_copy():
    policy = (torch.rand(256, 54, device="cuda") < 0.3).float()
    blockdrop_ext.plan(policy)  # warm-up
    torch.cuda.synchronize()
    torch.ops.blockdrop.plan((policy > 0).to(torch.uint8))  # the op itself must not sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.ops.blockdrop.plan((policy > 0).to(torch.uint8))
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------- opcheck / gradcheck / compile
def _opcheck_cases(device: str):
    g = _gen("cpu", 0)
    x = torch.randn(6, 4, 6, 6, generator=g).to(device)
    rows = torch.tensor([1, 4, 5], device=device)
    y = torch.randn(3, 4, 6, 6, generator=g).to(device)
    yd = torch.randn(3, 8, 3, 3, generator=g).to(device)
    policy = (torch.rand(6, 9, generator=g) < 0.5).to(device=device, dtype=torch.uint8)
    return [
        (torch.ops.blockdrop.plan.default, (policy,), {}),
        (torch.ops.blockdrop.gather_rows.default, (x.requires_grad_(), rows), {}),
        (
            torch.ops.blockdrop.gather_rows.default,
            (x.detach().contiguous(memory_format=torch.channels_last), rows),
            {},
        ),
        (torch.ops.blockdrop.scatter_add_rows.default, (y.requires_grad_(), rows, 6), {}),
        (
            torch.ops.blockdrop.merge_block.default,
            (x.detach().requires_grad_(), y.detach().requires_grad_(), rows),
            {},
        ),
        (
            torch.ops.blockdrop.merge_block.default,
            (x.detach().requires_grad_(), yd.requires_grad_(), rows, True, True),
            {},
        ),
        (torch.ops.blockdrop.merge_block_.default, (x.detach().clone(), y.detach(), rows, True), {}),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args, kwargs in _opcheck_cases(device):
        torch.library.opcheck(op, args, kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ROWS)
def test_gradcheck_float64(device, kind):
    g = _gen("cpu", 7)
    n = 5
    rows = _rows(kind, n, device, seed=8)
    x = torch.randn(n, 4, 6, 6, generator=g, dtype=torch.float64).to(device).requires_grad_()
    y = torch.randn(rows.numel(), 4, 6, 6, generator=g, dtype=torch.float64).to(device).requires_grad_()
    yd = torch.randn(rows.numel(), 8, 3, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: blockdrop_ext.gather_rows(a, rows), (x,))
    assert torch.autograd.gradcheck(lambda a: blockdrop_ext.gather_rows(a, rows), (xcl,))
    assert torch.autograd.gradcheck(lambda a: blockdrop_ext.scatter_add_rows(a, rows, n), (y,))
    for relu in (True, False):  # B023: each lambda is called at once, inside the loop
        assert torch.autograd.gradcheck(
            lambda a, b: blockdrop_ext.merge_block(a, b, rows, relu=relu),  # noqa: B023
            (x, y),
        )
        assert torch.autograd.gradcheck(
            lambda a, b: blockdrop_ext.merge_block(a, b, rows, relu=relu, downsample=True),  # noqa: B023
            (x, yd),
        )
    assert torch.autograd.gradcheck(lambda a: blockdrop_ext.downsample_a(a, 8), (x,))
    assert torch.autograd.gradgradcheck(lambda a: blockdrop_ext.gather_rows(a, rows), (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(device)

    def block(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        y = torch.relu(conv(torch.ops.blockdrop.gather_rows(x, rows)))
        h = torch.ops.blockdrop.merge_block(x, y, rows, True, False)
        return torch.ops.blockdrop.merge_block(
            h, torch.ops.blockdrop.gather_rows(h, rows)[:, :, ::2, ::2].repeat(1, 2, 1, 1), rows, True, True
        )

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    x = torch.randn(10, 8, 6, 6, device=device)
    rows = torch.tensor([0, 3, 4, 9], device=device)
    torch.testing.assert_close(compiled(x, rows), block(x, rows))


# ---------------------------------------------------------------- build
def test_build_info_reports_backends():
    info = blockdrop_ext.build_info()
    assert info["extension"] and info["cpu"], info
    if os.environ.get("BLOCKDROP_EXPECT_CUDA") == "1":
        assert info["cuda"], f"CUDA kernels were expected in this build: {info}"
    if info["cuda"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("blockdrop::plan", "CUDA")


def test_cuda_tensor_on_cpu_only_build_is_a_clear_error(monkeypatch):
    from blockdrop_ext import _loader

    monkeypatch.setattr(_loader, "has_kernel", lambda op, key: key == "CPU")

    class FakeCuda(torch.Tensor):
        @property
        def is_cuda(self):  # noqa: D401
            return True

    x = torch.randn(2, 3, 4, 4).as_subclass(FakeCuda)
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        blockdrop_ext.ops._impl("gather_rows", x)
