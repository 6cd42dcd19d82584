"""blockdrop.training.drop_costs and PolicyNet.set_prior against plain-PyTorch references: each block's
drop cost from the engine-independent per-image oracle in float64."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from blockdrop.training.drop_costs import keep_prior, single_drop_costs
from blockdrop.models.policy import CifarPolicyNet, ImageNetPolicyNet

from _helpers import cifar, oracle, tv


def _reference_costs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mean_n KL(softmax(full) || softmax(block k dropped)), every block, float64 oracle."""
    m = copy.deepcopy(model).double().eval()
    x = x.double()
    n, k = x.shape[0], m.num_blocks
    logp = F.log_softmax(oracle(m, x, torch.ones(n, k)), 1)
    out = []
    for j in range(k):
        pol = torch.ones(n, k)
        pol[:, j] = 0
        logq = F.log_softmax(oracle(m, x, pol), 1)
        out.append((logp.exp() * (logp - logq)).sum(1).mean())
    return torch.stack(out)


@pytest.mark.parametrize("name,shape", [("cifar20", (3, 32, 32)), ("resnet18", (3, 64, 64))])
def test_single_drop_costs_match_the_oracle(name: str, shape: tuple[int, ...]) -> None:
    model = cifar(20) if name == "cifar20" else tv("resnet18")
    g = torch.Generator().manual_seed(11)
    x = torch.randn(7, *shape, generator=g) * 2.0
    ref = _reference_costs(model, x)
    assert bool((ref > 1e-6).all()), "every block must move the prediction for the test to bite"
    got = single_drop_costs(copy.deepcopy(model).double(), [x[:3].double(), (x[3:].double(), None)])
    assert got.dtype == torch.float64 and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-10)
    # float32, the images capped: the same costs over the first 5 images, to float32 accuracy
    got5 = single_drop_costs(model, [x[:4], x[4:]], max_images=5)
    torch.testing.assert_close(got5, _reference_costs(model, x[:5]), rtol=2e-3, atol=1e-6)


def test_single_drop_costs_leaves_the_mode_and_rejects_no_images() -> None:
    model = cifar(20).train()
    single_drop_costs(model, [torch.randn(2, 3, 32, 32)])
    assert model.training
    with pytest.raises(ValueError, match="batches"):
        single_drop_costs(model.eval(), [])


def test_keep_prior_is_linear_in_the_rank() -> None:
    costs = torch.tensor([0.3, 0.1, 0.2, 0.1, 0.5])
    # ranks: 0.1 (block 1) -> 0, 0.1 (block 3) -> 1, 0.2 -> 2, 0.3 -> 3, 0.5 -> 4
    want = torch.tensor([0.2 + 0.6 * 3 / 4, 0.2, 0.2 + 0.6 * 2 / 4, 0.2 + 0.6 / 4, 0.8])
    torch.testing.assert_close(keep_prior(costs, 0.2, 0.8), want)
    torch.testing.assert_close(keep_prior(torch.tensor([1.0]), 0.3, 0.9), torch.tensor([0.3]))
    torch.testing.assert_close(keep_prior(costs, 0.0, 1.0), torch.tensor([0.75, 0.0, 0.5, 0.25, 1.0]))
    for lo, hi in ((-0.1, 0.5), (0.6, 0.5), (0.5, 1.1)):
        with pytest.raises(ValueError, match="lo, hi"):
            keep_prior(costs, lo, hi)
    with pytest.raises(ValueError, match="costs"):
        keep_prior(torch.zeros(2, 2))


@pytest.mark.parametrize("net", [CifarPolicyNet(9, width=8), ImageNetPolicyNet(5)])
def test_set_prior_makes_the_policy_static(net: torch.nn.Module) -> None:
    keep = torch.rand(net.num_blocks, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    net.set_prior(keep).eval()
    size = 32 if isinstance(net, CifarPolicyNet) else 112
    x = torch.randn(4, 3, size, size)
    torch.testing.assert_close(net(x), keep.expand(4, -1), rtol=1e-6, atol=1e-6)
    # the head still learns: a gradient reaches its weights
    net(x).sum().backward()
    assert net.fc.weight.grad is not None and bool(net.fc.weight.grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="keep"):
        net.set_prior(torch.full((net.num_blocks,), 1.0))
    with pytest.raises(ValueError, match="keep"):
        net.set_prior(torch.full((net.num_blocks + 1,), 0.5))
