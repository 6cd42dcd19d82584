"""torch.compile over dynamic_forward and BlockDropNet: batches with new policies do not recompile,
results match eager; torch.export captures the masked path."""

from __future__ import annotations

import pytest
import torch

from blockdrop import BlockDropNet, dynamic_forward
from blockdrop.models import cifar_resnet
from blockdrop.models.policy import CifarPolicyNet


class CountingBackend:
    """A torch.compile backend that counts the graphs it is handed (then runs them eagerly)."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("strategy", ["auto", "gather", "group"])
def test_compiled_dynamic_forward_does_not_recompile_per_policy(strategy: str) -> None:
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    backend = CountingBackend()
    f = torch.compile(lambda x, p: dynamic_forward(model, x, p, strategy=strategy), backend=backend)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in range(12):
            x = torch.randn(16, 3, 32, 32, generator=g)
            p = (torch.rand(16, model.num_blocks, generator=g) < 0.5).float()
            got = f(x, p)
            torch.testing.assert_close(
                got, dynamic_forward(model, x, p, strategy="masked"), rtol=1e-4, atol=1e-5
            )
            if i == 1:
                after_two = backend.graphs
    assert backend.graphs == after_two <= 3  # nothing new after the second batch


def test_compiled_blockdrop_net_does_not_recompile_per_policy() -> None:
    torch.manual_seed(0)
    bb = cifar_resnet(20).eval()
    net = BlockDropNet(CifarPolicyNet(bb.num_blocks, width=8), bb, strategy="auto").eval()
    backend = CountingBackend()
    compiled = torch.compile(net, backend=backend)
    g = torch.Generator().manual_seed(2)
    seen = set()
    with torch.no_grad():
        for i in range(10):
            x = torch.randn(8, 3, 32, 32, generator=g)
            logits, policy = compiled(x)
            ref_logits, ref_policy = net(x)
            assert torch.equal(policy, ref_policy)
            torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-5)
            seen.add(tuple(policy.flatten().tolist()))
            if i == 1:
                after_two = backend.graphs
    assert len(seen) > 2 and backend.graphs == after_two


def test_export_captures_the_masked_path() -> None:
    torch.manual_seed(0)
    model = cifar_resnet(8).eval()

    class Masked(torch.nn.Module):
        def forward(self, x, policy):
            return dynamic_forward(model, x, policy, strategy="masked")

    x = torch.randn(4, 3, 16, 16)
    policy = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    ep = torch.export.export(Masked(), (x, policy))
    other = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    for p in (policy, other):
        torch.testing.assert_close(ep.module()(x, p), dynamic_forward(model, x, p, strategy="masked"))
