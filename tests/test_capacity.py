"""capacity_forward: block k on the top-C_k images of the batch equals the masked reference under
that policy -- the policy computed here by an independent plain-Python ranking -- for every backbone
kind (CIFAR, torchvision, timm, official), fp32/bf16, NCHW/channels_last, with and without
autograd; ties go to the lower index, deterministically; capacities 0 and N; counts from shares;
bad input is a ValueError naming the argument."""

from __future__ import annotations

import copy

import pytest
import torch

from _helpers import oracle, randomize_bn, tol
from blockdrop import capacity_forward, dynamic_forward, models
from blockdrop.capacity import capacity_policy, counts_from_shares, resolve_capacity

# ----------------------------------------------------------------------------------------- models


def _timm18() -> torch.nn.Module:
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'blockdrop[timm]')")
    torch.manual_seed(0)
    return models.from_timm(randomize_bn(timm.create_model("resnet18", pretrained=False, num_classes=7)))


def _official() -> torch.nn.Module:
    from blockdrop.interop.official_models import OfficialCifarResNet

    torch.manual_seed(0)
    return randomize_bn(OfficialCifarResNet([2, 2, 2], 10))


KINDS = {  # kind -> (builder, input size)
    "cifar": (lambda: (torch.manual_seed(0), randomize_bn(models.cifar_resnet(20)))[1], (3, 32, 32)),
    "torchvision": (
        lambda: (
            torch.manual_seed(0),
            models.from_torchvision(randomize_bn(__import__("torchvision").models.resnet18(num_classes=10))),
        )[1],
        (3, 64, 64),
    ),
    "timm": (_timm18, (3, 64, 64)),
    "official": (_official, (3, 32, 32)),
}
_BUILT: dict[str, torch.nn.Module] = {}


def _model(kind: str) -> torch.nn.Module:
    if kind not in _BUILT:
        _BUILT[kind] = KINDS[kind][0]().eval()
    return _BUILT[kind]


def _inputs(kind: str, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and scores with ties: scores take 4 levels only, so ranks must break ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *KINDS[kind][1]), generator=g)
    scores = torch.randint(0, 4, (n, _model(kind).num_blocks), generator=g).float() / 4
    return x, scores


def _counts(n: int, k: int) -> list[int]:
    """Every block a different count, 0 and N included."""
    pattern = [0, n, 1, n - 1, n // 2, 2]
    return [pattern[i % len(pattern)] for i in range(k)]


def reference_policy(scores: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Independent of the library: per block, sort the images by (-score, index) in Python and
    keep the first C_k."""
    n, k = scores.shape
    p = torch.zeros(n, k, dtype=torch.bool)
    for j in range(k):
        col = scores[:, j].float().tolist()
        order = sorted(range(n), key=lambda i: (-col[i], i))
        p[order[: counts[j]], j] = True
    return p


def _run(model, x, scores, counts, grad: bool, w: torch.Tensor | None = None):
    """Logits, executed policy, and (with ``grad``) the gradients of x and the parameters."""
    model.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out, p = capacity_forward(model, xg, scores, counts, return_policy=True)
        if grad:
            (out.float() * w).sum().backward()
    return out.detach(), p, _grads(model, xg) if grad else None


def _masked(model, x, policy, grad: bool, w: torch.Tensor | None = None):
    model.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = dynamic_forward(model, xg, policy, "masked")
        if grad:
            (out.float() * w).sum().backward()
    return out.detach(), _grads(model, xg) if grad else None


def _grads(model, xg) -> dict[str, torch.Tensor]:
    g = {"x": xg.grad.detach().clone()}
    for name, p in model.named_parameters():
        g[name] = torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
    return g


# ------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "autograd"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_equals_masked_under_the_executed_policy(
    kind: str, dtype: torch.dtype, layout: str, grad: bool
) -> None:
    base = _model(kind)
    n = 6
    x, scores = _inputs(kind, n)
    counts = _counts(n, base.num_blocks)
    expected = reference_policy(scores, counts)
    cl = layout == "channels_last"
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = copy.deepcopy(base).to(dtype=dtype, memory_format=fmt)
    xl = x.to(dtype).contiguous(memory_format=fmt)
    w = torch.randn(n, base.num_classes, generator=torch.Generator().manual_seed(3))
    out, policy, got_g = _run(model, xl, scores.to(dtype), counts, grad, w)
    assert torch.equal(policy, expected), "executed policy differs from the reference ranking"
    assert out.dtype == dtype and out.shape == (n, base.num_classes)
    ref, ref_g = _masked(model, xl, expected, grad, w)
    if dtype == torch.float32:
        assert (out - ref).abs().max() <= tol(ref)
        for key, g in (ref_g or {}).items():
            scale = max(float(g.abs().max()), 1e-6)
            assert float((got_g[key] - g).abs().max()) <= 2e-4 * scale + 1e-7, key
        return
    # bf16: both judged against a float64 masked reference; capacity within 4x masked's own error
    m64 = copy.deepcopy(base).double()
    ref64, ref64_g = _masked(m64, x.double(), expected, grad, w.double())
    err = float((out.double() - ref64).abs().max())
    err_masked = float((ref.double() - ref64).abs().max())
    assert err <= 4 * max(err_masked, 1e-3 * float(ref64.abs().max()))
    for key, g in (ref64_g or {}).items():
        e, em = (float((a[key].double() - g).abs().max()) for a in (got_g, ref_g))
        assert e <= 4 * max(em, 1e-2 * float(g.abs().max()) + 1e-6), key


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_traced_path_equals_eager(kind: str, layout: str) -> None:
    """Under torch.compile/export a mixed block is written in ATen ops (index_select -> block ->
    index_copy) instead of the fused kernels: same policy, same logits, every shortcut kind."""
    torch._dynamo.reset()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = copy.deepcopy(_model(kind)).to(memory_format=fmt)
    x, scores = _inputs(kind, 6)
    x = x.contiguous(memory_format=fmt)
    counts = _counts(6, model.num_blocks)
    f = torch.compile(
        lambda x, s: capacity_forward(model, x, s, counts, return_policy=True),
        fullgraph=True,
        backend="eager",
    )
    with torch.no_grad():
        (out, p), (ref, ref_p) = f(x, scores), capacity_forward(model, x, scores, counts, return_policy=True)
    torch._dynamo.reset()
    assert torch.equal(p, ref_p) and torch.equal(p, reference_policy(scores, counts))
    assert (out - ref).abs().max() <= tol(ref)


def test_masked_reference_matches_the_per_image_oracle() -> None:
    """The reference the equivalence rests on, checked against the blocks' own modules."""
    model = _model("cifar")
    x, scores = _inputs("cifar", 5)
    counts = _counts(5, model.num_blocks)
    p = reference_policy(scores, counts)
    with torch.no_grad():
        out = capacity_forward(model, x, scores, counts)
        ref = oracle(model, x, p)
    assert (out - ref).abs().max() <= tol(ref)
    assert (out - model(x)).abs().max() > 100 * tol(ref)  # not vacuous: blocks were dropped


# ------------------------------------------------------------------------- ties, extremes, batches


def test_ties_go_to_the_lower_index_deterministically() -> None:
    model = _model("cifar")
    x, _ = _inputs("cifar", 7)
    k = model.num_blocks
    flat = torch.zeros(7, k)  # all tied: block k runs on images 0 .. C_k - 1
    counts = [c % 8 for c in range(k)]
    with torch.no_grad():
        out, p = capacity_forward(model, x, flat, counts, return_policy=True)
        again = [capacity_forward(model, x, flat, counts, return_policy=True) for _ in range(3)]
    for j, c in enumerate(counts):
        assert p[:, j].tolist() == [i < c for i in range(7)]
    for o, q in again:
        assert torch.equal(q, p) and torch.equal(o, out)
    s = torch.tensor([[0.5], [0.9], [0.5], [0.9], [0.1]]).expand(5, k).contiguous()
    assert capacity_policy(s, [3] * k)[:, 0].tolist() == [True, True, False, True, False]


@pytest.mark.parametrize("kind", ["cifar", "torchvision"])
def test_capacity_zero_and_n(kind: str) -> None:
    model = _model(kind)
    n, k = 5, model.num_blocks
    x, scores = _inputs(kind, n)
    with torch.no_grad():
        none = capacity_forward(model, x, scores, [0] * k)
        every = capacity_forward(model, x, scores, [n] * k)
        shares = capacity_forward(model, x, scores, [1.0] * k)
        ref_none = dynamic_forward(model, x, torch.zeros(n, k), "masked")
        full = model(x)
    assert (none - ref_none).abs().max() <= tol(ref_none)
    assert (every - full).abs().max() <= tol(full) and torch.equal(every, shares)
    assert capacity_policy(scores, [0] * k).sum() == 0 and capacity_policy(scores, [1.0] * k).all()
    empty = capacity_forward(model, x[:0], scores[:0], [0.5] * k)
    assert empty.shape == (0, model.num_classes)


def test_batch_smaller_than_calibrated_and_batch_one() -> None:
    """Shares give each batch size its own counts; at batch 1 every image runs the same static
    sub-network: the round(sum(shares)) blocks with the largest shares."""
    model = _model("cifar")
    k = model.num_blocks
    shares = [0.9, 0.1, 0.6, 0.3, 0.75, 0.2, 0.55, 0.05, 0.4][:k]
    x, scores = _inputs("cifar", 4, seed=5)
    with torch.no_grad():
        out, p = capacity_forward(model, x, scores, shares, return_policy=True)
        assert p.sum(0).tolist() == list(counts_from_shares(shares, 4))
        assert (out - dynamic_forward(model, x, p, "masked")).abs().max() <= tol(out)
        static = torch.tensor([[s in (0.9, 0.75, 0.6, 0.55) for s in shares]])  # round(3.85) = 4
        for i in range(3):
            o1, p1 = capacity_forward(model, x[i : i + 1], scores[i : i + 1], shares, return_policy=True)
            assert torch.equal(p1, static)
            assert (o1 - oracle(model, x[i : i + 1], static)).abs().max() <= tol(o1)


def test_no_grad_returns_ordinary_tensors() -> None:
    model = _model("cifar")
    x, scores = _inputs("cifar", 4)
    with torch.no_grad():
        out, p = capacity_forward(model, x, scores, [2] * model.num_blocks, return_policy=True)
    assert not out.is_inference() and not p.is_inference()


@pytest.mark.parametrize("kind,n", [("cifar", 64), ("torchvision", 8)])
@pytest.mark.parametrize("share", [0.3, 0.9])
def test_inference_peak_memory_within_full(kind: str, n: int, share: float) -> None:
    """Inference peak <= 1.10 x the full network's at the same batch (0.9: nearly every row
    gathered, the worst case of a copy that is not freed after the block's first layer)."""
    from blockdrop.evaluation.memory import peak_memory

    model = _model(kind)
    x, scores = _inputs(kind, n)
    capacity = [share] * model.num_blocks
    with torch.inference_mode():
        model(x)
        full = peak_memory(lambda: model(x), "cpu")
        capacity_forward(model, x, scores, capacity)
        peak = peak_memory(lambda: capacity_forward(model, x, scores, capacity), "cpu")
    assert peak <= 1.10 * full, f"peak {peak / 2**20:.1f} MiB vs full {full / 2**20:.1f} MiB"


# --------------------------------------------------------------------------------- counts, shares


def test_counts_from_shares_rounding() -> None:
    assert counts_from_shares([0.29] * 3, 100) == (29, 29, 29)
    assert counts_from_shares([0.145], 100) == (15,)  # 14.5 half up, though 0.145 * 100 < 14.5 in floats
    assert counts_from_shares([0.5, 0.25, 0.75], 4) == (2, 1, 3)
    assert counts_from_shares([0.5, 0.5, 0.5], 1) == (1, 1, 0)  # 1.5 -> 2 in all, lower blocks first
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        k, n = int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(1, 300, (1,), generator=g))
        shares = torch.rand(k, generator=g, dtype=torch.float64).tolist()
        c = counts_from_shares(shares, n)
        assert sum(c) == int(sum(s * n for s in shares) + 0.5)
        assert all(abs(ci - s * n) < 1 and 0 <= ci <= n for ci, s in zip(c, shares))


def test_capacity_forms() -> None:
    assert resolve_capacity(torch.tensor([1, 2, 3]), 4, 3) == (1, 2, 3)
    assert resolve_capacity(torch.tensor([0.5, 0.25, 1.0]), 4, 3) == (2, 1, 4)
    assert resolve_capacity([1, 0.5, 0], 4, 3) == (4, 2, 0)  # any float: shares


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "capacity,match",
    [
        ([5, 0, 0, 0, 0, 0, 0, 0, 0], r"capacity: expected counts in \[0, N\] = \[0, 4\], got 5 at block 0"),
        ([0, -1, 0, 0, 0, 0, 0, 0, 0], r"capacity: expected counts in \[0, N\].*-1 at block 1"),
        ([1, 2], r"capacity: expected K = 9 values \(one per block\), got 2"),
        ([0.5] * 8 + [1.5], r"capacity: expected shares in \[0, 1\], got 1.5 at block 8"),
        ([0.5] * 8 + [float("nan")], r"capacity: expected shares in \[0, 1\], got nan"),
        (torch.ones(9, dtype=torch.bool), r"capacity: expected integer counts or float shares"),
        (torch.ones(3, 3), r"capacity: expected a 1-D tensor of length K = 9"),
        ("all", r"capacity: expected K = 9 counts or shares"),
        ([True] * 9, r"capacity: expected ints \(counts\) or floats \(shares\), got True"),
    ],
)
def test_bad_capacity_is_a_value_error(capacity, match: str) -> None:
    model = _model("cifar")
    x, scores = _inputs("cifar", 4)
    with pytest.raises(ValueError, match=match):
        capacity_forward(model, x, scores, capacity)


def test_bad_scores_are_a_value_error() -> None:
    model = _model("cifar")
    x, scores = _inputs("cifar", 4)
    k = model.num_blocks
    nan = scores.clone()
    nan[2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"scores: expected no NaN, got NaN at \[2, 3\]"):
        capacity_forward(model, x, nan, [1] * k)
    with pytest.raises(ValueError, match=r"scores: expected shape \[N, K\] = \[4, 9\]"):
        capacity_forward(model, x, scores[:, :3], [1] * k)
    with pytest.raises(ValueError, match=r"scores: expected a floating-point tensor"):
        capacity_forward(model, x, scores.long(), [1] * k)
    with pytest.raises(ValueError, match=r"x: expected 3 input channels"):
        capacity_forward(model, x[:, :2], scores, [1] * k)
    with pytest.raises(ValueError, match=r"model: expected"):
        capacity_forward(torch.nn.Linear(2, 2), x, scores, [1] * k)
