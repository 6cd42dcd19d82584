"""Supervised training of a backbone under a block policy.

One loop serves every job that differs only in which blocks each image runs (the samplers of
:mod:`blockdrop.training.baselines`): the full network (the fair baseline, finetuned like
BlockDrop), stochastic depth (so that the backbone learns to tolerate dropped blocks), FirstK,
RandomK and StaticK (the fixed-policy baselines, finetuned alike).

Training runs through :func:`blockdrop.dynamic_forward` (``strategy="gather"`` by default), so
dropped blocks cost nothing and get no gradient; BatchNorm in train mode then normalises over the
images that execute each block. The loss of the sampled sub-network is
:func:`~blockdrop.training.losses.distillation_loss` (``(1 - distill) * CE + distill * T^2 *
KL``); the teacher is a frozen network, or with ``inplace`` the network's own full path (every
block), whose cross-entropy is added to the loss and whose detached soft targets the sub-network
learns ("in-place distillation", as in slimmable networks). The optimiser is SGD (momentum 0.9,
Nesterov) or Adam, with a cosine learning-rate decay to 0 over ``steps``. Deterministic: data
order, augmentation and policies are functions of ``seed``.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blockdrop.data import DataInfo, make_loader
from blockdrop.engine import dynamic_forward
from blockdrop.runtime import amp_autocast
from blockdrop.training.baselines import PolicySampler
from blockdrop.training.config import SupervisedConfig
from blockdrop.training.loop import Optimization, epoch_batches, progress
from blockdrop.training.losses import distillation_loss

__all__ = ["ReplayTeacher", "SupervisedConfig", "train_supervised"]


class ReplayTeacher(nn.Module):
    """A frozen teacher that records its outputs and replays them to a later run fed the same
    batches in the same order (runs with one seed, batch size and data see identical batches: the
    adapt stage and the full baseline of ``blockdrop reproduce``), saving one forward per step.

    :meth:`rewind` before each run. Call ``i`` of a run replays call ``i`` of the recording only if
    the input has the same shape, dtype, device and autocast dtype, and the same fingerprint (a
    strided sample of its values, their float64 sum and sum of squares, kept on the input's
    device: one host sync per call); any other input is computed (and replaces the record).
    ``teacher`` must be deterministic and in eval mode; the recording holds ``[N, classes]`` per
    call.
    """

    def __init__(self, teacher: nn.Module, stride: int = 1031) -> None:
        super().__init__()
        self.teacher, self.stride = teacher, stride
        self._records: list[tuple[tuple[Any, ...], Tensor, Tensor]] = []
        self._i, self.hits, self.misses = 0, 0, 0

    def rewind(self) -> None:
        """Start replaying from the first recorded call."""
        self._i = 0

    def _key(self, x: Tensor) -> tuple[tuple[Any, ...], Tensor]:
        flat = x.detach().reshape(-1)
        f = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        dev = x.device.type
        amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        fingerprint = torch.cat(
            [f[:: self.stride].double(), f.sum(dtype=torch.float64).view(1), torch.dot(f, f).double().view(1)]
        )
        return (tuple(x.shape), x.dtype, x.device, amp), fingerprint

    def forward(self, x: Tensor) -> Tensor:
        """``[N,3,H,W] -> [N,classes]``: the teacher's logits, replayed when recorded."""
        i, (meta, fingerprint) = self._i, self._key(x)
        self._i += 1
        if i < len(self._records):
            r_meta, r_fingerprint, r_out = self._records[i]
            if r_meta == meta and torch.equal(r_fingerprint, fingerprint):
                self.hits += 1
                return r_out
        out = self.teacher(x).detach()
        self.misses += 1
        rec = (meta, fingerprint, out)
        if i < len(self._records):
            self._records[i] = rec
        else:
            self._records.append(rec)
        return out


def _optimizer(params: list[nn.Parameter], cfg: SupervisedConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _step_loss(
    backbone: nn.Module,
    x: Tensor,
    y: Tensor,
    policy: Tensor,
    cfg: SupervisedConfig,
    teacher: nn.Module | None,
) -> Tensor:
    """The loss of one batch (autocast applied by the caller): the sub-network's, plus with
    ``inplace`` the full path's cross-entropy."""
    full_loss, t_logits = None, None
    if cfg.inplace:
        full_logits = backbone(x).float()
        full_loss = F.cross_entropy(full_logits, y)
        t_logits = full_logits.detach()
    elif cfg.distill:
        assert teacher is not None
        with torch.no_grad():
            t_logits = teacher(x).float()
    logits = dynamic_forward(backbone, x, policy, strategy=cfg.strategy).float()
    loss = distillation_loss(logits, y, t_logits, cfg.distill, cfg.temperature)
    return loss if full_loss is None else loss + full_loss


def train_supervised(
    backbone: nn.Module,
    data: DataInfo,
    sampler: PolicySampler,
    cfg: SupervisedConfig,
    device: torch.device | str = "cpu",
    teacher: nn.Module | None = None,
) -> dict[str, float]:
    """Train ``backbone`` in place for ``cfg.steps`` batches of ``data`` (images ``[B,3,H,W]``),
    each image running the blocks ``sampler`` picks for it (``sampler(B, generator) -> [B, K]``).
    Returns ``{"seconds", "loss"}`` (mean loss of the last 10% of steps); ``backbone`` is left in
    eval mode. ``teacher`` (frozen, eval mode) is required when ``cfg.distill > 0`` without
    ``cfg.inplace``."""
    if cfg.distill and teacher is None and not cfg.inplace:
        raise ValueError("teacher: required when cfg.distill > 0 (without inplace)")
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    backbone.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    opt = Optimization(
        _optimizer([p for p in backbone.parameters() if p.requires_grad], cfg), device, cfg.amp
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt.optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps))
    )
    loader = make_loader(data.dataset, cfg.batch_size, train=True, seed=cfg.seed)
    if len(loader) == 0:
        raise ValueError(f"data: {len(data.dataset)} images is less than one batch of {cfg.batch_size}")
    tail: list[Tensor] = []
    bar = progress(cfg.steps, "backbone", cfg.progress)
    t0, step = time.time(), 0
    for epoch in itertools.count():
        for x, y in epoch_batches(loader, epoch, limit=cfg.steps - step):
            backbone.train(cfg.bn == "train")
            x, y = x.to(device), y.to(device)
            policy = sampler(x.shape[0], g).to(device)
            with amp_autocast(device, cfg.amp):
                loss = _step_loss(backbone, x, y, policy, cfg, teacher)
            opt.step(loss)
            sched.step()
            step += 1
            bar.update(1)
            if step > 0.9 * cfg.steps:
                tail.append(loss.detach())
        if step >= cfg.steps:
            break
    bar.close()
    backbone.eval()
    return {"seconds": time.time() - t0, "loss": float(torch.stack(tail).mean())}
