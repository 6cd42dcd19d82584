"""One BlockDrop training step as a module: policy -> sampled and thresholded policies -> the
backbone on both (the engine's real dynamic path) -> rewards -> REINFORCE (+ the backbone's loss
when finetuning). DDP wraps this module, so every parameter use happens inside one call."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from blockdrop.engine import dynamic_forward
from blockdrop.runtime import amp_autocast, eval_mode
from blockdrop.training import rl
from blockdrop.training.losses import distillation_loss

if TYPE_CHECKING:
    from blockdrop.models.base import ResNetBackbone
    from blockdrop.training.config import TrainConfig

__all__ = ["BlockDropStep", "ForcedOn", "STAT_NAMES", "stats_dict"]


class BlockDropStep(nn.Module):
    """Policy network + backbone; ``forward`` computes one training step's loss, so that DDP
    sees every parameter use (both stages) inside one wrapped call."""

    def __init__(
        self,
        policy_net: nn.Module,
        backbone: ResNetBackbone,
        cfg: TrainConfig,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.policy_net, self.backbone, self.cfg = policy_net, backbone, cfg
        self.finetune = cfg.stage == "finetune"
        self.generator: torch.Generator | None = None
        self._teacher = [teacher] if teacher is not None else []  # not a submodule: not trained

    def train(self, mode: bool = True) -> BlockDropStep:
        self.training = mode
        self.policy_net.train(mode)
        self.backbone.train(mode and self.finetune and self.cfg.bn == "train")
        return self

    def _autocast(self, x: Tensor) -> Any:
        return amp_autocast(x.device, self.cfg.amp)

    def _backbone_loss(self, x: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy of the trained sub-network, blended with the teacher's soft targets."""
        teacher_logits = None
        if self.cfg.distill:
            with torch.no_grad(), self._autocast(x):
                teacher_logits = self._teacher[0](x).float()
        return distillation_loss(logits, y, teacher_logits, self.cfg.distill, self.cfg.temperature)

    def forward(self, x: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """``x [N,3,H,W]``, ``y [N]``, curriculum ``mask [K]`` (None: all blocks learned) ->
        ``(loss scalar, stats [len(STAT_NAMES)])``."""
        cfg, bb = self.cfg, self.backbone
        with self._autocast(x):
            probs = self.policy_net(x).float()  # [N, K]
        pb = rl.bound_probs(probs, cfg.alpha)
        sample = rl.sample_policy(pb, self.generator)
        greedy = rl.threshold_policy(probs)
        if mask is not None:
            sample, greedy = rl.apply_curriculum(sample, mask), rl.apply_curriculum(greedy, mask)
        # official: the baseline pass runs in the backbone's training mode (BN batch statistics)
        mode = eval_mode(bb) if cfg.baseline_eval else nullcontext()
        # the backbone learns on one of the two passes (finetune only): the sampled one (official)
        # or the thresholded one, the sub-network that eval executes
        on_greedy = self.finetune and cfg.backbone_on == "greedy"

        def greedy_pass() -> Tensor:
            with nullcontext() if on_greedy else torch.no_grad(), mode, self._autocast(x):
                return dynamic_forward(bb, x, greedy, strategy=cfg.strategy)

        def sampled_pass() -> Tensor:
            with nullcontext() if self.finetune and not on_greedy else torch.no_grad(), self._autocast(x):
                return dynamic_forward(bb, x, sample, strategy=cfg.strategy)

        # An eval-mode pass that trains reads the running statistics again in its backward, and a
        # later train-mode pass updates them in place (unseen by autograd): it then runs last.
        if on_greedy and cfg.baseline_eval:
            logits_s = sampled_pass()
            logits_g = greedy_pass()
        else:
            logits_g = greedy_pass()
            logits_s = sampled_pass()
        correct_s = logits_s.detach().argmax(1) == y
        correct_g = logits_g.detach().argmax(1) == y
        assert cfg.gamma is not None  # TrainConfig.__post_init__ sets it
        r_s = rl.reward(correct_s, sample, float(cfg.gamma))
        r_g = rl.reward(correct_g, greedy, float(cfg.gamma))
        logp = rl.log_prob(pb, sample, mask)
        ent = rl.entropy(pb) if cfg.beta else None
        loss_pg = rl.policy_gradient_loss(logp, r_s - r_g, ent, float(cfg.beta or 0.0))
        trained = logits_g if on_greedy else logits_s
        loss = loss_pg + self._backbone_loss(x, trained, y) if self.finetune else loss_pg
        stats = torch.stack(
            [
                loss_pg.detach(),
                r_s.mean(),
                r_g.mean(),
                correct_g.float().mean(),
                greedy.sum(1).mean(),
                sample.sum(1).mean(),
            ]
        )
        return loss, stats


#: The per-step statistics, in the order of the stats tensor (averaged with one device->host copy).
STAT_NAMES = ("loss_pg", "reward", "reward_greedy", "acc", "blocks", "blocks_sample")


def stats_dict(stats: Tensor) -> dict[str, float]:
    """The stats tensor ``[len(STAT_NAMES)]`` by name (one host copy)."""
    return dict(zip(STAT_NAMES, stats.tolist()))


class ForcedOn(nn.Module):
    """Validation during the curriculum: the blocks not yet learned are forced on (probability 1),
    exactly as in training."""

    def __init__(self, policy_net: nn.Module, mask: Tensor) -> None:
        super().__init__()
        self.inner, self.mask = policy_net, mask
        self.num_blocks = int(mask.numel())

    def forward(self, x: Tensor) -> Tensor:
        return rl.apply_curriculum(self.inner(x), self.mask)
