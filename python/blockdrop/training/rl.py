"""The BlockDrop reinforcement-learning pieces, as pure tensor functions.

Notation: ``N`` images, ``K`` blocks; a policy is a ``{0,1}`` float tensor ``[N, K]``
(1 = execute the block).  Everything here is independent of the backbone and the engine.

* reward: ``1 - (|u|/K)^2`` for a correct prediction, ``-gamma`` otherwise;
* exploration: probabilities bounded to ``alpha*p + (1-alpha)*(1-p)`` (alpha = 0.8), samples and
  log-probabilities both taken under the bounded distribution;
* self-critical baseline: advantage = reward(sampled policy) - reward(thresholded policy);
* curriculum: at curriculum stage ``t`` only the last ``min(K, (t+1)*step)`` blocks are learned,
  the others are forced on and their log-probabilities masked out;
* entropy bonus (curriculum only, ``beta = 0.1``): the official ``-p log p`` summed over all blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "ALPHA",
    "reward",
    "bound_probs",
    "sample_policy",
    "threshold_policy",
    "log_prob",
    "entropy",
    "curriculum_mask",
    "apply_curriculum",
    "policy_gradient_loss",
    "num_learned_blocks",
]

_EPS = 1e-7
#: The official exploration bound.
ALPHA = 0.8


def reward(correct: Tensor, policy: Tensor, gamma: float) -> Tensor:
    """Per-image reward ``[N]`` (float32).

    correct: bool ``[N]``; policy: ``[N, K]`` 0/1 (any dtype); gamma: penalty for a wrong answer.
    Returns ``1 - (sum_k policy[n,k] / K)^2`` where correct, else ``-gamma``.
    """
    k = policy.shape[1]
    usage = policy.float().sum(1) / k
    return torch.where(correct, 1.0 - usage * usage, torch.full_like(usage, -float(gamma)))


def bound_probs(probs: Tensor, alpha: float = ALPHA) -> Tensor:
    """Exploration bound ``alpha*p + (1-alpha)*(1-p)``: ``[N, K] -> [N, K]``, inside
    ``[1-alpha, alpha]`` for alpha in [0.5, 1]."""
    return alpha * probs + (1.0 - alpha) * (1.0 - probs)


def sample_policy(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Bernoulli sample ``[N, K]`` (float 0/1, no grad) from keep-probabilities ``[N, K]``."""
    with torch.no_grad():
        u = torch.rand(probs.shape, device=probs.device, dtype=torch.float32, generator=generator)
        return (u < probs.detach().float()).float()


def threshold_policy(probs: Tensor, threshold: float = 0.5) -> Tensor:
    """Inference policy ``[N, K]`` float 0/1: keep a block when ``p >= threshold``."""
    return (probs.detach() >= threshold).float()


def log_prob(probs: Tensor, policy: Tensor, mask: Tensor | None = None) -> Tensor:
    """Log-probability ``[N]`` of ``policy [N, K]`` under independent Bernoullis ``probs [N, K]``,
    summed over the blocks where ``mask [K] or [N, K]`` is true (all blocks if None)."""
    p = probs.float().clamp(_EPS, 1.0 - _EPS)
    a = policy.float()
    lp = a * torch.log(p) + (1.0 - a) * torch.log1p(-p)
    if mask is not None:
        lp = lp * mask.to(lp.dtype)
    return lp.sum(1)


def entropy(probs: Tensor) -> Tensor:
    """The official BlockDrop entropy term ``[N]``: ``sum_k -p[n,k] * log p[n,k]`` over all ``K``
    blocks of ``probs [N, K]`` (the alpha-bounded keep-probabilities).

    Only the "keep" half of the Bernoulli entropy, and never masked by the curriculum (as in the
    official ``cl_training.py``): each term peaks at ``p = 1/e``, so the bonus pulls every
    probability, learned or still forced on, towards 0.37 -- i.e. towards dropping.
    """
    p = probs.float().clamp(_EPS, 1.0 - _EPS)
    return -(p * torch.log(p)).sum(1)


def num_learned_blocks(num_blocks: int, stage: int, step: int = 1) -> int:
    """How many (trailing) blocks are learned at curriculum stage ``stage`` (0-based):
    ``min(K, (stage + 1) * step)``."""
    if step <= 0:
        raise ValueError("curriculum step must be positive")
    return min(num_blocks, (stage + 1) * step)


def curriculum_mask(
    num_blocks: int, stage: int, step: int = 1, device: torch.device | str | None = None
) -> Tensor:
    """Bool ``[K]``: True for the blocks learned at curriculum stage ``stage`` (the last ones)."""
    learned = num_learned_blocks(num_blocks, stage, step)
    mask = torch.zeros(num_blocks, dtype=torch.bool, device=device)
    mask[num_blocks - learned :] = True
    return mask


def apply_curriculum(policy: Tensor, mask: Tensor) -> Tensor:
    """Force the blocks outside ``mask [K]`` on: ``policy [N, K] -> [N, K]`` (same dtype)."""
    return torch.where(mask.unsqueeze(0), policy, torch.ones_like(policy))


def policy_gradient_loss(
    logp: Tensor, advantage: Tensor, ent: Tensor | None = None, beta: float = 0.0
) -> Tensor:
    """REINFORCE loss (scalar): ``mean(-logp * advantage) - beta * mean(entropy)``.

    logp: ``[N]`` (with grad); advantage: ``[N]`` (detached here); ent: ``[N]`` or None.
    """
    loss = -(logp * advantage.detach().float()).mean()
    if ent is not None and beta:
        loss = loss - beta * ent.mean()
    return loss
