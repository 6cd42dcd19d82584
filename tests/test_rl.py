"""The RL pieces (reward, bounded Bernoulli, curriculum mask, REINFORCE) and BlockDropNet."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli

from blockdrop.training import rl


def test_reward_correct_and_wrong() -> None:
    policy = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.uint8)
    correct = torch.tensor([True, True, True, False])
    r = rl.reward(correct, policy, gamma=5.0)
    assert r.dtype == torch.float32
    torch.testing.assert_close(r, torch.tensor([0.0, 1 - (1 / 4) ** 2, 1.0, -5.0]))


def test_reward_gamma_zero_and_float_policy() -> None:
    r = rl.reward(torch.tensor([False, True]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), gamma=0.0)
    torch.testing.assert_close(r, torch.tensor([0.0, 0.75]))


def test_bound_probs_range_and_values() -> None:
    p = torch.tensor([0.0, 0.5, 1.0, 0.25])
    b = rl.bound_probs(p, alpha=0.8)
    torch.testing.assert_close(b, torch.tensor([0.2, 0.5, 0.8, 0.8 * 0.25 + 0.2 * 0.75]))
    assert float(rl.bound_probs(torch.rand(1000), 0.8).min()) >= 0.2 - 1e-6
    assert float(rl.bound_probs(torch.rand(1000), 0.8).max()) <= 0.8 + 1e-6


def test_log_prob_under_bounded_distribution_matches_torch() -> None:
    torch.manual_seed(0)
    probs = torch.rand(6, 5, requires_grad=True)
    pb = rl.bound_probs(probs, 0.8)
    a = rl.sample_policy(pb)
    lp = rl.log_prob(pb, a)
    ref = Bernoulli(probs=rl.bound_probs(probs, 0.8)).log_prob(a).sum(1)
    torch.testing.assert_close(lp, ref)
    # gradients flow back to the unbounded probabilities, scaled by (2*alpha - 1)
    lp.sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0
    # log-probs are never -inf even for p = 0 or 1 thanks to the bound
    edge = rl.log_prob(rl.bound_probs(torch.tensor([[0.0, 1.0]]), 0.8), torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(edge, torch.log(torch.tensor([0.2 * 0.2])))


def test_entropy_is_the_official_keep_term_over_all_blocks() -> None:
    # official cl_training.py: entropy_loss = -probs * log(probs), summed over every block
    p = torch.tensor([[0.2, 0.5, 0.8], [1 / math.e, 0.99, 0.01]], dtype=torch.float64)
    expected = [
        -(0.2 * math.log(0.2) + 0.5 * math.log(0.5) + 0.8 * math.log(0.8)),
        -(1 / math.e * -1.0 + 0.99 * math.log(0.99) + 0.01 * math.log(0.01)),
    ]
    torch.testing.assert_close(rl.entropy(p), torch.tensor(expected, dtype=torch.float32))
    # not the Bernoulli entropy (which would add the -(1-p) log(1-p) half)
    assert not torch.allclose(rl.entropy(p), Bernoulli(probs=p).entropy().sum(1).float())
    # its gradient vanishes at p = 1/e and pushes p towards 1/e from both sides
    q = torch.tensor([[0.1, 1 / math.e, 0.9]], requires_grad=True)
    rl.entropy(q).sum().backward()
    g = q.grad[0]
    assert g[0] > 0 and abs(float(g[1])) < 1e-5 and g[2] < 0


def test_sample_policy_uses_generator_and_is_binary() -> None:
    p = torch.full((64, 7), 0.3)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = rl.sample_policy(p, g1), rl.sample_policy(p, g2)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert 0.15 < float(a.mean()) < 0.45


def test_threshold_policy_keeps_at_half() -> None:
    p = torch.tensor([[0.49, 0.5, 0.51]])
    assert rl.threshold_policy(p).tolist() == [[0.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    "k,stage,step,learned", [(5, 0, 1, 1), (5, 1, 1, 2), (5, 1, 2, 4), (5, 9, 1, 5), (15, 0, 3, 3)]
)
def test_curriculum_mask_learns_last_blocks_first(k: int, stage: int, step: int, learned: int) -> None:
    m = rl.curriculum_mask(k, stage, step)
    assert m.dtype == torch.bool and m.shape == (k,)
    assert int(m.sum()) == learned == rl.num_learned_blocks(k, stage, step)
    assert m[k - learned :].all() and not m[: k - learned].any()


def test_curriculum_step_must_be_positive() -> None:
    with pytest.raises(ValueError):
        rl.curriculum_mask(5, 0, 0)


def test_apply_curriculum_forces_blocks_on_and_masks_their_log_probs() -> None:
    torch.manual_seed(1)
    probs = torch.rand(8, 5, requires_grad=True)
    pb = rl.bound_probs(probs)
    mask = rl.curriculum_mask(5, 1)  # learn the last 2
    a = rl.apply_curriculum(rl.sample_policy(pb), mask)
    assert a[:, :3].eq(1).all()
    lp = rl.log_prob(pb, a, mask)
    lp.sum().backward()
    assert probs.grad[:, :3].abs().max() == 0  # forced blocks: no log-prob gradient
    assert probs.grad[:, 3:].abs().max() > 0


def test_policy_gradient_step_moves_towards_positive_advantage() -> None:
    logits = torch.zeros(1, 3, requires_grad=True)
    action = torch.tensor([[1.0, 0.0, 1.0]])
    opt = torch.optim.SGD([logits], lr=0.5)
    for _ in range(5):
        probs = torch.sigmoid(logits)
        loss = rl.policy_gradient_loss(rl.log_prob(rl.bound_probs(probs), action), torch.tensor([1.0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = torch.sigmoid(logits)[0]
    assert p[0] > 0.6 and p[1] < 0.4 and p[2] > 0.6
    # the entropy bonus lowers the loss for uncertain policies
    z = torch.full((1, 3), 0.5)
    assert rl.policy_gradient_loss(torch.zeros(1), torch.zeros(1), rl.entropy(z), 0.1) < 0


# --------------------------------------------------------------------------- policy nets / BlockDropNet


def test_policy_nets_shapes_and_specs() -> None:
    from blockdrop.models.policy import (
        CifarPolicyNet,
        ImageNetPolicyNet,
        make_policy_net,
        policy_net_from_spec,
    )

    p = CifarPolicyNet(15).eval()
    out = p(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 15) and out.dtype == torch.float32
    assert ((out > 0) & (out < 1)).all()
    q = ImageNetPolicyNet(33).eval()
    assert q(torch.randn(1, 3, 224, 224)).shape == (1, 33)
    assert q(torch.randn(1, 3, 160, 160)).shape == (1, 33)  # adaptive pooling path
    assert isinstance(make_policy_net(9, 32), CifarPolicyNet)
    assert isinstance(make_policy_net(9, 224), ImageNetPolicyNet)
    r = policy_net_from_spec(p.spec())
    r.load_state_dict(p.state_dict())
    assert torch.equal(r.eval()(torch.ones(1, 3, 32, 32)), p(torch.ones(1, 3, 32, 32)))


def test_blockdrop_net_threshold_in_eval_sample_in_train() -> None:
    from blockdrop import BlockDropNet, dynamic_forward
    from blockdrop.models import cifar_resnet
    from blockdrop.models.policy import CifarPolicyNet

    torch.manual_seed(0)
    backbone = cifar_resnet(14).eval()
    net = BlockDropNet(CifarPolicyNet(backbone.num_blocks), backbone, strategy="gather")
    x = torch.randn(4, 3, 16, 16)
    net.eval()
    logits, policy = net(x)
    probs = net.probs(x)
    assert torch.equal(policy, (probs >= 0.5).float())
    torch.testing.assert_close(logits, dynamic_forward(backbone, x, policy, "masked"), rtol=1e-4, atol=1e-5)
    net.train()
    torch.manual_seed(5)
    _, sampled = net(x)
    assert sampled.shape == (4, 6) and set(sampled.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError):
        BlockDropNet(CifarPolicyNet(5), backbone)
