"""FLOP accounting: matches FlopCounterMode on the whole network, is linear in the policy, counts
projection shortcuts of dropped blocks, adds the policy network, and leaves the model untouched."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

import blockdrop
from blockdrop import models
from blockdrop.evaluation.accounting import block_flops


def _direct(module: torch.nn.Module, size: tuple[int, int, int]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        module(torch.zeros(1, *size))
    return int(c.get_total_flops())


def test_cifar_resnet110_numbers() -> None:
    m = models.cifar_resnet(110)
    parts = block_flops(m)
    assert parts.full == 505_775_360  # docs: 505.8 MFLOPs/img
    assert parts.full == _direct(m.eval(), (3, 32, 32))
    assert parts.residual[1] == 2 * 9 * 16 * 16 * 32 * 32 * 2  # 9.44 MFLOPs
    assert parts.residual[18] == 2 * 9 * 16 * 32 * 16 * 16 + 2 * 9 * 32 * 32 * 16 * 16  # 7.08M
    assert sum(parts.shortcut) == 0
    k = m.num_blocks
    policy = torch.zeros(4, k)
    policy[1] = 1
    policy[2, :10] = 1
    policy[3, 50] = 1
    f = blockdrop.flops(m, policy)
    assert f.dtype == torch.float64 and f.shape == (4,)
    assert f[0] == parts.stem_head
    assert f[1] == parts.full
    assert f[2] == parts.stem_head + sum(parts.residual[:10])
    assert f[3] == parts.stem_head + parts.residual[50]
    assert blockdrop.ideal_speedup(m, torch.ones(3, k)) == pytest.approx(1.0)
    assert blockdrop.ideal_speedup(m, policy) == pytest.approx(parts.full / float(f.mean()))


def test_torchvision_counts_projection_of_dropped_blocks() -> None:
    tv = torchvision.models.resnet50(num_classes=10)
    parts = block_flops(tv, (3, 64, 64))
    assert parts.full == _direct(tv.eval(), (3, 64, 64))
    w = models.from_torchvision(tv)
    proj = [i for i, b in enumerate(w.blocks) if b.shortcut_kind == "projection"]
    assert len(proj) == 4 and all(parts.shortcut[i] > 0 for i in proj)
    zeros = blockdrop.flops(tv, torch.zeros(1, 16), input_size=(3, 64, 64))
    assert zeros[0] == parts.stem_head + sum(parts.shortcut)


def test_policy_net_and_state_untouched() -> None:
    m = models.cifar_resnet(20).train()
    bn_before = m.bn1.running_mean.clone()
    pnet = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.LazyLinear(9))
    pnet(torch.zeros(1, 3, 32, 32))
    pnet.train()
    policy = torch.ones(2, 9)
    with_net = blockdrop.flops(m, policy, policy_net=pnet)
    without = blockdrop.flops(m, policy)
    assert torch.equal(
        with_net - without, torch.full((2,), float(_direct(pnet, (3, 32, 32))), dtype=torch.float64)
    )
    assert m.training and all(mod.training for mod in m.modules()) and pnet.training
    assert torch.equal(m.bn1.running_mean, bn_before)


def test_bad_policy() -> None:
    m = models.cifar_resnet(20)
    for bad in (torch.ones(2, 8), torch.ones(9), torch.full((2, 9), 0.5), torch.full((2, 9), float("nan"))):
        with pytest.raises(ValueError, match="policy"):
            blockdrop.flops(m, bad)
    with pytest.raises(ValueError, match="policy"):
        blockdrop.ideal_speedup(m, torch.ones(0, 9))
    with pytest.raises(ValueError, match="model"):
        blockdrop.flops(torch.nn.Linear(2, 2), torch.ones(1, 9))
