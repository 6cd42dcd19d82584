"""The settings of the two trainers, each the one home of its defaults.

* :class:`TrainConfig` -- :class:`~blockdrop.training.trainer.Trainer`: the curriculum
  (``stage="curriculum"``) and the joint finetuning (``stage="finetune"``). Every default but the
  run's length is the official BlockDrop setting (Tushar-N/blockdrop ``cl_training.py`` /
  ``finetune.py``); a field left ``None`` is the stage's official value, resolved in
  ``__post_init__``. The length defaults to a few epochs (the official runs are 5000 and 2000).
* :class:`SupervisedConfig` -- :func:`~blockdrop.training.supervised.train_supervised`: a backbone
  under a fixed policy sampler (stochastic depth, the full network, FirstK, RandomK, StaticK).

Both extend :class:`LoopConfig`, the settings they share (``amp``, ``strategy``, ``bn``,
``distill``, ``temperature``, ``seed``, ``progress``).

The length of a :class:`TrainConfig` run, resolved once the trainer knows the backbone's ``K``
blocks and the ``B`` batches of an epoch (:func:`resolve_schedule`): ``steps`` optimisation steps
when given (the fewest epochs of at most ``B`` batches, split evenly: :func:`split_steps`); else
``epochs`` of ``steps_per_epoch`` (default ``B``) batches, ``epochs`` defaulting to
``ceil(K / cl_step) + extra_epochs`` for the curriculum (every block learned, then
``extra_epochs`` more) and 10 for finetuning.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from blockdrop.training.loop import LoopConfig
from blockdrop.training.rl import ALPHA

__all__ = [
    "BACKBONE_PASSES",
    "STAGES",
    "LoopConfig",
    "SupervisedConfig",
    "TrainConfig",
    "resolve_schedule",
    "split_steps",
]

#: The stages of :class:`TrainConfig`.
STAGES = ("curriculum", "finetune")
#: The passes the backbone can learn on in finetuning (``TrainConfig.backbone_on``): the sampled
#: sub-network (official) or the thresholded ("greedy") one that evaluation executes.
BACKBONE_PASSES = ("sample", "greedy")
#: Supervised optimisers: SGD (momentum 0.9, Nesterov) or Adam.
OPTIMIZERS = ("sgd", "adam")


@dataclass(kw_only=True)
class TrainConfig(LoopConfig):
    """One stage of BlockDrop training (see the module docstring for the schedule)."""

    stage: str = "curriculum"  # STAGES
    epochs: int | None = None  # None: ceil(K / cl_step) + extra_epochs (curriculum), 10
    extra_epochs: int = 5  # curriculum epochs once every block is learned
    steps: int | None = None  # total optimisation steps (instead of epochs)
    steps_per_epoch: int | None = None  # cap on batches per epoch (None: the whole dataset)
    batch_size: int | None = None  # per process: 2048 curriculum (official CIFAR), 256 finetune
    lr: float | None = None  # Adam: 1e-3 curriculum, 1e-4 finetune
    lr_decay_at: float | None = None  # lr x lr_decay from this share of the steps on:
    lr_decay: float = 0.1  #   never in the curriculum, 0.8 (epoch 1600/2000) finetune
    weight_decay: float = 0.0
    gamma: float | None = None  # penalty for a wrong prediction: 1 curriculum, 5 finetune
    alpha: float = ALPHA  # exploration bound
    beta: float | None = None  # entropy bonus: 0.1 curriculum, 0 finetune
    cl_step: int | None = 1  # blocks freed per curriculum epoch (None: all at once)
    backbone_on: str = "sample"  # BACKBONE_PASSES (finetune)
    baseline_eval: bool = False  # self-critical pass in eval mode (official: train mode)
    channels_last: bool = False  # models and batches in channels_last memory format
    workers: int = 0  # DataLoader workers
    ckpt_every: int = 0  # also checkpoint every N steps (0: end of epoch only)
    log_every: int = 10  # steps per metrics row
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage not in STAGES:
            raise ValueError(f"stage: expected one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.backbone_on not in BACKBONE_PASSES:
            raise ValueError(
                f"backbone_on: expected {' or '.join(map(repr, BACKBONE_PASSES))}, got {self.backbone_on!r}"
            )
        cl = self.stage == "curriculum"
        if self.batch_size is None:
            self.batch_size = 2048 if cl else 256
        if self.lr is None:
            self.lr = 1e-3 if cl else 1e-4
        if self.gamma is None:
            self.gamma = 1.0 if cl else 5.0
        if self.beta is None:
            self.beta = 0.1 if cl else 0.0
        if self.lr_decay_at is None and not cl:
            self.lr_decay_at = 0.8
        for name in ("epochs", "steps", "steps_per_epoch", "cl_step"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}: expected >= 1 or None, got {v}")
        if self.batch_size < 1 or self.extra_epochs < 0:
            raise ValueError(
                f"batch_size (>= 1) and extra_epochs (>= 0): got {self.batch_size}, {self.extra_epochs}"
            )
        if self.steps is not None and (self.epochs is not None or self.steps_per_epoch is not None):
            raise ValueError("steps: give either steps or epochs / steps_per_epoch, not both")
        if not 0.5 <= self.alpha <= 1.0:
            raise ValueError(f"alpha: expected an exploration bound in [0.5, 1], got {self.alpha}")
        if self.distill and cl:
            raise ValueError("distill: applies to the finetune stage (the curriculum trains no backbone)")
        if self.lr_decay_at is not None and not 0.0 <= self.lr_decay_at <= 1.0:
            raise ValueError(f"lr_decay_at: expected a share of the run in [0, 1], got {self.lr_decay_at}")

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of optimisation step ``step`` (0-based) of ``total_steps``: a single
        step decay, as the official ``LrScheduler`` (``lr * 0.1 ** (epoch // 1600)``)."""
        base = float(self.lr or 0.0)
        if self.lr_decay_at is not None and step >= self.lr_decay_at * total_steps:
            return base * self.lr_decay
        return base


@dataclass(kw_only=True)
class SupervisedConfig(LoopConfig):
    """A backbone trained under a fixed policy sampler: ``steps`` batches, a cosine learning-rate
    decay to 0. With ``inplace`` the teacher is the network's own full path, trained by
    cross-entropy in the same step; otherwise a frozen teacher (``distill`` > 0)."""

    steps: int
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"  # OPTIMIZERS
    weight_decay: float = 5e-4
    inplace: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size: expected >= 1, got {self.steps}, {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")


def split_steps(steps: int, batches_per_epoch: int) -> tuple[int, int]:
    """``(epochs, steps per epoch)`` that make ``steps`` optimisation steps when an epoch holds at
    most ``batches_per_epoch`` batches: the fewest epochs, split evenly (the total is ``steps``
    rounded up to a multiple of the epochs, at most ``epochs - 1`` more)."""
    if steps < 1 or batches_per_epoch < 1:
        raise ValueError(f"steps ({steps}) and batches per epoch ({batches_per_epoch}) must be >= 1")
    epochs = math.ceil(steps / batches_per_epoch)
    return epochs, math.ceil(steps / epochs)


def resolve_schedule(cfg: TrainConfig, num_blocks: int, batches_per_epoch: int) -> TrainConfig:
    """``cfg`` with ``epochs``, ``steps_per_epoch`` and ``cl_step`` made concrete for a backbone
    of ``num_blocks`` blocks and ``batches_per_epoch`` batches per epoch (module docstring)."""
    cl_step = cfg.cl_step or num_blocks
    if cfg.steps is not None:
        n_epochs, per_epoch = split_steps(cfg.steps, batches_per_epoch)
        return dataclasses.replace(
            cfg, steps=None, epochs=n_epochs, steps_per_epoch=per_epoch, cl_step=cl_step
        )
    epochs = cfg.epochs
    if epochs is None:
        epochs = math.ceil(num_blocks / cl_step) + cfg.extra_epochs if cfg.stage == "curriculum" else 10
    return dataclasses.replace(cfg, epochs=epochs, cl_step=cl_step)
