"""Models: CIFAR ResNets (depth, names, checkpoint loading) and torchvision wrappers (shared
weights, block views that reproduce each block's own forward)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from blockdrop import models


@pytest.mark.parametrize("depth,k", [(20, 9), (32, 15), (56, 27), (110, 54)])
def test_cifar_depths(depth: int, k: int) -> None:
    m = models.cifar_resnet(depth)
    assert m.num_blocks == k == len(m.blocks)
    kinds = [b.shortcut_kind for b in m.blocks]
    assert kinds.count("option_a") == 2 and kinds.count("identity") == k - 2
    assert kinds[k // 3] == "option_a" and kinds[2 * k // 3] == "option_a"
    assert [b.out_channels for b in m.blocks][:: k // 3] == [16, 32, 64]
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth", [0, 19, 21, 7, "20"])
def test_cifar_bad_depth(depth) -> None:
    with pytest.raises(ValueError, match="depth"):
        models.cifar_resnet(depth)


def test_cifar_state_dict_names_match_public_format() -> None:
    keys = set(models.cifar_resnet(20).state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.2.bn2.bias",
        "layer3.0.conv2.weight",
        "linear.weight",
        "linear.bias",
    ):
        assert key in keys
    assert not any("shortcut" in k for k in keys)  # option A has no parameters


def _check_forward_is_blocks(m: models.ResNetBackbone, x: torch.Tensor) -> None:
    with torch.no_grad():
        h = m.stem(x)
        for view in m.blocks:
            manual = torch.relu(view.shortcut(h) + view.residual(h))
            own = view.module(h)
            assert torch.allclose(manual, own, atol=1e-5, rtol=1e-5)
            box = [h.clone()]
            consumed = torch.relu(view.shortcut(h) + view.residual_consume(box))
            assert box == [] and torch.equal(consumed, manual)
            h = own
        assert torch.allclose(m.head(h), m(x), atol=1e-5, rtol=1e-5)


def test_cifar_option_a_and_block_views() -> None:
    torch.manual_seed(0)
    m = models.cifar_resnet(20).eval()
    x = torch.randn(2, 3, 32, 32)
    _check_forward_is_blocks(m, x)
    h = torch.randn(2, 16, 8, 8)
    s = m.blocks[3].shortcut(h)  # first block of stage 2: 16 -> 32, stride 2
    assert s.shape == (2, 32, 4, 4)
    assert torch.equal(s[:, 8:24], h[:, :, ::2, ::2])
    assert s[:, :8].abs().sum() == 0 and s[:, 24:].abs().sum() == 0


def test_load_roundtrip_with_module_prefix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = models.cifar_resnet(20).eval()
    path = tmp_path / "r20.th"
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}, "best_prec1": 1.0}, path)
    loaded = models.load_cifar_resnet(path)
    assert loaded.depth == 20 and not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    with pytest.raises(ValueError, match="depth"):
        models.load_cifar_resnet(path, depth=32)
    bare = tmp_path / "bare.th"
    torch.save(m.state_dict(), bare)
    assert models.load_cifar_resnet(bare, depth=20).depth == 20


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="path"):
        models.load_cifar_resnet(tmp_path / "missing.th")
    junk = tmp_path / "junk.th"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, junk)
    with pytest.raises(ValueError, match="junk.th: expected .*its keys are not conv1"):
        models.load_cifar_resnet(junk)
    sd = models.cifar_resnet(20).state_dict()
    sd["linear.weight"] = torch.zeros(10, 32)
    wrong = tmp_path / "wrong.th"
    torch.save(sd, wrong)
    with pytest.raises(ValueError, match="wrong.th: expected .*do not fit CifarResNet-20"):
        models.load_cifar_resnet(wrong)


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_load_public_checkpoints(depth: int, shared_data: Path) -> None:
    found = sorted((shared_data / "weights").glob(f"resnet{depth}-*.th"))
    if not found:
        pytest.skip(
            f"no public resnet{depth} checkpoint under {shared_data / 'weights'} (set BLOCKDROP_DATA)"
        )
    m = models.load_cifar_resnet(found[0])
    assert m.depth == depth and m.num_blocks == (depth - 2) // 2
    assert m.conv1.weight.abs().sum() > 0


@pytest.mark.parametrize(
    "name,k,proj",
    [
        ("resnet18", 8, 3),
        ("resnet34", 16, 3),
        ("resnet50", 16, 4),
        ("resnet101", 33, 4),
        ("resnet152", 50, 4),
    ],
)
def test_torchvision_block_counts(name: str, k: int, proj: int) -> None:
    with torch.device("meta"):  # no real allocation or init: fast
        tv = getattr(torchvision.models, name)()
    w = models.from_torchvision(tv)
    assert w.num_blocks == k
    assert [b.shortcut_kind for b in w.blocks].count("projection") == proj
    assert w.num_classes == 1000 and w.in_channels == 3


def test_torchvision_shares_weights_and_reproduces_forward() -> None:
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=10).eval()
    w = models.from_torchvision(tv)
    assert w.resnet is tv
    ours = dict(w.named_parameters())
    for name, p in tv.named_parameters():
        assert ours["resnet." + name] is p
    assert all(
        view.module is blk for view, blk in zip(w.blocks, [*tv.layer1, *tv.layer2, *tv.layer3, *tv.layer4])
    )
    x = torch.randn(2, 3, 64, 64)
    _check_forward_is_blocks(w, x)
    with torch.no_grad():
        before = w(x)
        tv.fc.bias.add_(1.0)  # a change to the user's module is seen through the wrapper
        assert torch.allclose(w(x), before + 1.0, atol=1e-5)


def test_torchvision_bottleneck_views() -> None:
    torch.manual_seed(0)
    w = models.from_torchvision(torchvision.models.resnet50(num_classes=10).eval())
    _check_forward_is_blocks(w, torch.randn(1, 3, 64, 64))


def test_from_torchvision_rejects_other_models() -> None:
    with pytest.raises(ValueError, match="resnet"):
        models.from_torchvision(torch.nn.Linear(3, 3))

    class Odd(torch.nn.Module):
        def forward(self, x):
            return x

    tv = torchvision.models.resnet18()
    tv.layer2[1] = Odd()
    with pytest.raises(ValueError, match="layer2.1"):
        models.from_torchvision(tv)


def test_chain_composes_and_rejects_non_callables() -> None:
    chain = models.Chain(torch.relu, lambda t: t * 3, torch.neg)
    x = torch.randn(4, 5, dtype=torch.float64)
    assert torch.equal(chain(x), -(torch.relu(x) * 3))
    box = [x]
    assert torch.equal(chain.consume(box), -(torch.relu(x) * 3)) and box == []
    with pytest.raises(ValueError, match="steps"):
        models.Chain()
    with pytest.raises(ValueError, match="steps"):
        models.Chain(torch.relu, 3)


def test_as_backbone_caches_the_wrapper_without_touching_the_user_module() -> None:
    """A torchvision ResNet is wrapped once (the same wrapper on the next call, sharing its
    weights and later changes to its layers), nothing is set on the user's module, and the cache
    entry dies with the module."""
    import gc
    import weakref

    import torchvision

    from blockdrop.models import as_backbone
    from blockdrop.models.wrap import _WRAPPERS  # the cache itself, observed by its own test

    m = torchvision.models.resnet18(num_classes=3).eval()
    attrs = set(vars(m))
    w = as_backbone(m)
    assert as_backbone(m) is w and as_backbone(torch.nn.DataParallel(m)) is w
    assert set(vars(m)) == attrs
    assert next(w.parameters()).data_ptr() == m.conv1.weight.data_ptr()
    m.fc = torch.nn.Linear(512, 5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(w(x), m(x))
    ref = weakref.ref(m)
    n = len(_WRAPPERS)
    del m, w
    gc.collect()
    assert ref() is None and len(_WRAPPERS) == n - 1
    with pytest.raises(ValueError, match="model: expected"):
        as_backbone(torch.nn.Linear(2, 2))
