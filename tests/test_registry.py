"""The model registry: every registered name builds a backbone that runs, skips blocks like the
masked reference and round-trips through its spec; the name grammar; the spec kinds.

timm is represented by a few names (it has ~80 ResNets; they share one wrapper, tested against
an oracle in test_timm.py). Every net runs at 32x32 (the ImageNet ones end at 1x1), batch 2,
3 classes, in float64.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import blockdrop
from _helpers import subprocess_env, write_cifar_weights
from blockdrop import dynamic_forward
from blockdrop.interop.official_models import (
    OfficialCifarResNet,
    OfficialImageNetResNet,
    OfficialPolicy32,
    OfficialPolicy224,
)
from blockdrop.models import (
    CifarResNet,
    TimmResNet,
    TorchvisionResNet,
    backbone_spec,
    build_backbone,
    build_policy,
    get_model,
    list_models,
    load_cifar_resnet,
    register_model,
    resolve_model,
)
from blockdrop.models.cifar import CIFAR_DEPTHS
from blockdrop.models.policy import CifarPolicyNet, ImageNetPolicyNet
from blockdrop.models.registry import backbone_kinds, policy_kinds
from blockdrop.models.torchvision import TORCHVISION_RESNETS
from blockdrop.training.baselines import BaselinePolicy

try:
    import timm
except ImportError:  # pragma: no cover - timm is optional
    timm = None
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (optional)")

TIMM_NAMES = ["timm/resnet10t", "timm/resnet18", "timm/resnet50d", "timm/seresnext26d_32x4d"]
PKG = Path(blockdrop.__file__).parent


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    """Running statistics away from (0, 1), so that a wrongly skipped BN changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _expected_family(name: str) -> type:
    if name.startswith("cifar_"):
        return CifarResNet
    return TimmResNet if name.startswith("timm/") else TorchvisionResNet


@pytest.mark.parametrize("name", list_models() + [pytest.param(n, marks=needs_timm) for n in TIMM_NAMES])
def test_every_name_builds_runs_skips_and_round_trips(name: str) -> None:
    torch.manual_seed(0)
    model = get_model(name, num_classes=3).double().eval()
    assert isinstance(model, _expected_family(name)) and model.num_classes == 3
    _randomize_bn(model, 0)
    size = 32
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
    policy = (torch.rand(2, model.num_blocks, generator=g) < 0.5).float()
    policy[0, 0], policy[1, 0] = 1.0, 0.0  # both kinds of decision on the first block
    with torch.no_grad():
        full = model(x)
        got = dynamic_forward(model, x, policy)
        ref = dynamic_forward(model, x, policy, strategy="masked")
    assert full.shape == (2, 3) and torch.isfinite(full).all()
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    spec = json.loads(json.dumps(backbone_spec(model)))  # what a checkpoint stores
    rebuilt = build_backbone(spec)
    assert type(rebuilt) is type(model) and backbone_spec(rebuilt) == spec
    assert _shapes(rebuilt) == _shapes(model)


def test_registered_names_are_the_documented_sets() -> None:
    assert list_models(family="cifar") == [f"cifar_resnet{d}" for d in CIFAR_DEPTHS]
    assert set(list_models(family="torchvision")) == set(TORCHVISION_RESNETS)
    assert set(list_models()) == set(list_models(family="cifar")) | set(TORCHVISION_RESNETS)
    assert list_models("resnet1*") == ["resnet18", "resnet101", "resnet152"]  # natural order
    for d in CIFAR_DEPTHS:
        assert get_model(f"cifar_resnet{d}").depth == d


def test_torchvision_names_build_torchvisions_own_architecture() -> None:
    import torchvision.models as tvm

    for name in TORCHVISION_RESNETS:
        with torch.device("meta"):
            ours = get_model(name, num_classes=5)
            theirs = getattr(tvm, name)(num_classes=5)
        assert ours.arch == name and _shapes(ours.resnet) == _shapes(theirs), name


@pytest.mark.parametrize(
    "old,new",
    [
        ("resnet8", "cifar_resnet8"),
        ("resnet20", "cifar_resnet20"),
        ("resnet32", "cifar_resnet32"),
        ("resnet56", "cifar_resnet56"),
        ("resnet110", "cifar_resnet110"),
        ("RESNET56", "cifar_resnet56"),
        ("cifar-resnet32", "cifar_resnet32"),
        ("cifar-resnet50", "cifar_resnet50"),
        ("tv-resnet50", "resnet50"),
        ("tv-wide_resnet50_2", "wide_resnet50_2"),
        ("resnet50", "resnet50"),
        ("resnet101", "resnet101"),
        ("resnet152", "resnet152"),
        ("cifar_resnet26", "cifar_resnet26"),
        ("cifar_resnet98", "cifar_resnet98"),
        pytest.param("timm-resnet50d", "timm/resnet50d", marks=needs_timm),
        pytest.param("resnet50d", "timm/resnet50d", marks=needs_timm),
    ],
)
def test_names_resolve(old: str, new: str) -> None:
    ref = resolve_model(old)
    family = "cifar" if new.startswith("cifar_") else "timm" if new.startswith("timm/") else "torchvision"
    assert (ref.name, ref.family) == (new, family)


def test_depths_are_cifar_only_with_the_prefix_and_resnet50_is_torchvision() -> None:
    assert isinstance(get_model("resnet50"), TorchvisionResNet)  # not CIFAR depth 50
    assert isinstance(get_model("resnet152"), TorchvisionResNet)  # not CIFAR depth 152
    assert get_model("cifar_resnet50", num_classes=4).depth == 50
    assert get_model("cifar_resnet26").num_blocks == 12


@needs_timm
@pytest.mark.parametrize(
    "name,choices",
    [("resnet26", ("cifar_resnet26", "timm/resnet26")), ("resnet200", ("cifar_resnet200", "timm/resnet200"))],
)
def test_a_name_of_two_families_is_an_error_listing_both(name: str, choices: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as e:
        resolve_model(name)
    msg = str(e.value)
    assert msg.startswith(f"arch: {name!r} is ambiguous") and "\n" not in msg
    assert all(c in msg for c in choices)


@needs_timm
def test_old_cifar_names_are_no_timm_names() -> None:
    """The bare CIFAR names the docs and tests use mean one network, not two."""
    for d in CIFAR_DEPTHS:
        assert not timm.is_model(f"resnet{d}"), d


@pytest.mark.parametrize(
    "name,close",
    [
        ("resnt56", "cifar_resnet56"),
        ("cifar_resnet57", "cifar_resnet56"),
        ("resnet999", None),
        ("tv-resnet56", None),
        ("cifar_resnet056", None),
        ("cifar-resnet7", None),
        pytest.param("timm/resnet5o", "timm/resnet50", marks=needs_timm),
        pytest.param("timm-nothing", None, marks=needs_timm),
    ],
)
def test_unknown_names_are_one_line_errors_naming_arch(name: str, close: str | None) -> None:
    with pytest.raises(ValueError) as e:
        get_model(name)
    msg = str(e.value)
    assert msg.startswith(f"arch: unknown model {name!r}") and "\n" not in msg
    if close:
        assert f"close matches: {close}" in msg


@pytest.mark.parametrize("bad", ["", "  ", None, 56])
def test_a_name_that_is_not_a_string_is_an_error(bad: object) -> None:
    with pytest.raises(ValueError, match="^arch: expected a model name"):
        resolve_model(bad)  # type: ignore[arg-type]  # not a str, on purpose


@needs_timm
def test_a_timm_model_that_is_not_a_resnet_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="^arch: timm/resnetv2_50 cannot be a BlockDrop backbone"):
        get_model("timm/resnetv2_50", num_classes=3)


def test_register_model_refuses_duplicates_and_bad_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda num_classes=10: None, name="resnet50")
    with pytest.raises(ValueError, match="lower-case"):
        register_model(lambda num_classes=10: None, name="ResNet7")
    with pytest.raises(ValueError, match="num_classes"):
        get_model("cifar_resnet8", num_classes=0)


def test_a_user_registered_name_builds() -> None:
    from blockdrop.models import registry

    @register_model
    def test_only_resnet14(num_classes: int = 10) -> CifarResNet:
        return CifarResNet(14, num_classes)

    try:
        assert get_model("test_only_resnet14", num_classes=2).depth == 14
        assert "test_only_resnet14" in list_models(family="custom")
    finally:
        del registry._MODELS["test_only_resnet14"]


# --------------------------------------------------------------------------- spec kinds

BACKBONES = {
    "cifar": lambda: get_model("cifar_resnet8", num_classes=3),
    "torchvision": lambda: get_model("resnet18", num_classes=3),
    "timm": lambda: get_model("timm/resnet18", num_classes=3),
    "official_cifar": lambda: OfficialCifarResNet([1, 1, 1], 3),
    "official_imagenet": lambda: OfficialImageNetResNet([1, 1, 1, 1], 3),
}
POLICIES = {
    "cifar": lambda: CifarPolicyNet(5, width=6, pool=2),
    "imagenet": lambda: ImageNetPolicyNet(5, 56),
    "official32": lambda: OfficialPolicy32(5),
    "official224": lambda: OfficialPolicy224(5),
    "full": lambda: BaselinePolicy("full", 5),
    "first_k": lambda: BaselinePolicy("first_k", 5, 2.5),
    "random_k": lambda: BaselinePolicy("random_k", 5, 2.5, seed=3),
    "static_k": lambda: BaselinePolicy("static_k", 5, dropped=[1, 3]),
}


def test_every_kind_has_a_case_here() -> None:
    assert set(backbone_kinds()) == set(BACKBONES) and set(policy_kinds()) == set(POLICIES)


@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_backbone_kinds_round_trip(kind: str) -> None:
    if kind == "timm" and timm is None:
        pytest.skip("timm is not installed (optional)")
    model = BACKBONES[kind]()
    spec = json.loads(json.dumps(backbone_spec(model)))
    assert spec["kind"] == kind
    rebuilt = build_backbone(spec)
    assert type(rebuilt) is type(model) and backbone_spec(rebuilt) == spec
    assert _shapes(rebuilt) == _shapes(model)


@pytest.mark.parametrize("kind", sorted(POLICIES))
def test_policy_kinds_round_trip(kind: str) -> None:
    module = POLICIES[kind]()
    spec = json.loads(json.dumps(module.spec()))
    assert spec["kind"] == kind
    rebuilt = build_policy(spec)
    assert type(rebuilt) is type(module) and rebuilt.spec() == spec
    assert _shapes(rebuilt) == _shapes(module)
    size = 224 if kind == "official224" else 32  # its pools fix the input size
    assert rebuilt.eval()(torch.randn(2, 3, size, size)).shape == (2, 5)


def test_specs_of_earlier_checkpoints_still_build() -> None:
    """The JSON that checkpoints written before the registry hold (same format)."""
    cifar = build_backbone({"depth": 56, "kind": "cifar", "num_classes": 10})
    assert isinstance(cifar, CifarResNet) and cifar.depth == 56 and cifar.num_blocks == 27
    tv = build_backbone({"kind": "torchvision", "arch": "resnet50", "num_classes": 10})
    assert isinstance(tv, TorchvisionResNet) and tv.arch == "resnet50" and tv.num_blocks == 16
    off = build_backbone({"kind": "official_cifar", "layers": [5, 5, 5], "num_classes": 10})
    assert isinstance(off, OfficialCifarResNet) and off.num_blocks == 15
    full = build_policy({"k": 27.0, "kind": "full", "num_blocks": 27, "seed": 0})
    assert isinstance(full, BaselinePolicy) and full.kind == "full" and full.num_blocks == 27
    pnet = build_policy({"kind": "cifar", "num_blocks": 27, "width": 16})
    assert isinstance(pnet, CifarPolicyNet) and pnet.num_blocks == 27
    assert isinstance(build_policy({"kind": "official32", "num_blocks": 15}), OfficialPolicy32)
    if timm is not None:
        t = build_backbone({"kind": "timm", "arch": "resnet50d", "num_classes": 10})
        assert isinstance(t, TimmResNet) and backbone_spec(t)["arch"] == "resnet50d"


def test_a_kind_not_registered_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^spec: kind 'resnet' is not registered \(registered: c"):
        build_backbone({"kind": "resnet", "depth": 56})
    with pytest.raises(ValueError, match=r"^spec: kind 'greedy' is not registered \(registered: "):
        build_policy({"kind": "greedy", "num_blocks": 3})
    with pytest.raises(ValueError, match="^spec: expected a dict with a 'kind'"):
        build_backbone({"depth": 56})
    with pytest.raises(ValueError, match="^model: no backbone kind is registered for Linear"):
        backbone_spec(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="^spec: 'resnet56' is not a torchvision ResNet"):
        build_backbone({"kind": "torchvision", "arch": "resnet56", "num_classes": 10})


def test_a_user_wrapped_torchvision_resnet_has_a_spec() -> None:
    import torchvision

    from blockdrop.models import from_torchvision

    bb = from_torchvision(torchvision.models.resnet34(num_classes=7))
    assert backbone_spec(bb) == {"kind": "torchvision", "arch": "resnet34", "num_classes": 7}
    odd = torchvision.models.resnet18()
    odd.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # one input channel
    with pytest.raises(ValueError, match="^resnet: its tensors match none"):
        backbone_spec(from_torchvision(odd))


# --------------------------------------------------------------------------- load_backbone


def test_load_backbone_resolves_arch_through_the_registry(tmp_path: Path) -> None:
    from blockdrop.checkpoint import load_backbone
    from blockdrop.errors import IncompatibleError

    weights = write_cifar_weights(tmp_path / "r8.th", depth=8, num_classes=3)
    torch.manual_seed(0)
    load_cifar_resnet(weights)
    expected = torch.rand(3)
    torch.manual_seed(0)
    model, spec = load_backbone(weights, "resnet8", 10)  # the file's class count wins
    assert torch.equal(torch.rand(3), expected)  # no draw beyond the loader's own
    assert isinstance(model, CifarResNet)
    assert spec == {"kind": "cifar", "depth": 8, "num_classes": 3}
    with pytest.raises(IncompatibleError, match="depth: expected 14"):
        load_backbone(weights, "cifar_resnet14", 3)
    r18 = get_model("resnet18", num_classes=4)
    torch.save(r18.resnet.state_dict(), tmp_path / "r18.pt")
    model, spec = load_backbone(tmp_path / "r18.pt", "tv-resnet18", 4)
    assert spec == {"kind": "torchvision", "arch": "resnet18", "num_classes": 4}
    torch.testing.assert_close(model.resnet.fc.weight, r18.resnet.fc.weight)
    assert load_backbone(None, "resnet34", 5)[1] == {
        "kind": "torchvision",
        "arch": "resnet34",
        "num_classes": 5,
    }
    with pytest.raises(ValueError, match="^arch: unknown model 'resnet9'"):
        load_backbone(weights, "resnet9", 3)


# --------------------------------------------------------------------------- imports


def test_importing_the_package_registers_every_kind() -> None:
    code = (
        "import blockdrop.models.registry as r; print(sorted(r.backbone_kinds())); "
        "print(sorted(r.policy_kinds()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=subprocess_env()
    )
    assert out.stdout.split("\n")[:2] == [str(sorted(BACKBONES)), str(sorted(POLICIES))]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(absolute module, imported names)`` of every import statement in ``path``."""
    pkg = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg.split(".")
            base = base[: len(base) - node.level] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            out.append((mod, [a.name for a in node.names]))
    return out


def test_models_import_nothing_above_them() -> None:
    for path in sorted((PKG / "models").glob("*.py")):
        for mod, _ in _imports(path):
            if mod.startswith("blockdrop.") or mod == "blockdrop":
                assert mod.startswith(("blockdrop.models", "blockdrop.errors")), (path.name, mod)


def test_no_module_imports_another_modules_private_names() -> None:
    for path in sorted(PKG.rglob("*.py")):
        for mod, names in _imports(path):
            if not mod.startswith("blockdrop"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{path.relative_to(PKG)} imports {private} from {mod}"
