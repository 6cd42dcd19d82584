"""dynamic_forward: every strategy returns masked's logits (and gradients) for any policy; the
masked reference itself matches an independent per-image oracle built from the blocks' modules;
bad inputs raise ValueError naming the argument; the pretrained ResNet-32 keeps its accuracy."""

from __future__ import annotations

import contextlib
import copy
import io
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
import torchvision

from blockdrop import dynamic_forward, models
from conftest import DEVICES
from blockdrop.engine import AUTO_MIN_GROUP_SIZE, choose_strategy

FAST = ("loop", "gather", "group", "auto")
ALL = ("masked",) + FAST


# ----------------------------------------------------------------------------------------- helpers




def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics/affine so that every block visibly changes its input."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def _cifar(depth: int = 20) -> models.CifarResNet:
    torch.manual_seed(0)
    return _randomize_bn(models.cifar_resnet(depth))


def _tv(name: str) -> models.TorchvisionResNet:
    torch.manual_seed(0)
    return models.from_torchvision(_randomize_bn(getattr(torchvision.models, name)(num_classes=10)))


MODELS = {
    "cifar20": (lambda: _cifar(20), (3, 32, 32)),
    "resnet18": (lambda: _tv("resnet18"), (3, 64, 64)),
    "resnet50": (lambda: _tv("resnet50"), (3, 64, 64)),
}
_built: dict[str, torch.nn.Module] = {}


def _model(name: str) -> torch.nn.Module:
    if name not in _built:
        _built[name] = MODELS[name][0]()
    return _built[name]


def _inputs(name: str, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *MODELS[name][1]), generator=g)


def _policy(kind: str, n: int, k: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return (torch.rand(n, k, generator=g) < 0.5).to(torch.uint8)
    if kind == "prototypes":  # few distinct policies, repeated: exercises grouping
        protos = torch.rand(3, k, generator=g) < 0.5
        return protos[torch.randint(0, 3, (n,), generator=g)]
    if kind == "zeros":
        return torch.zeros(n, k, dtype=torch.bool)
    if kind == "ones":
        return torch.ones(n, k)
    raise AssertionError(kind)


def _oracle(model: torch.nn.Module, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """Per-image oracle from the blocks' own modules, independent of the engine."""
    outs = []
    with torch.no_grad():
        for n in range(x.shape[0]):
            h = model.stem(x[n : n + 1])
            for k, view in enumerate(model.blocks):
                b = view.module
                if policy[n, k]:
                    h = b(h)  # the block's own forward
                elif isinstance(model, models.CifarResNet):
                    h = b.shortcut(h)
                else:
                    h = h if b.downsample is None else b.downsample(h)
            outs.append(model.head(h))
    return torch.cat(outs)


def _tol(ref: torch.Tensor) -> float:
    return 1e-4 * max(float(ref.abs().max()), 1e-3)


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


def _grads(model, x, policy, strategy, w):
    model.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_(True)
    out = dynamic_forward(model, xg, policy, strategy)
    (out * w).sum().backward()
    grads = {"x": xg.grad.clone()}
    for pname, p in model.named_parameters():
        grads[pname] = torch.zeros_like(p) if p.grad is None else p.grad.clone()
    return grads


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


# ---------------------------------------------------------------------------------------- memory


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
    from blockdrop.memory import peak_memory

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
            peak = peak_memory(lambda: dynamic_forward(model, x, policy, strategy), device)
            assert peak <= 1.10 * full, f"{strategy}: peak {peak / 2**20:.1f} MiB vs full {full / 2**20:.1f} MiB"


@pytest.mark.parametrize("variant", ["channels_last", "bfloat16", "autocast"])
def test_inference_peak_memory_formats_and_dtypes(variant: str) -> None:
    """The memory bound also holds for channels_last (resnet50), bf16 weights and bf16 autocast
    (cifar20: bf16 convolutions are slow on CPU), with gather's worst case keep 0.9, and
    prototypes for group."""
    from blockdrop.memory import peak_memory

    name, n = ("resnet50", 8) if variant == "channels_last" else ("cifar20", 8)
    model = copy.deepcopy(_model(name))
    x = _inputs(name, n)
    if variant == "channels_last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
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
                peak = peak_memory(lambda: dynamic_forward(model, x, policy, strategy), "cpu")
                assert peak <= 1.10 * full, f"{variant} {strategy}: {peak / 2**20:.1f} vs {full / 2**20:.1f} MiB"


def test_peak_memory_counts_live_bytes() -> None:
    from blockdrop.memory import peak_memory

    def fn():
        a = torch.empty(1000, 250)  # 1 MB
        b = torch.empty(500, 250)  # 0.5 MB
        del a
        c = torch.empty(2000, 250)  # 2 MB, with b alive: peak 2.5 MB
        return b, c

    assert peak_memory(fn, "cpu") == 2_500_000
    with pytest.raises(ValueError, match="device"):
        peak_memory(fn, "meta")


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


def _expect(match: str, fn) -> None:
    with pytest.raises(ValueError, match=match):
        fn()


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
        a = dynamic_forward(wrapped.resnet, x, policy, "gather")
        b = dynamic_forward(wrapped, x, policy, "gather")
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------- data


_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _load_test1000(archive: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    from PIL import Image

    imgs, labels = [], []
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            if not member.isfile():
                continue
            cls = member.name.split("/")[-2]
            data = tf.extractfile(member).read()
            imgs.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            labels.append(_CLASSES.index(cls))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.tensor(labels)


def test_pretrained_resnet32_accuracy_all_strategies(shared_data: Path) -> None:
    root = shared_data
    weights = sorted((root / "weights").glob("resnet32-*.th"))
    archive = root / "cifar10" / "cifar10-test1000-lossless.tar.gz"
    if not weights or not archive.is_file():
        pytest.skip(f"pretrained ResNet-32 or lossless CIFAR-10 subset not found under {root} "
                    "(set BLOCKDROP_DATA to the shared data folder)")
    model = models.load_cifar_resnet(weights[0])
    assert model.depth == 32 and model.num_blocks == 15
    x, y = _load_test1000(archive)
    assert x.shape == (1000, 3, 32, 32)
    policy = torch.ones(1000, model.num_blocks, dtype=torch.bool)
    with torch.no_grad():
        for strategy in ALL:
            acc = float((dynamic_forward(model, x, policy, strategy).argmax(1) == y).float().mean())
            assert acc >= 0.92, f"{strategy}: accuracy {acc:.3f}"


# ---------------------------------------------------------------------------------------------- GPU


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
            assert (got[key] - g).abs().max() <= 2e-4 * max(float(g.abs().max()), 1e-6) + 1e-6, (strategy, key)
    bad = policy.float()
    bad[0, 0] = float("nan")
    for strategy in ALL:
        _expect("policy", lambda: dynamic_forward(model, x, bad, strategy))
    _expect("policy", lambda: dynamic_forward(model, x, policy.cpu(), "gather"))


@pytest.mark.gpu
def test_cuda_gather_syncs_once() -> None:
    """At most one device->host synchronisation per forward (the plan's) for gather."""
    model = copy.deepcopy(_model("cifar20")).cuda()
    x = _inputs("cifar20", 32).cuda()
    policy = _policy("random", 32, model.num_blocks).cuda()
    with torch.no_grad():
        dynamic_forward(model, x, policy, "gather")  # warm-up
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                dynamic_forward(model, x, policy, "gather")
            finally:
                torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]  # not the "prototype" notice
    assert len(syncs) <= 1, [str(w.message) for w in syncs]


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
