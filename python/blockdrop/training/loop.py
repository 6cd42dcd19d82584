"""What both trainers share (:class:`~blockdrop.training.trainer.Trainer`, the curriculum and
joint finetuning; :func:`~blockdrop.training.supervised.train_supervised`, a backbone under
fixed policies): the settings they have in common, each with its one default
(:class:`LoopConfig`), the optimisation step (:class:`Optimization`: zero the gradients, scaled
backward, step, scaler update), the batches of an epoch (:func:`epoch_batches`) and progress
output that suits a terminal and a log file alike (:func:`progress`).

Mixed precision (``amp``, :data:`blockdrop.runtime.AMP_MODES`): ``"auto"`` is float16 with loss
scaling on CUDA and full precision on the CPU; ``"bf16"`` needs no loss scaling; the scaler is
enabled only for float16.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from blockdrop.data import set_loader_epoch
from blockdrop.engine import STRATEGIES
from blockdrop.runtime import amp_dtype

__all__ = ["BN_MODES", "LoopConfig", "Optimization", "epoch_batches", "progress"]

#: BatchNorm in a trained backbone: batch statistics ("train") or running statistics ("frozen").
BN_MODES = ("train", "frozen")


@dataclass(kw_only=True)
class LoopConfig:
    """The settings every trainer takes; the one home of their defaults."""

    amp: str = "auto"  # runtime.AMP_MODES
    strategy: str = "gather"  # the engine strategy the backbone runs with
    bn: str = "train"  # BN_MODES: batch statistics (official) | frozen
    distill: float = 0.0  # weight of a frozen teacher's soft targets (0: plain CE)
    temperature: float = 4.0  # their temperature (training.losses)
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.bn not in BN_MODES:
            raise ValueError(f"bn: expected one of {', '.join(BN_MODES)}, got {self.bn!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill: expected a weight in [0, 1], got {self.distill}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {self.temperature}")
        amp_dtype(torch.device("cpu"), self.amp)  # validates the mode


class Optimization:
    """An optimiser and its gradient scaler (enabled for float16 only): :meth:`step` is one
    optimisation step on a loss."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, amp: str) -> None:
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device, amp) == torch.float16)

    def step(self, loss: Tensor) -> None:
        """Zero the gradients, backward the (scaled) scalar ``loss``, step, update the scale."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def epoch_batches(
    loader: DataLoader, epoch: int, start: int = 0, limit: int | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches of ``epoch`` (its order a function of the loader's seed and ``epoch``), from
    batch ``start`` on, at most ``limit`` of them: ``(x [B,3,H,W], y [B])``."""
    set_loader_epoch(loader, epoch, start)
    n = len(loader) if limit is None else min(limit, len(loader))  # len: the batches from start on
    it = iter(loader)
    for _ in range(n):  # fetched one by one: none is loaded beyond the limit
        yield next(it)


class _Lines:
    """Progress as plain lines, one every ``every`` of the total (for logs: no carriage returns)."""

    def __init__(self, total: int, desc: str, initial: int, every: float) -> None:
        self.total, self.desc, self.n = max(1, total), desc, initial
        self.step = max(1, round(every * self.total))
        self.t0, self.postfix = time.time(), ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.step == 0 or self.n == self.total:
            print(
                f"{self.desc}: {self.n}/{self.total} ({100 * self.n / self.total:.0f}%, "
                f"{time.time() - self.t0:.0f} s){self.postfix}",
                file=sys.stderr,
                flush=True,
            )

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in kw.items())

    def close(self) -> None:
        pass


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0, every: float = 0.1) -> Any:
    """A progress display with ``update(n)``, ``set_postfix(**kw)`` and ``close()``: a tqdm bar
    when stderr is a terminal, else a plain line every ``every`` of ``total`` (a log file gets a
    few lines, not a carriage return per step); nothing when not ``enabled``."""
    if not enabled:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)
    return _Lines(total, desc, initial, every)
