"""Supervised training of a backbone under a block policy.

One loop serves four jobs that differ only in which blocks each image runs (the samplers of
:mod:`blockdrop.training.baselines`): the full network (the fair baseline, finetuned like BlockDrop),
stochastic depth / drop-path (so that the backbone learns to tolerate dropped blocks), FirstK and
RandomK (the fixed-policy baselines, finetuned alike).

Training runs through :func:`blockdrop.dynamic_forward` (``strategy="gather"`` by default), so
dropped blocks cost nothing and get no gradient; BatchNorm in train mode then normalises over the
images that execute each block. The loss of the sampled sub-network is ``(1 - distill) * CE +
distill * T^2 * KL(teacher || student)``; the teacher is a frozen network, or with ``inplace``
the network's own full path (every block), whose cross-entropy is added to the loss and whose
detached soft targets the sub-network learns ("in-place distillation", as in slimmable networks):
the full network keeps learning the task while its sub-networks learn to match it. With
``full_distill`` the full path's own loss blends in a frozen teacher's soft targets too (teacher ->
full path -> sub-networks), which keeps it close to the teacher's function. The optimiser is SGD
(momentum 0.9, Nesterov) or Adam, with a cosine learning-rate decay to 0 over ``steps``.
Deterministic: data order, augmentation and policies are functions of ``seed``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blockdrop.training.baselines import PolicySampler
from blockdrop.data import DataInfo, make_loader, set_loader_epoch
from blockdrop.engine import dynamic_forward
from blockdrop.runtime import amp_autocast, amp_dtype

__all__ = ["ReplayTeacher", "SupervisedConfig", "train_supervised"]

@dataclass
class SupervisedConfig:
    """Settings of :func:`train_supervised`."""
    steps: int
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"          # "sgd" (momentum 0.9, Nesterov) | "adam"
    weight_decay: float = 5e-4
    anchor: float = 0.0             # > 0: weight decay toward the starting weights instead of zero
                                    #   (L2-SP: grad += anchor * (w - w_start))
    distill: float = 0.0            # weight of the teacher's soft targets
    temperature: float = 4.0
    inplace: bool = False           # teacher = this network's own full path, trained by CE too
    full_distill: float = 0.0       # inplace: weight of the frozen teacher's soft targets in the
    teacher_temperature: float = 4.0  #   full path's loss (0: plain CE)
    bn: str = "train"               # "train" | "frozen" (BN layers in eval mode)
    strategy: str = "gather"
    amp: str = "off"                # runtime.AMP_MODES ("bf16": no loss scaling needed)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', not {self.optimizer!r}")
        if self.bn not in ("train", "frozen"):
            raise ValueError(f"bn must be 'train' or 'frozen', not {self.bn!r}")
        if self.anchor < 0:
            raise ValueError(f"anchor must be >= 0, not {self.anchor}")
        if not 0.0 <= self.distill <= 1.0 or self.temperature <= 0:
            raise ValueError("distill must be in [0, 1] and temperature > 0")
        amp_dtype(torch.device("cpu"), self.amp)   # validates the mode


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
        fingerprint = torch.cat([f[::self.stride].double(), f.sum(dtype=torch.float64).view(1),
                                 torch.dot(f, f).double().view(1)])
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


def _kd(logits: Tensor, teacher_logits: Tensor, t: float) -> Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(logits / T))``, batch mean."""
    return F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher_logits / t, 1),
                    reduction="batchmean") * (t * t)


def _loss(logits: Tensor, y: Tensor, teacher_logits: Tensor | None, cfg: SupervisedConfig) -> Tensor:
    ce = F.cross_entropy(logits, y)
    if teacher_logits is None:
        return ce
    return (1.0 - cfg.distill) * ce + cfg.distill * _kd(logits, teacher_logits, cfg.temperature)


@torch.no_grad()
def _pull_toward(params: list[nn.Parameter], start: list[Tensor], weight: float) -> None:
    """``grad += weight * (p - start)`` for every parameter (those without a gradient get one)."""
    for p, p0 in zip(params, start):
        if p.grad is None:
            p.grad = weight * (p - p0)
        else:
            p.grad.add_(p - p0, alpha=weight)


def train_supervised(backbone: nn.Module, data: DataInfo, sampler: PolicySampler,
                     cfg: SupervisedConfig, device: torch.device | str = "cpu",
                     teacher: nn.Module | None = None) -> dict[str, float]:
    """Train ``backbone`` in place for ``cfg.steps`` batches of ``data`` (images ``[B,3,H,W]``),
    each image running the blocks ``sampler`` picks for it. Returns ``{"seconds", "loss"}`` (mean
    loss of the last 10% of steps); ``backbone`` is left in eval mode."""
    from tqdm.auto import tqdm
    if (cfg.distill and teacher is None and not cfg.inplace) or (cfg.full_distill and teacher is None):
        raise ValueError("teacher: required when cfg.distill > 0 (without inplace) or cfg.full_distill > 0")
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 7)
    backbone.to(device)
    if teacher is not None:
        teacher.to(device).eval()
    params = [p for p in backbone.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params] if cfg.anchor else []
    decay = 0.0 if cfg.anchor else cfg.weight_decay
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True,
                                                     weight_decay=decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device, cfg.amp) == torch.float16)
    loader = make_loader(data.dataset, cfg.batch_size, train=True, seed=cfg.seed)
    if len(loader) == 0:
        raise ValueError(f"data: {len(data.dataset)} images is less than one batch of {cfg.batch_size}")  # type: ignore[arg-type]
    tail: list[Tensor] = []
    bar = tqdm(total=cfg.steps, desc="backbone", leave=False, disable=not cfg.progress,
               dynamic_ncols=True)
    t0, step, epoch = time.time(), 0, 0
    while step < cfg.steps:
        set_loader_epoch(loader, epoch)
        epoch += 1
        for x, y in loader:
            backbone.train(cfg.bn == "train")
            x, y = x.to(device), y.to(device)
            policy = sampler(x.shape[0], g).to(device)
            with amp_autocast(device, cfg.amp):
                full_loss, t_logits = 0.0, None
                if cfg.inplace:
                    full_logits = backbone(x).float()
                    full_loss = F.cross_entropy(full_logits, y)
                    if cfg.full_distill:
                        with torch.no_grad():
                            ext = teacher(x).float()  # type: ignore[misc]
                        full_loss = (1.0 - cfg.full_distill) * full_loss + cfg.full_distill * _kd(
                            full_logits, ext, cfg.teacher_temperature)
                    t_logits = full_logits.detach()
                elif cfg.distill:
                    with torch.no_grad():
                        t_logits = teacher(x).float()  # type: ignore[misc]
                logits = dynamic_forward(backbone, x, policy, strategy=cfg.strategy).float()
            loss = _loss(logits, y, t_logits if cfg.distill else None, cfg) + full_loss
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if start:                      # on the true gradients (unscaling is a no-op without fp16)
                scaler.unscale_(opt)
                _pull_toward(params, start, cfg.anchor)
            scaler.step(opt)
            scaler.update()
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
