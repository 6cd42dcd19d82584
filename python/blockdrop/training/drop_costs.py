"""What dropping each block alone costs a backbone, and the policy prior derived from it.

* :func:`single_drop_costs` -- for every block ``k``, the mean over images of
  ``KL(p_full || p_without_k)``: how far the prediction moves when block ``k`` alone is dropped
  (``p`` = softmax of the logits). Label-free, so it measures the backbone, not the task.
  Cost: the block inputs of a batch are kept once (the full forward), then each block's drop runs
  only the blocks after it -- about ``K/2`` full forwards per image in all; memory: ``K + 1``
  activations of one batch.
* :func:`keep_prior` -- a keep-probability per block from those costs: linear in the cost's rank,
  from ``lo`` (cheapest) to ``hi`` (dearest). A policy network started there
  (:meth:`blockdrop.models.policy.PolicyNet.set_prior`) is the static policy "drop the cheapest
  blocks first" at every threshold, and REINFORCE then learns per-image departures from it; as
  the keep-probabilities of stochastic depth it trains a backbone to tolerate the drops such a
  policy makes.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from blockdrop.models.wrap import as_backbone
from blockdrop.runtime import amp_autocast, eval_mode

__all__ = ["single_drop_costs", "keep_prior"]


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """``[N]``: ``KL(p || q)`` from log-probabilities ``[N, C]``."""
    return (logp.exp() * (logp - logq)).sum(1)


@torch.no_grad()
def single_drop_costs(model: torch.nn.Module, batches: Iterable[Tensor | tuple[Tensor, ...] | list[Tensor]],
                      device: torch.device | str = "cpu", amp: str = "off",
                      max_images: int | None = None) -> Tensor:
    """Mean single-block drop cost ``[K]`` (float64, CPU) of ``model`` in eval mode.

    Args:
        model: a backbone ``dynamic_forward`` accepts (``ResNetBackbone``, torchvision/timm ResNet).
        batches: images ``[N, C, H, W]``, or ``(images, labels, ...)`` tuples (a DataLoader).
        device / amp: where and in which autocast mode (``runtime.AMP_MODES``) to run.
        max_images: stop after this many images (all when None).

    Returns ``cost[k]`` = mean over the images of ``KL(softmax(full(x)) || softmax(full(x) with
    block k replaced by its shortcut))``; ValueError when ``batches`` holds no image.
    """
    bb = as_backbone(model)
    device = torch.device(device)
    total = torch.zeros(bb.num_blocks, dtype=torch.float64)
    seen = 0
    with eval_mode(model), amp_autocast(device, amp):
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if max_images is not None:
                x = x[: max_images - seen]
            if x.shape[0] == 0:
                break
            x = x.to(device)
            hs = [bb.stem(x)]                       # hs[k]: the input of block k
            for block in bb.blocks:
                hs.append(block.full(hs[-1]))
            logp = F.log_softmax(bb.head(hs[-1]).double(), 1)
            for k, block in enumerate(bb.blocks):
                h = block.shortcut(hs[k])
                for later in bb.blocks[k + 1:]:
                    h = later.full(h)
                total[k] += _kl(logp, F.log_softmax(bb.head(h).double(), 1)).sum().cpu()
            seen += x.shape[0]
            if max_images is not None and seen >= max_images:
                break
    if seen == 0:
        raise ValueError("batches: expected at least one image, got none")
    return total / seen


def keep_prior(costs: Tensor, lo: float = 0.3, hi: float = 0.9) -> Tensor:
    """Keep-probabilities ``[K]`` (float32) linear in the rank of ``costs [K]``: the cheapest
    block ``lo``, the dearest ``hi`` (ties broken by block order). Requires
    ``0 <= lo <= hi <= 1`` (a policy network's prior needs them strictly inside)."""
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"lo, hi: expected 0 <= lo <= hi <= 1, got {lo}, {hi}")
    if costs.dim() != 1 or costs.numel() == 0:
        raise ValueError(f"costs: expected a non-empty [K] tensor, got shape {tuple(costs.shape)}")
    k = costs.numel()
    rank = torch.argsort(torch.argsort(costs.double(), stable=True), stable=True).float()
    return lo + (hi - lo) * rank / max(k - 1, 1)
