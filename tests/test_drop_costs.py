"""blockdrop.training.drop_costs and PolicyNet.set_prior against plain-PyTorch references: each block's
drop cost from the engine-independent per-image oracle in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from _helpers import cifar, oracle, tv
from blockdrop.models.policy import CifarPolicyNet, ImageNetPolicyNet
from blockdrop.training.drop_costs import keep_prior, single_drop_costs


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


def test_greedy_drop_order_matches_a_brute_force_search() -> None:
    """StaticK's choice on a tiny network against a brute-force greedy search written here: at
    each step every remaining block is dropped in turn from the network without the blocks
    chosen so far (a plain forward over the model's own modules), the prediction compared with
    the full network's by KL in float64, and the cheapest block taken."""
    from blockdrop.models import cifar_resnet
    from blockdrop.training.drop_costs import drop_costs, greedy_drop_order

    torch.manual_seed(3)
    net = cifar_resnet(20, num_classes=5).eval()
    for m in net.modules():  # random BN statistics: blocks that matter unequally
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.2, 1.5)
    xs = [torch.randn(6, 3, 16, 16) for _ in range(3)]
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3) for b in layer]

    def logits(x: torch.Tensor, drop: set[int]) -> torch.Tensor:
        h = torch.relu(net.bn1(net.conv1(x)))
        for i, b in enumerate(blocks):
            h = b.shortcut(h) if i in drop else b(h)
        return net.linear(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))

    def cost(drop: set[int]) -> float:
        tot, n = 0.0, 0
        with torch.no_grad():
            for x in xs:
                p = torch.log_softmax(logits(x, set()).double(), 1)
                q = torch.log_softmax(logits(x, drop).double(), 1)
                tot += float((p.exp() * (p - q)).sum())
                n += x.shape[0]
        return tot / n

    want: list[int] = []
    for _ in range(5):
        cands = {k: cost(set(want) | {k}) for k in range(len(blocks)) if k not in want}
        want.append(min(cands, key=lambda k: (cands[k], k)))
    assert greedy_drop_order(net, xs, 5) == want
    assert len(set(want)) == 5 and want != sorted(want)  # not simply the first or last blocks
    c = drop_costs(net, xs, want[:2])
    assert torch.isinf(c[want[:2]]).all()
    ref = cost(set(want[:2]) | {want[2]})
    assert float(c[want[2]]) == pytest.approx(ref, rel=1e-4, abs=1e-7)
    with pytest.raises(ValueError, match="drops"):
        greedy_drop_order(net, xs, 10)
    with pytest.raises(ValueError, match="dropped"):
        drop_costs(net, xs, [9])
