"""dynamic_forward: every strategy returns masked's logits (and gradients) for any policy; the
masked reference itself matches an independent per-image oracle built from the blocks' modules;
bad inputs raise ValueError naming the argument; the pretrained ResNet-32 keeps its accuracy."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from _helpers import (
    MODELS,
    expect_value_error as _expect,
    grads as _grads,
    inputs as _inputs,
    load_lossless_test1000 as _load_test1000,
    model as _model,
    oracle as _oracle,
    policy as _policy,
    tol as _tol,
)
from blockdrop import dynamic_forward, models
from blockdrop.engine import AUTO_MIN_GROUP_SIZE, choose_strategy

FAST = ("loop", "gather", "group", "auto")
ALL = ("masked",) + FAST


# ------------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kind", ["random", "prototypes", "zeros", "ones"])
def test_all_strategies_match_masked(name: str, kind: str) -> None:
    model = _model(name)
    n = 5 if name == "resnet50" else 7
    x = _inputs(name, n)
    policy = _policy(kind, n, model.num_blocks)
    with torch.no_grad():
        ref = dynamic_forward(model, x, policy, "masked")
        assert ref.shape == (n, model.num_classes)
        assert torch.isfinite(ref).all()
        oracle = _oracle(model, x, policy)
        assert (ref - oracle).abs().max() <= _tol(oracle), "masked disagrees with the oracle"
        for strategy in FAST:
            out = dynamic_forward(model, x, policy, strategy)
            assert out.shape == ref.shape and out.dtype == ref.dtype
            err = float((out - ref).abs().max())
            assert err <= _tol(ref), f"{strategy}: max abs diff {err:.3g}"


@pytest.mark.parametrize("name", ["cifar20", "resnet18"])
def test_policy_changes_result(name: str) -> None:
    """Guard against vacuous equivalence: dropping blocks must change the logits."""
    model = _model(name)
    x = _inputs(name, 3)
    k = model.num_blocks
    with torch.no_grad():
        full = model(x)
        ones = dynamic_forward(model, x, torch.ones(3, k), "gather")
        zeros = dynamic_forward(model, x, torch.zeros(3, k), "gather")
        mixed = dynamic_forward(model, x, torch.tensor([[1] * k, [0] * k, [1] * k]), "gather")
    assert (ones - full).abs().max() <= _tol(full)
    assert (zeros - full).abs().max() > 100 * _tol(full)
    assert (mixed[0] - full[0]).abs().max() <= _tol(full)
    assert (mixed[1] - zeros[1]).abs().max() <= _tol(full)


@pytest.mark.parametrize("name", ["cifar20", "resnet18"])
@pytest.mark.parametrize("strategy", ALL)
def test_one_image_and_empty_batch(name: str, strategy: str) -> None:
    model = _model(name)
    k = model.num_blocks
    with torch.no_grad():
        x1 = _inputs(name, 1)
        p1 = _policy("random", 1, k)
        ref = _oracle(model, x1, p1)
        out = dynamic_forward(model, x1, p1, strategy)
        assert out.shape == (1, model.num_classes)
        assert (out - ref).abs().max() <= _tol(ref)
        x0 = _inputs(name, 0)
        out0 = dynamic_forward(model, x0, torch.zeros(0, k, dtype=torch.bool), strategy)
        assert out0.shape == (0, model.num_classes)


@pytest.mark.parametrize("name", ["cifar20", "resnet18"])
def test_channels_last(name: str) -> None:
    model = copy.deepcopy(_model(name)).to(memory_format=torch.channels_last)
    n = 6
    x = _inputs(name, n).contiguous(memory_format=torch.channels_last)
    policy = _policy("random", n, model.num_blocks)
    with torch.no_grad():
        ref = _oracle(_model(name), x.contiguous(), policy)
        for strategy in ALL:
            out = dynamic_forward(model, x, policy, strategy)
            assert (out - ref).abs().max() <= _tol(ref), strategy


def _lowp_check(run, model32, x32, policy, dtype_note: str) -> None:
    """Judge low-precision results against a float64 reference: each strategy's error must be
    within a small factor of masked's own low-precision error."""
    m64 = copy.deepcopy(model32).double()
    with torch.no_grad():
        ref64 = dynamic_forward(m64, x32.double(), policy, "masked")
        errs = {}
        for strategy in ALL:
            out = run(strategy)
            assert torch.isfinite(out).all(), (dtype_note, strategy)
            errs[strategy] = float((out.double() - ref64).abs().max())
    base = max(errs["masked"], 1e-3 * float(ref64.abs().max()))
    for strategy, err in errs.items():
        assert err <= 4 * base, f"{dtype_note} {strategy}: err {err:.3g} vs masked {errs['masked']:.3g}"
    # and the low-precision run is really low precision yet sane
    assert errs["masked"] < 0.1 * float(ref64.abs().max()) + 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["cifar20", "resnet18"])
def test_low_precision(name: str, dtype: torch.dtype) -> None:
    model32 = _model(name)
    n = 6
    x = _inputs(name, n)
    policy = _policy("random", n, model32.num_blocks)
    model = copy.deepcopy(model32).to(dtype)
    xl = x.to(dtype)
    _lowp_check(lambda s: dynamic_forward(model, xl, policy, s), model32, x, policy, str(dtype))


@pytest.mark.parametrize("name", ["cifar20", "resnet18"])
def test_autocast_bf16(name: str) -> None:
    model = _model(name)
    n = 6
    x = _inputs(name, n)
    policy = _policy("prototypes", n, model.num_blocks)

    def run(strategy: str) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return dynamic_forward(model, x, policy, strategy)

    _lowp_check(run, model, x, policy, "autocast-bf16")


# -------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["cifar20", "resnet18"])
def test_gradients_equal_masked_in_eval(name: str) -> None:
    model = copy.deepcopy(_model(name)).eval()
    n = 6
    x = _inputs(name, n)
    policy = _policy("prototypes", n, model.num_blocks)
    policy[0] = 1  # make sure some block is executed by some but not all images
    policy[1] = 0
    w = torch.randn(n, model.num_classes, generator=torch.Generator().manual_seed(3))
    ref = _grads(model, x, policy, "masked", w)
    assert ref["x"].abs().max() > 0
    for strategy in ("gather", "group", "loop", "auto"):
        got = _grads(model, x, policy, strategy, w)
        for key, g in ref.items():
            scale = max(float(g.abs().max()), 1e-6)
            err = float((got[key] - g).abs().max())
            assert err <= 2e-4 * scale + 1e-7, f"{strategy}: grad of {key} off by {err:.3g} ({scale:.3g})"


def test_train_mode_runs_and_backprops() -> None:
    """Train mode is allowed (BN statistics then differ by design: documented)."""
    model = copy.deepcopy(_model("cifar20")).train()
    x = _inputs("cifar20", 8)
    policy = _policy("random", 8, model.num_blocks)
    for strategy in ("gather", "group"):
        out = dynamic_forward(model, x, policy, strategy)
        out.sum().backward()
        assert model.conv1.weight.grad is not None


def test_inference_mode_in_place_path_matches() -> None:
    model = _model("resnet18")
    x = _inputs("resnet18", 6)
    policy = _policy("random", 6, model.num_blocks)
    with torch.no_grad():
        ref = dynamic_forward(model, x, policy, "masked")
    with torch.inference_mode():
        out = dynamic_forward(model, x, policy, "gather")
    x_before = x.clone()
    assert (out - ref).abs().max() <= _tol(ref)
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("strategy", ALL)
def test_no_grad_returns_ordinary_tensor(strategy: str) -> None:
    """Under no_grad the engine runs in inference mode internally; what it returns must still be an
    ordinary tensor that later autograd code can use (an inference tensor could not be saved)."""
    model = _model("cifar20")
    x = _inputs("cifar20", 6)
    policy = _policy("random", 6, model.num_blocks)
    with torch.no_grad():
        out = dynamic_forward(model, x, policy, strategy)
    assert not out.is_inference() and not out.requires_grad
    ref = _oracle(model, x, policy)
    assert (out - ref).abs().max() <= _tol(ref)
    w = torch.randn_like(out, requires_grad=True)
    (w * out).sum().backward()  # saves `out` for backward: fails for an inference tensor
    assert torch.equal(w.grad, out)


# ------------------------------------------------------------------------------------------ auto


class _FakePlan:
    def __init__(self, g: int) -> None:
        self.num_groups = g


def test_auto_one_image_skips_the_plan(monkeypatch) -> None:
    """auto at N == 1 runs the image's own path (loop) without the plan kernel, same logits."""
    import blockdrop_ext

    model = _model("cifar20")
    x = _inputs("cifar20", 1)
    policy = _policy("random", 1, model.num_blocks)
    with torch.no_grad():
        ref = dynamic_forward(model, x, policy, "masked")

        def no_plan(*args, **kwargs):
            raise AssertionError("plan() called for one image")

        monkeypatch.setattr(blockdrop_ext, "plan", no_plan)
        out = dynamic_forward(model, x, policy, "auto")
    assert (out - ref).abs().max() <= _tol(ref)


def test_auto_rule() -> None:
    assert choose_strategy(None, 1) == "loop"
    assert choose_strategy(_FakePlan(1), 256) == "group"
    assert choose_strategy(_FakePlan(256 // AUTO_MIN_GROUP_SIZE), 256) == "group"
    assert choose_strategy(_FakePlan(256 // AUTO_MIN_GROUP_SIZE + 1), 256) == "gather"
    assert choose_strategy(_FakePlan(200), 256) == "gather"


# -------------------------------------------------------------------------------------- bad input


def test_bad_shapes_and_models() -> None:
    model = _model("cifar20")
    k = model.num_blocks
    x = _inputs("cifar20", 4)
    ok = torch.ones(4, k)
    _expect("policy", lambda: dynamic_forward(model, x, torch.ones(4, k + 1)))
    _expect("policy", lambda: dynamic_forward(model, x, torch.ones(3, k)))
    _expect("policy", lambda: dynamic_forward(model, x, torch.ones(4 * k)))
    _expect("policy", lambda: dynamic_forward(model, x, [[1] * k] * 4))
    _expect("policy", lambda: dynamic_forward(model, x, ok.to("meta")))
    _expect("x", lambda: dynamic_forward(model, x[:, :2], ok))
    _expect("x", lambda: dynamic_forward(model, x[0], ok))
    _expect("x", lambda: dynamic_forward(model, x.double(), ok))
    _expect("x", lambda: dynamic_forward(model, x.to("meta"), ok))
    _expect("model", lambda: dynamic_forward(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), x, ok))
    _expect("model", lambda: dynamic_forward(torch.nn.Linear(3, 3), x, ok))
    _expect("strategy", lambda: dynamic_forward(model, x, ok, "fastest"))


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("bad", [2.0, 0.5, float("nan"), -1.0])
def test_bad_policy_values(strategy: str, bad: float) -> None:
    model = _model("cifar20")
    x = _inputs("cifar20", 3)
    policy = torch.ones(3, model.num_blocks)
    policy[1, 4] = bad
    _expect("policy", lambda: dynamic_forward(model, x, policy, strategy))
    if bad == 2.0:
        _expect("policy", lambda: dynamic_forward(model, x, policy.to(torch.uint8), strategy))
        _expect("policy", lambda: dynamic_forward(model, x, policy.long(), strategy))


def test_torchvision_resnet_accepted_directly() -> None:
    wrapped = _model("resnet18")
    x = _inputs("resnet18", 3)
    policy = _policy("random", 3, wrapped.num_blocks)
    with torch.no_grad():
        got = dynamic_forward(wrapped.resnet, x, policy, "gather")  # the bare torchvision module
    ref = _oracle(wrapped, x, policy)
    torch.testing.assert_close(got, ref, rtol=0, atol=_tol(ref))


# --------------------------------------------------------------------------------------------- data


def test_pretrained_resnet32_accuracy_all_strategies(shared_data: Path) -> None:
    root = shared_data
    weights = sorted((root / "weights").glob("resnet32-*.th"))
    archive = root / "cifar10" / "cifar10-test1000-lossless.tar.gz"
    if not weights or not archive.is_file():
        pytest.skip(
            f"pretrained ResNet-32 or lossless CIFAR-10 subset not found under {root} "
            "(set BLOCKDROP_DATA to the shared data folder)"
        )
    model = models.load_cifar_resnet(weights[0])
    assert model.depth == 32 and model.num_blocks == 15
    x, y = _load_test1000(archive)
    assert x.shape == (1000, 3, 32, 32)
    policy = torch.ones(1000, model.num_blocks, dtype=torch.bool)
    with torch.no_grad():
        for strategy in ALL:
            acc = float((dynamic_forward(model, x, policy, strategy).argmax(1) == y).float().mean())
            assert acc >= 0.92, f"{strategy}: accuracy {acc:.3f}"


def test_host_overhead_script_runs(capsys) -> None:
    """scripts/host_overhead.py (the README's host-overhead numbers) still runs against this API."""
    import runpy
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "host_overhead.py"
    argv = sys.argv
    sys.argv = [str(script), "--rounds", "2", "--batch", "8"]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert "inference_mode" in out and "gather +" in out and "no_grad" in out


def test_wrapped_models_are_unwrapped() -> None:
    """DataParallel / DistributedDataParallel / torch.compile wrappers: the engine runs the module
    inside (its weights), with the same result as the bare model."""
    from blockdrop.models import cifar_resnet

    torch.manual_seed(0)
    m = cifar_resnet(8).eval()
    x = torch.randn(3, 3, 16, 16)
    policy = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1]]).float()
    with torch.no_grad():
        ref = dynamic_forward(m, x, policy, strategy="masked")
        for wrapped in (torch.nn.DataParallel(m), torch.compile(m), torch.nn.DataParallel(torch.compile(m))):
            torch.testing.assert_close(dynamic_forward(wrapped, x, policy, strategy="gather"), ref)
