"""timm ResNets through the engine: every strategy equals a per-image oracle built from timm's own
block modules (executed = the block's forward, dropped = its shortcut), weights shared."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'blockdrop[timm]')")

from blockdrop import dynamic_forward  # noqa: E402
from blockdrop.models import from_timm  # noqa: E402

ARCHS = ["resnet18", "resnet50d", "seresnext26d_32x4d"]


def _oracle(m: torch.nn.Module, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    blocks = [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]
    outs = []
    for i in range(x.shape[0]):
        h = m.maxpool(m.act1(m.bn1(m.conv1(x[i : i + 1]))))
        for j, b in enumerate(blocks):
            if policy[i, j]:
                h = b(h)
            elif b.downsample is not None:
                h = b.downsample(h)
        outs.append(m.fc(m.global_pool(h)))
    return torch.cat(outs)


@pytest.fixture(scope="module", params=ARCHS)
def model(request) -> torch.nn.Module:
    torch.manual_seed(0)
    m = timm.create_model(request.param, pretrained=False, num_classes=7).double().eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("strategy", ["masked", "loop", "gather", "group", "auto"])
def test_timm_resnet_matches_the_oracle(model: torch.nn.Module, strategy: str) -> None:
    bb = from_timm(model)
    k = bb.num_blocks
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 40, 40, generator=g, dtype=torch.float64)
    policy = torch.rand(4, k, generator=g) < 0.6
    policy[0] = True  # one image runs everything
    with torch.no_grad():
        got = dynamic_forward(model, x, policy.float(), strategy=strategy)  # the timm module itself
        ref = _oracle(model, x, policy)
        full = model(x)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[0], full[0], rtol=1e-10, atol=1e-10)


def test_weights_are_shared_and_gradients_flow(model: torch.nn.Module) -> None:
    bb = from_timm(model)
    assert bb.resnet is model and bb.blocks[0].module is model.layer1[0]
    assert sum(p.numel() for p in bb.parameters()) == sum(p.numel() for p in model.parameters())
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    policy = torch.ones(3, bb.num_blocks)
    policy[:, 1] = 0
    dynamic_forward(bb, x, policy, strategy="gather").sum().backward()
    assert model.layer1[0].conv1.weight.grad is not None
    assert model.layer1[1].conv1.weight.grad is None or model.layer1[1].conv1.weight.grad.abs().sum() == 0
    model.zero_grad(set_to_none=True)


def test_non_relu_blocks_are_refused() -> None:
    m = timm.create_model("resnet18", pretrained=False, act_layer=torch.nn.SiLU)
    with pytest.raises(ValueError, match="ReLU"):
        from_timm(m)
