"""Argument types and option groups shared by the commands. Options that a config dataclass
defaults (:class:`blockdrop.training.config.TrainConfig`) default to None here, so that the dataclass is the
one place where a default lives."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import torch

from blockdrop.engine import STRATEGIES
from blockdrop.runtime import AMP_MODES
from blockdrop.training.config import BACKBONE_PASSES, TrainConfig

__all__ = [
    "positive_int",
    "nonneg_int",
    "pos_float",
    "nonneg_float",
    "alpha",
    "fraction",
    "share",
    "thresholds",
    "add_runtime",
    "add_data",
    "add_training",
    "setup_threads",
    "STRATEGIES",
    "AMP_MODES",
]


def _number(cast: type, lowest: float, strict: bool, what: str) -> Callable[[str], Any]:
    """An argparse type: ``cast(s)``, finite, and > lowest (strict) or >= lowest."""

    def parse(s: str) -> Any:
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        ok = v > lowest if strict else v >= lowest  # False for NaN
        if not ok or math.isinf(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


positive_int = _number(int, 1, False, "a positive integer")
nonneg_int = _number(int, 0, False, "an integer >= 0")
pos_float = _number(float, 0, True, "a positive number")
nonneg_float = _number(float, 0, False, "a number >= 0")


def alpha(s: str) -> float:
    v = pos_float(s)
    if not 0.5 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"alpha must be in [0.5, 1], got {s!r}")
    return v


def fraction(s: str) -> float:
    v = nonneg_float(s)
    if v > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {s!r}")
    return v


def share(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = math.nan
    if not 0 < v <= 1:  # False for NaN
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], got {s!r}")
    return v


def thresholds(s: str) -> list[float]:
    """``"0.3,0.4,0.5"`` -> ``[0.3, 0.4, 0.5]``, each in (0, 1)."""
    out = []
    for part in s.split(","):
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers in (0, 1), got {s!r}"
            ) from None
        if not 0 < v < 1:
            raise argparse.ArgumentTypeError(f"thresholds must lie in (0, 1), got {part!r}")
        out.append(v)
    return out


def add_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    g.add_argument(
        "--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")


def setup_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def add_data(p: argparse.ArgumentParser, val: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data", required=True, metavar="PATH", help="ImageFolder root, CIFAR folder or .tar.gz archive"
    )
    if val:
        g.add_argument("--val-data", metavar="PATH", help="held-out data evaluated after each epoch")
    g.add_argument("--cache-dir", metavar="DIR", help="where large archives are extracted")
    g.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader workers (default 0)")


def add_training(p: argparse.ArgumentParser, stage: str) -> None:
    """Training options. Every default is :class:`~blockdrop.training.config.TrainConfig`'s (the official
    BlockDrop settings): options left unset stay None and the config resolves them."""
    cl = stage == "curriculum"
    d = TrainConfig(stage=stage)  # the defaults, for the help texts only
    g = p.add_argument_group("training (defaults: the official BlockDrop settings)")
    g.add_argument("--out", required=True, metavar="DIR", help="checkpoints and metrics.csv go here")
    g.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help=(
            f"default: every block learned, then --extra-epochs more (ceil(K / cl_step) + {d.extra_epochs})"
        )
        if cl
        else "default: 10",
    )
    if cl:
        g.add_argument(
            "--extra-epochs",
            type=nonneg_int,
            default=None,
            help=f"epochs once every block is learned (default {d.extra_epochs})",
        )
    g.add_argument(
        "--steps-per-epoch",
        type=positive_int,
        default=None,
        help="cap on batches per epoch (default: whole dataset)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"per process (default {d.batch_size}, the official setting)",
    )
    g.add_argument("--lr", type=pos_float, default=None, help=f"Adam learning rate (default {d.lr:g})")
    if not cl:
        g.add_argument(
            "--lr-decay-at",
            type=fraction,
            default=None,
            help=f"lr x{d.lr_decay:g} from this fraction of the steps on (default {d.lr_decay_at:g})",
        )
    g.add_argument("--weight-decay", type=nonneg_float, default=None, help=f"(default {d.weight_decay:g})")
    g.add_argument(
        "--gamma",
        type=nonneg_float,
        default=None,
        help=f"penalty for a wrong prediction (default {d.gamma:g})",
    )
    g.add_argument("--alpha", type=alpha, default=None, help=f"exploration bound (default {d.alpha:g})")
    g.add_argument("--beta", type=nonneg_float, default=None, help=f"entropy bonus (default {d.beta:g})")
    _add_stage_options(g, d, cl)
    _add_run_options(g, d)


def _add_stage_options(g: Any, d: TrainConfig, cl: bool) -> None:
    """The options of one stage only: the curriculum's pace, or the joint finetuning's backbone."""
    if cl:
        g.add_argument(
            "--cl-step",
            type=positive_int,
            default=None,
            help=f"blocks added to the learned set per epoch (default {d.cl_step})",
        )
    else:
        g.add_argument(
            "--bn",
            choices=("train", "frozen"),
            default=None,
            help=f"BatchNorm in the backbone: batch statistics (train, official) or "
            f"frozen running statistics (default {d.bn})",
        )
        g.add_argument(
            "--baseline-eval",
            action="store_true",
            default=None,
            help="self-critical baseline with the backbone in eval mode (official: train mode)",
        )
        g.add_argument(
            "--distill",
            type=fraction,
            default=None,
            help=f"weight of the starting backbone's soft targets (default {d.distill:g}: plain CE)",
        )
        g.add_argument(
            "--backbone-on",
            choices=BACKBONE_PASSES,
            default=None,
            help=f"the backbone learns on the sampled sub-network (official) or the "
            f"thresholded one that evaluation runs (default {d.backbone_on})",
        )


def _add_run_options(g: Any, d: TrainConfig) -> None:
    """How a training run executes and checkpoints."""
    g.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=None,
        help=f"engine strategy for the backbone (default {d.strategy})",
    )
    g.add_argument(
        "--amp",
        choices=AMP_MODES,
        default=None,
        help="mixed precision: auto (fp16 + loss scaling on CUDA, off on CPU), off, "
        f"bf16 (no loss scaling; fast on CPUs with AVX512-BF16/AMX), fp16 (default {d.amp})",
    )
    g.add_argument("--channels-last", action="store_true", default=None, help="channels_last memory format")
    g.add_argument("--resume", action="store_true", help="continue from OUT/last.safetensors")
    g.add_argument(
        "--overwrite", action="store_true", help="start afresh even if OUT holds another run's checkpoint"
    )
    g.add_argument(
        "--ckpt-every",
        type=nonneg_int,
        default=None,
        help="also checkpoint every N steps (default: end of each epoch)",
    )
    g.add_argument("--log-every", type=positive_int, default=None, help=f"(default {d.log_every})")
