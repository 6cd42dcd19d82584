"""FLOP accounting for BlockDrop policies (per image), with ``torch.utils.flop_counter``.

Counted as in the official code: FLOPs of a batch-1 forward as ``FlopCounterMode`` reports them
(2 x multiply-accumulates of convolutions and matrix products; BatchNorm, ReLU, additions and
pooling are not counted). The stem and the head are counted once per image, each block's residual
branch once per image that executes it, and each block's shortcut (a projection conv in torchvision
models; free for identity and option A) for every image, since a dropped block still runs its
shortcut. The policy network's FLOPs are added when it is given.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from blockdrop.engine import check_policy_values
from blockdrop.models.base import ResNetBackbone
from blockdrop.models.wrap import as_backbone
from blockdrop.runtime import eval_mode

__all__ = ["BlockFlops", "block_flops", "flops", "ideal_speedup"]


@dataclass(frozen=True)
class BlockFlops:
    """Batch-1 FLOPs of a backbone's parts at one input size.

    Attributes:
        stem_head: stem + head.
        residual: ``[K]`` FLOPs of each block's residual branch.
        shortcut: ``[K]`` FLOPs of each block's shortcut (paid whether the block runs or not).
    """

    stem_head: int
    residual: tuple[int, ...]
    shortcut: tuple[int, ...]

    @property
    def full(self) -> int:
        """FLOPs of the full network (every block executed), per image."""
        return self.stem_head + sum(self.residual) + sum(self.shortcut)


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, BlockFlops]] = weakref.WeakKeyDictionary()


def _count(fn: Any, *args: Any) -> tuple[int, Any]:
    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return int(counter.get_total_flops()), out


def _param_like(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def block_flops(model: Any, input_size: tuple[int, int, int] | None = None) -> BlockFlops:
    """Measure (once per model and input size; cached) the batch-1 FLOPs of the stem + head and
    of each block's residual and shortcut. ``input_size = (C, H, W)``, default the model's
    ``default_input_size`` ((3, 32, 32) for CIFAR, (3, 224, 224) for torchvision)."""
    key = model  # cache on the user's module (a torchvision ResNet is wrapped anew each call)
    model = as_backbone(model)
    size = tuple(input_size) if input_size is not None else tuple(model.default_input_size)
    if len(size) != 3:
        raise ValueError(f"input_size: expected (C, H, W), got {input_size!r}")
    cached = _CACHE.setdefault(key, {}).get(size)
    if cached is not None:
        return cached
    device, dtype = _param_like(model)
    x = torch.zeros((1, *size), device=device, dtype=dtype)
    with eval_mode(model), torch.no_grad():
        stem, h = _count(model.stem, x)
        residual, shortcut = [], []
        for block in model.blocks:
            r, _ = _count(block.residual, h)
            s, h = _count(block.shortcut, h)
            residual.append(r)
            shortcut.append(s)
        head, _ = _count(model.head, h)
    result = BlockFlops(stem + head, tuple(residual), tuple(shortcut))
    _CACHE[key][size] = result
    return result


def _policy_net_flops(policy_net: nn.Module, input_size: tuple[int, int, int]) -> int:
    device, dtype = _param_like(policy_net)
    x = torch.zeros((1, *input_size), device=device, dtype=dtype)
    with eval_mode(policy_net), torch.no_grad():
        total, _ = _count(policy_net, x)
    return total


def _validate_policy(model: ResNetBackbone, policy: Tensor) -> Tensor:
    if not isinstance(policy, Tensor) or policy.dim() != 2 or policy.shape[1] != model.num_blocks:
        shape = list(policy.shape) if isinstance(policy, Tensor) else type(policy).__name__
        raise ValueError(
            f"policy: expected a tensor [N, K] with K = model.num_blocks = {model.num_blocks}, got {shape}"
        )
    host = policy.detach().cpu()
    check_policy_values(host)
    return (host != 0).to(torch.float64)


def flops(
    model: Any,
    policy: Tensor,
    policy_net: nn.Module | None = None,
    input_size: tuple[int, int, int] | None = None,
    policy_input_size: tuple[int, int, int] | None = None,
) -> Tensor:
    """Per-image FLOPs of running ``model`` under ``policy`` (plus ``policy_net`` when given).

    Args:
        model: a backbone (or torchvision ResNet) with ``K`` blocks.
        policy: ``Tensor[N, K]`` of 0/1 (any device; copied to the host).
        policy_net: optional policy network, counted at batch 1 on ``policy_input_size``.
        input_size: ``(C, H, W)`` of the backbone's input; default the model's own.
        policy_input_size: ``(C, H, W)`` fed to ``policy_net``; default ``input_size`` (a policy
            net that downsamples internally, as BlockDrop's ImageNet one, has that counted).

    Returns:
        ``Tensor[N]`` float64 on the CPU: FLOPs per image.
    """
    parts = block_flops(model, input_size)
    model = as_backbone(model)
    keep = _validate_policy(model, policy)
    residual = torch.tensor(parts.residual, dtype=torch.float64)
    per_image = parts.stem_head + sum(parts.shortcut) + keep @ residual
    if policy_net is not None:
        size = policy_input_size or input_size or tuple(model.default_input_size)
        per_image = per_image + _policy_net_flops(policy_net, tuple(size))
    return per_image


def ideal_speedup(
    model: Any,
    policy: Tensor,
    policy_net: nn.Module | None = None,
    input_size: tuple[int, int, int] | None = None,
    policy_input_size: tuple[int, int, int] | None = None,
) -> float:
    """FLOPs of the full network over the mean per-image FLOPs under ``policy`` (policy net
    included when given): the speedup a perfect implementation would realise.

    ``policy: Tensor[N, K]`` (N >= 1). Returns a float.
    """
    per_image = flops(model, policy, policy_net, input_size, policy_input_size)
    if per_image.numel() == 0:
        raise ValueError("policy: expected at least one image (N >= 1) to compute a speedup")
    return block_flops(model, input_size).full / float(per_image.mean())
