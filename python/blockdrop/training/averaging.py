"""Weight-space averaging of two networks of one architecture (a two-model "soup").

``average_weights(a, b, w)`` returns a new network whose every floating-point parameter and
buffer is ``(1 - w) * a + w * b`` -- BatchNorm running means and variances included, so that the
result is usable in eval mode without re-estimating them. Integer buffers (BatchNorm's
``num_batches_tracked``) are taken from ``a``. Neither input is modified; the result is a deep copy
of ``a`` (its device, dtype and train/eval mode). Averaging is meaningful when both networks were
finetuned from the same starting weights (they then lie in one basin of the loss).
"""

from __future__ import annotations

import copy
from typing import TypeVar

import torch
from torch import nn

__all__ = ["average_weights"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def average_weights(a: ModuleT, b: nn.Module, weight: float) -> ModuleT:
    """``(1 - weight) * a + weight * b``, parameter by parameter and buffer by buffer.

    Args:
        a, b: networks with identical state-dict keys and tensor shapes.
        weight: in [0, 1]; the share of ``b``.
    Returns:
        a new module (a deep copy of ``a`` holding the averaged tensors).
    Raises:
        ValueError: ``weight`` outside [0, 1], or state dicts whose keys, shapes or dtypes differ.
    """
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"weight: expected a share of the second network in [0, 1], got {weight}")
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        diff = sorted(set(sa) ^ set(sb))
        raise ValueError(
            f"b: expected the same parameters and buffers as a; {len(diff)} names differ (first: {diff[0]!r})"
        )
    for k, t in sa.items():
        if t.shape != sb[k].shape or t.dtype != sb[k].dtype:
            raise ValueError(
                f"b: {k!r} is {tuple(sb[k].shape)} {sb[k].dtype}, a has {tuple(t.shape)} {t.dtype}"
            )
    out = copy.deepcopy(a)
    w = float(weight)
    with torch.no_grad():
        out.load_state_dict(
            {k: torch.lerp(t, sb[k].to(t.device), w) if t.is_floating_point() else t for k, t in sa.items()}
        )
    return out
