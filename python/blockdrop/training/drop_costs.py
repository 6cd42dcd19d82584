"""What dropping each block alone costs a backbone, and the policy prior derived from it.

* :func:`single_drop_costs` -- for every block ``k``, the mean over images of
  ``KL(p_full || p_without_k)``: how far the prediction moves when block ``k`` alone is dropped
  (``p`` = softmax of the logits). Label-free, so it measures the backbone, not the task.
  Cost: the block inputs of a batch are kept once (the full forward), then each block's drop runs
  only the blocks after it -- about ``K/2`` full forwards per image in all; memory: ``K + 1``
  activations of one batch.
* :func:`drop_costs` -- the same with some blocks already dropped: for every other block ``k``,
  how far the prediction of the network without ``dropped + [k]`` is from the full network's;
* :func:`greedy_drop_order` -- static layer pruning's choice (StaticK): the block whose drop
  costs least, then, with it dropped, the next one, and so on (one :func:`drop_costs` per drop);
* :func:`keep_prior` -- a keep-probability per block from those costs: linear in the cost's rank,
  from ``lo`` (cheapest) to ``hi`` (dearest). A policy network started there
  (:meth:`blockdrop.models.policy.PolicyNet.set_prior`) is the static policy "drop the cheapest
  blocks first" at every threshold, and REINFORCE then learns per-image departures from it; as
  the keep-probabilities of stochastic depth it trains a backbone to tolerate the drops such a
  policy makes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from blockdrop.models.wrap import as_backbone
from blockdrop.runtime import amp_autocast, eval_mode

__all__ = ["single_drop_costs", "drop_costs", "greedy_drop_order", "keep_prior"]


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """``[N]``: ``KL(p || q)`` from log-probabilities ``[N, C]``."""
    return (logp.exp() * (logp - logq)).sum(1)


Batches = Iterable[Tensor | tuple[Tensor, ...] | list[Tensor]]


def single_drop_costs(
    model: torch.nn.Module,
    batches: Batches,
    device: torch.device | str = "cpu",
    amp: str = "off",
    max_images: int | None = None,
) -> Tensor:
    """Mean single-block drop cost ``[K]`` (float64, CPU) of ``model`` in eval mode: ``cost[k]``
    = mean over the images of ``KL(softmax(full(x)) || softmax(full(x) with block k replaced by
    its shortcut))`` (:func:`drop_costs` with nothing dropped before)."""
    return drop_costs(model, batches, (), device, amp, max_images)


@torch.no_grad()
def drop_costs(
    model: torch.nn.Module,
    batches: Batches,
    dropped: Sequence[int] = (),
    device: torch.device | str = "cpu",
    amp: str = "off",
    max_images: int | None = None,
) -> Tensor:
    """Drop costs ``[K]`` (float64, CPU) of ``model`` in eval mode with the blocks ``dropped``
    already replaced by their shortcuts.

    Args:
        model: a backbone ``dynamic_forward`` accepts (``ResNetBackbone``, torchvision/timm ResNet).
        batches: images ``[N, C, H, W]``, or ``(images, labels, ...)`` tuples (a DataLoader).
        dropped: block indices already dropped (their costs are ``inf``).
        device / amp: where and in which autocast mode (``runtime.AMP_MODES``) to run.
        max_images: stop after this many images (all when None).

    Returns ``cost[k]`` = mean over the images of ``KL(softmax(full(x)) || softmax(x through the
    network without dropped + [k]))``; ValueError when ``batches`` holds no image or ``dropped``
    names a block that does not exist.
    """
    bb = as_backbone(model)
    n = bb.num_blocks
    gone = {int(k) for k in dropped}
    if any(not 0 <= k < n for k in gone):
        raise ValueError(f"dropped: expected block indices in [0, {n}), got {sorted(gone)}")
    device = torch.device(device)
    total = torch.zeros(n, dtype=torch.float64)
    seen = 0
    with eval_mode(model), amp_autocast(device, amp):
        for x in _images(batches, max_images):
            x = x.to(device)
            total += _batch_costs(bb, x, gone)
            seen += x.shape[0]
    if seen == 0:
        raise ValueError("batches: expected at least one image, got none")
    costs = total / seen
    costs[sorted(gone)] = float("inf")
    return costs


def _images(batches: Batches, max_images: int | None) -> Iterable[Tensor]:
    seen = 0
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if max_images is not None:
            x = x[: max_images - seen]
        if x.shape[0] == 0:
            return
        yield x
        seen += x.shape[0]
        if max_images is not None and seen >= max_images:
            return


def _batch_costs(bb: Any, x: Tensor, gone: set[int]) -> Tensor:
    """Summed (over the batch) drop costs ``[K]`` of one batch; a dropped block's entry is 0."""
    blocks = bb.blocks
    step = lambda k, h: blocks[k].shortcut(h) if k in gone else blocks[k].full(h)  # noqa: E731
    h0 = bb.stem(x)
    hs = [h0]  # hs[k]: the input of block k, without `gone`
    for k in range(len(blocks)):
        hs.append(step(k, hs[-1]))
    ref = hs[-1]
    if gone:  # the reference is the full network (all blocks)
        ref = h0
        for b in blocks:
            ref = b.full(ref)
    logp = F.log_softmax(bb.head(ref).double(), 1)
    out = torch.zeros(len(blocks), dtype=torch.float64)
    for k in range(len(blocks)):
        if k in gone:
            continue
        h = blocks[k].shortcut(hs[k])
        for j in range(k + 1, len(blocks)):
            h = step(j, h)
        out[k] = _kl(logp, F.log_softmax(bb.head(h).double(), 1)).sum().cpu()
    return out


def greedy_drop_order(
    model: torch.nn.Module,
    batches: Batches,
    drops: int,
    device: torch.device | str = "cpu",
    amp: str = "off",
    max_images: int | None = None,
) -> list[int]:
    """The first ``drops`` blocks static layer pruning removes, in order: each the block whose
    drop, with the earlier ones dropped, moves the prediction least from the full network's
    (:func:`drop_costs`; ties: the lower index). ``batches`` must be re-iterable (a list or a
    DataLoader); ``drops`` is in ``[0, K]``."""
    n = as_backbone(model).num_blocks
    if not 0 <= drops <= n:
        raise ValueError(f"drops: expected a number of blocks in [0, {n}], got {drops}")
    order: list[int] = []
    for _ in range(drops):
        costs = drop_costs(model, batches, order, device, amp, max_images)
        order.append(int(torch.argmin(costs)))
    return order


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
