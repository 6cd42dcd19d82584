"""How much an accuracy, or a difference of two accuracies, can be trusted.

Two models evaluated on the *same* images are compared pairwise: only the images on which exactly
one of them is right (the discordant pairs) carry information about the difference, so the
paired standard error is far smaller than the two unpaired errors combined, and the exact
McNemar test (a two-sided binomial test on the discordant pairs) says whether the difference could
be chance.

    acc, se = accuracy_se(correct)                    # correct: bool [N]
    d = paired_difference(correct_a, correct_b)       # a - b, in [0, 1] units
    print(d.describe())                               # "-3.00 +- 0.74 points (95% CI ...)"

The interval is the normal approximation: it needs many discordant images (tens or more); with a
handful, trust the exact McNemar p-value, which can exceed 0.05 while the interval excludes 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["accuracy_se", "paired_difference", "PairedDifference", "mcnemar_p"]

_Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def _as_bool(name: str, c: Tensor) -> Tensor:
    if not isinstance(c, Tensor) or c.dim() != 1:
        raise ValueError(
            f"{name}: expected a 1-D tensor of per-image correctness, got "
            f"{type(c).__name__}{'' if not isinstance(c, Tensor) else list(c.shape)}"
        )
    if c.dtype != torch.bool:
        if c.is_floating_point() or not bool(((c == 0) | (c == 1)).all()):
            raise ValueError(f"{name}: expected bool (or 0/1 integer) values, got dtype {c.dtype}")
        c = c.bool()
    if c.numel() == 0:
        raise ValueError(f"{name}: expected at least one image, got none")
    return c.cpu()


def accuracy_se(correct: Tensor) -> tuple[float, float]:
    """``(accuracy, its standard error sqrt(p (1 - p) / N))`` of per-image correctness
    ``correct`` (bool [N])."""
    c = _as_bool("correct", correct)
    p = float(c.double().mean())
    return p, math.sqrt(p * (1.0 - p) / c.numel())


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value: the probability, were both models equally accurate, of
    discordant counts at least this unbalanced (binomial, n = a_only + b_only, p = 1/2)."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"mcnemar_p: expected non-negative counts, got {a_only}, {b_only}")
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0 or a_only == b_only:
        return 1.0
    # P(X <= k) for X ~ Bin(n, 1/2), in exact integers, doubled (the distribution is symmetric);
    # C(n, i + 1) = C(n, i) (n - i) / (i + 1) keeps it linear in k
    term = tail = 1
    for i in range(k):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, (2 * tail) / (2**n))  # exact integers, one rounding


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` on the same ``n`` images (accuracies in [0, 1] units)."""

    n: int
    diff: float  # accuracy(a) - accuracy(b)
    se: float  # paired standard error of diff
    ci95: tuple[float, float]
    a_only: int  # images a gets right and b wrong
    b_only: int  # images b gets right and a wrong
    p_value: float  # exact McNemar, two-sided

    def describe(self, a: str = "a", b: str = "b") -> str:
        """One line, in points."""
        lo, hi = self.ci95
        return (
            f"{a} - {b}: {100 * self.diff:+.2f} +- {100 * self.se:.2f} points "
            f"(95% CI {100 * lo:+.2f} .. {100 * hi:+.2f}; {self.a_only} images only {a} gets "
            f"right, {self.b_only} only {b}; McNemar p = {self.p_value:.2g}; {self.n} images)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        d = asdict(self)
        d["ci95"] = list(self.ci95)
        return d


def paired_difference(correct_a: Tensor, correct_b: Tensor) -> PairedDifference:
    """``accuracy(a) - accuracy(b)`` of two models' per-image correctness on the same images
    (bool [N] each, image i the same in both), with the paired standard error
    ``std(a_i - b_i) / sqrt(N)`` (sample std, N - 1; NaN for one image), a normal 95% interval
    and the exact McNemar p-value."""
    a, b = _as_bool("correct_a", correct_a), _as_bool("correct_b", correct_b)
    if a.shape != b.shape:
        raise ValueError(f"correct_b: expected the same images as correct_a ({a.numel()}), got {b.numel()}")
    n = a.numel()
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    diff = (a_only - b_only) / n
    # sum of squares of d_i in {-1, 0, 1} is the discordant count
    var = ((a_only + b_only) - n * diff * diff) / (n - 1) if n > 1 else math.nan  # one image: unknown
    se = math.sqrt(max(var, 0.0) / n) if n > 1 else math.nan
    return PairedDifference(
        n, diff, se, (diff - _Z95 * se, diff + _Z95 * se), a_only, b_only, mcnemar_p(a_only, b_only)
    )
