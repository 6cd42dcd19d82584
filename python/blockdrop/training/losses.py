"""The backbone's loss, shared by both trainers: cross-entropy, optionally blended with a frozen
teacher's soft targets (knowledge distillation, Hinton et al. 2015).

    loss = (1 - w) * CE(logits, y) + w * T^2 * KL(softmax(teacher / T) || softmax(logits / T))

with the KL a batch mean. ``w = 0`` is plain cross-entropy (the teacher is then not needed). Every
term is computed in float32 whatever the logits' dtype.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["distillation_loss", "soft_target_kl"]


def soft_target_kl(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(logits / T))``, batch mean (scalar, float32).
    ``logits``, ``teacher_logits``: ``[N, classes]``."""
    t = float(temperature)
    return F.kl_div(
        F.log_softmax(logits.float() / t, 1), F.softmax(teacher_logits.float() / t, 1), reduction="batchmean"
    ) * (t * t)


def distillation_loss(
    logits: Tensor, y: Tensor, teacher_logits: Tensor | None, weight: float, temperature: float
) -> Tensor:
    """``(1 - weight) * CE + weight * soft_target_kl`` (scalar, float32; see the module docstring).

    logits: ``[N, classes]``; y: ``[N]`` class indices; teacher_logits: ``[N, classes]``, or None
    with ``weight == 0``. ValueError for a weight outside [0, 1] or a missing teacher."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight: expected a share in [0, 1], got {weight}")
    ce = F.cross_entropy(logits.float(), y)
    if not weight:
        return ce
    if teacher_logits is None:
        raise ValueError(f"teacher_logits: required with a distillation weight of {weight}")
    return (1.0 - weight) * ce + weight * soft_target_kl(logits, teacher_logits, temperature)
