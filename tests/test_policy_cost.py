"""The recipe's policy network costs almost nothing: for every preset of this library's recipe
(and the demo), the policy network its curriculum config builds costs at most 2% of the backbone's
FLOPs, both counted here by torch.utils.flop_counter (an independent counter), and the library's
own accounting (blockdrop.flops, which reports accuracy-vs-FLOPs) agrees with it."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import blockdrop
from blockdrop.models import cifar_resnet
from blockdrop.models.policy import make_policy_net
from blockdrop.recipes.demo import DEMO
from blockdrop.recipes.presets import get_preset


def _count(module: torch.nn.Module, size: int = 32) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module.eval()(torch.zeros(1, 3, size, size))
    return int(counter.get_total_flops())


@pytest.mark.parametrize("name,depth", [("quick", 56), ("cpu", 56), ("gpu", 56), ("demo", 20)])
def test_the_recipes_policy_costs_at_most_two_percent_of_the_backbone(name: str, depth: int) -> None:
    cfg = (DEMO if name == "demo" else get_preset(name)).curriculum
    backbone = cifar_resnet(depth)
    pnet = make_policy_net(backbone.num_blocks, 32, width=cfg.width, pool=cfg.pool)
    p, b = _count(pnet), _count(backbone)
    assert p <= 0.02 * b, (name, p, b, p / b)
    # blockdrop.flops (the report's FLOPs) counts the same policy cost on top of the backbone
    ones = torch.ones(1, backbone.num_blocks)
    with_policy = float(blockdrop.flops(backbone, ones, policy_net=pnet)[0])
    assert with_policy - float(blockdrop.flops(backbone, ones)[0]) == pytest.approx(p, rel=1e-6)


def test_the_official_agent_is_the_resnet8_on_the_full_image() -> None:
    """The authors' preset keeps their agent: a ResNet-8 of 16/32/64 channels on the 32x32 image,
    about 10% of a ResNet-56 (2.4e7 FLOPs)."""
    cfg = get_preset("official").curriculum
    assert (cfg.width, cfg.pool) == (16, 1)
    p = _count(make_policy_net(27, 32, width=cfg.width, pool=cfg.pool))
    assert 2.3e7 < p < 2.6e7
