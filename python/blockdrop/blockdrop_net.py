"""``BlockDropNet``: a policy network that picks blocks, and a backbone run on that pick.

It sits above the engine (it calls :func:`blockdrop.dynamic_forward`), so it lives beside it and
not in :mod:`blockdrop.models`, which the engine imports."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from blockdrop.engine import dynamic_forward
from blockdrop.training.rl import sample_policy, threshold_policy

__all__ = ["BlockDropNet"]


class BlockDropNet(nn.Module):
    """Policy network + ResNet backbone.

    ``forward(x [N,3,H,W]) -> (logits [N, C], policy [N, K] float 0/1)``.  In eval mode the
    policy is ``probs >= threshold`` (0.5); in training mode it is a Bernoulli sample of the
    probabilities.  The backbone always runs through :func:`blockdrop.engine.dynamic_forward`,
    so dropped blocks are not computed.
    """

    def __init__(self, policy_net: nn.Module, backbone: nn.Module, strategy: str = "auto",
                 threshold: float = 0.5) -> None:
        super().__init__()
        num_blocks = int(getattr(backbone, "num_blocks"))
        pk = getattr(policy_net, "num_blocks", num_blocks)
        if pk != num_blocks:
            raise ValueError(f"policy net has {pk} outputs but the backbone has {num_blocks} blocks")
        self.policy_net = policy_net
        self.backbone = backbone
        self.strategy = strategy
        self.threshold = float(threshold)

    @property
    def num_blocks(self) -> int:
        """K, the number of droppable blocks."""
        return int(self.backbone.num_blocks)

    def probs(self, x: Tensor) -> Tensor:
        """Keep probabilities ``[N, K]`` (float32)."""
        return self.policy_net(x)

    def policy(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The policy ``[N, K]`` float 0/1: thresholded in eval mode, sampled in training mode."""
        p = self.probs(x)
        if self.training:
            return sample_policy(p, generator)
        return threshold_policy(p, self.threshold)

    def run_backbone(self, x: Tensor, policy: Tensor, strategy: str | None = None) -> Tensor:
        """Backbone logits ``[N, C]`` executing only the blocks in ``policy [N, K]``."""
        return dynamic_forward(self.backbone, x, policy, strategy=strategy or self.strategy)

    def forward(self, x: Tensor, policy: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x [N,3,H,W]`` (optionally a given ``policy [N,K]``) -> ``(logits [N,C], policy [N,K])``."""
        if policy is None:
            policy = self.policy(x)
        return self.run_backbone(x, policy), policy

    def extra_repr(self) -> str:
        return f"num_blocks={self.num_blocks}, strategy={self.strategy!r}, threshold={self.threshold}"
