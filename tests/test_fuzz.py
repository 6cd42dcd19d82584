"""Property-based equivalence (hypothesis): every op and ``dynamic_forward`` against plain-PyTorch
references written here, on random sizes (N = 0 included), dtypes, memory formats, non-contiguous
inputs, policies and strategies. Bounded for CI (``BLOCKDROP_FUZZ_EXAMPLES``, default 25 per
property; set it to e.g. 500 for a long run)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import blockdrop_ext as bx
from blockdrop import dynamic_forward
from blockdrop.models import cifar_resnet

EXAMPLES = int(os.environ.get("BLOCKDROP_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-12), torch.bfloat16: (1.6e-2, 1e-2)}


@st.composite
def activations(draw, n_min: int = 0, c_even: bool = False):
    """A random 4-D activation in a random layout: contiguous, channels_last, or a strided view."""
    n = draw(st.integers(n_min, 7))
    c = draw(st.integers(1, 4)) * (2 if c_even else 1)
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    if layout == "strided":  # every second channel of a wider tensor
        x = torch.randn(n, 2 * c, h, w, generator=g).to(dtype)[:, ::2]
    else:
        x = torch.randn(n, c, h, w, generator=g).to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    return x, g


def _rows(draw, n: int, g: torch.Generator, distinct: bool) -> torch.Tensor:
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    if distinct:
        m = draw(st.integers(0, n))
        return torch.randperm(n, generator=g)[:m].sort().values
    m = draw(st.integers(0, 2 * n))
    return torch.randint(0, n, (m,), generator=g)


@FUZZ
@given(data=st.data())
def test_gather_and_scatter_rows(data) -> None:
    x, g = data.draw(activations())
    rows = _rows(data.draw, x.shape[0], g, distinct=False)
    got = bx.gather_rows(x, rows)
    ref = torch.stack([x[i] for i in rows.tolist()]) if rows.numel() else x[:0]
    assert torch.equal(got, ref)
    n_out = data.draw(st.integers(int(rows.max()) + 1 if rows.numel() else 0, 9))
    src = torch.randn(rows.numel(), *x.shape[1:], generator=g).to(x.dtype)
    out = bx.scatter_add_rows(src, rows, n_out)
    ref = torch.zeros(n_out, *x.shape[1:], dtype=torch.float64)
    for i, r in enumerate(rows.tolist()):
        ref[r] += src[i].double()
    rtol, atol = TOL[x.dtype]
    torch.testing.assert_close(out.double(), ref, rtol=rtol * 4, atol=atol * 4)


def _option_a(s: torch.Tensor, c_out: int) -> torch.Tensor:
    """Option A written out: every second pixel, (c_out - C)/2 zero channels on each side."""
    n, c, h, w = s.shape
    out = torch.zeros(n, c_out, (h + 1) // 2, (w + 1) // 2, dtype=s.dtype)
    pad = (c_out - c) // 2
    out[:, pad : pad + c] = s[:, :, ::2, ::2]
    return out


@FUZZ
@given(data=st.data(), relu=st.booleans(), downsample=st.booleans())
def test_merge_block(data, relu: bool, downsample: bool) -> None:
    s, g = data.draw(activations())
    n, c, h, w = s.shape
    c_out = c + 2 * data.draw(st.integers(0, 2)) if downsample else c
    ho, wo = ((h + 1) // 2, (w + 1) // 2) if downsample else (h, w)
    rows = _rows(data.draw, n, g, distinct=True)
    y = torch.randn(rows.numel(), c_out, ho, wo, generator=g).to(s.dtype)
    got = bx.merge_block(s, y, rows, relu=relu, downsample=downsample)
    base = _option_a(s.double(), c_out) if downsample else s.double()
    ref = base.clone()
    for i, r in enumerate(rows.tolist()):
        v = base[r] + y[i].double()
        ref[r] = v.clamp_min(0) if relu else v
    rtol, atol = TOL[s.dtype]
    assert got.shape == (n, c_out, ho, wo) and got.dtype == s.dtype
    torch.testing.assert_close(got.double(), ref, rtol=rtol * 4, atol=atol * 4)
    if not downsample and s.is_contiguous(memory_format=torch.channels_last) and not s.is_contiguous():
        assert got.is_contiguous(memory_format=torch.channels_last)  # keeps the layout


@FUZZ
@given(data=st.data(), relu=st.booleans())
def test_merge_block_in_place(data, relu: bool) -> None:
    x, g = data.draw(activations())
    x = (
        x.clone()
        if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        else x.contiguous()
    )
    rows = _rows(data.draw, x.shape[0], g, distinct=True)
    y = torch.randn(rows.numel(), *x.shape[1:], generator=g).to(x.dtype)
    ref = x.double().clone()
    for i, r in enumerate(rows.tolist()):
        v = ref[r] + y[i].double()
        ref[r] = v.clamp_min(0) if relu else v
    with torch.no_grad():
        bx.merge_block_(x, y, rows, relu=relu)
    rtol, atol = TOL[x.dtype]
    torch.testing.assert_close(x.double(), ref, rtol=rtol * 4, atol=atol * 4)


@FUZZ
@given(
    n=st.integers(0, 12),
    k=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.bool, torch.uint8, torch.float32, torch.int64]),
    keep=st.floats(0.0, 1.0),
)
def test_plan(n: int, k: int, seed: int, dtype: torch.dtype, keep: float) -> None:
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(n, k, generator=g) < keep
    p = bx.plan(on.to(dtype))
    for j in range(k):
        assert p.block_rows(j).tolist() == [i for i in range(n) if on[i, j]]
    distinct = sorted({tuple(r) for r in on.to(torch.uint8).tolist()})
    assert p.num_groups == len(distinct) and sum(p.group_counts) == n
    assert sorted(p.perm.tolist()) == list(range(n))
    for gi in range(p.num_groups):
        members = p.group_rows(gi).tolist()
        assert members == sorted(members)
        assert all(on[i].tolist() == p.group_policy_host[gi].bool().tolist() for i in members)


def _oracle(model, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """Each image alone through plain modules, float64: executed block = the block's own forward,
    dropped block = its shortcut."""
    m = model.double()
    blocks = [b for layer in (m.layer1, m.layer2, m.layer3) for b in layer]
    outs = []
    for i in range(x.shape[0]):
        h = torch.relu(m.bn1(m.conv1(x[i : i + 1].double())))
        for j, b in enumerate(blocks):
            h = b(h) if policy[i, j] else b.shortcut(h)
        outs.append(m.linear(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1)))
    return torch.cat(outs) if outs else torch.zeros(0, m.num_classes, dtype=torch.float64)


@pytest.fixture(scope="module")
def nets() -> dict[int, torch.nn.Module]:
    torch.manual_seed(0)
    out = {}
    for depth in (8, 14):
        net = cifar_resnet(depth, num_classes=5).eval()
        for mod in net.modules():  # non-trivial BN statistics
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
        out[depth] = net
    return out


@FUZZ
@given(
    depth=st.sampled_from([8, 14]),
    n=st.integers(0, 9),
    size=st.sampled_from([4, 7, 8]),
    strategy=st.sampled_from(["auto", "masked", "loop", "gather", "group"]),
    channels_last=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    policy_kind=st.sampled_from(["iid", "prototypes", "ones", "zeros"]),
    seed=st.integers(0, 2**16),
    grad=st.booleans(),
)
def test_dynamic_forward_matches_the_per_image_oracle(
    nets, depth, n, size, strategy, channels_last, dtype, policy_kind, seed, grad
) -> None:
    import copy

    model = copy.deepcopy(nets[depth]).to(dtype)
    k = model.num_blocks
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if policy_kind == "iid":
        policy = torch.rand(n, k, generator=g) < 0.5
    elif policy_kind == "prototypes":
        protos = torch.rand(2, k, generator=g) < 0.5
        policy = protos[torch.randint(0, 2, (n,), generator=g)]
    else:
        policy = torch.full((n, k), policy_kind == "ones")
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        got = dynamic_forward(model, x, policy.float(), strategy=strategy)
    ref = _oracle(copy.deepcopy(nets[depth]), x, policy)
    assert got.shape == (n, 5) and got.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)
