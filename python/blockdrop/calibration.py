"""Capacities for :class:`~blockdrop.BlockDropNet`'s capacity mode: per-block shares calibrated on a
validation loader, or fitted to a FLOP budget, and the counts they give each batch size.

* **Calibrated shares** (:func:`calibrate`): share ``k`` = the fraction of the validation images
  whose thresholded policy (``p_k >= threshold``, the net's threshold mode) keeps block ``k``. At
  any batch size capacity mode then runs, per block, as many images as threshold mode did on
  average there (:func:`blockdrop.capacity.counts_from_shares`).
* **A FLOP budget** (:func:`with_budget`): ``budget`` is a share of the full network's FLOPs per
  image (every block executed; the denominator of ``blockdrop eval``'s ideal speedup). The net's
  FLOPs -- stem, head, every shortcut, the policy network, and each executed residual branch --
  stay within ``budget * full`` for **every batch** (up to a relative 1e-9): the shares are the
  calibrated profile (uniform without one) scaled by a common factor and capped at 1, the largest
  that fits (blocks the profile never keeps get a common share once all others are at 1), and each
  batch's counts are their floors plus one more, by largest remainder, for
  every block that still fits (:func:`budget_counts`).

A :class:`CapacitySpec` is what a checkpoint stores (``to_json``/``from_json``). Counts are pure
Python on host numbers, so a compiled graph holds them as constants (one graph per batch size).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from .capacity import counts_from_shares

if TYPE_CHECKING:  # blockdrop_net imports this module
    from .blockdrop_net import BlockDropNet

__all__ = ["CapacitySpec", "budget_counts", "budget_shares", "calibrate", "with_budget"]


@dataclass(frozen=True)
class CapacitySpec:
    """Per-block capacity of a BlockDropNet in capacity mode.

    Attributes:
        shares: ``K`` floats in ``[0, 1]``: block ``k`` runs on ``~shares[k] * N`` images.
        budget: the FLOP budget (a share of the full network's FLOPs, in ``(0, 1]``) the counts
            respect for every batch, or None.
        block_flops: with a budget, the ``K`` residual branches' FLOPs per image.
        allowance: with a budget, the residual FLOPs allowed per image
            (``budget * full - stem/head/shortcuts/policy network``).
        info: how the shares were obtained (JSON-able; e.g. images, threshold, input size).
    """

    shares: tuple[float, ...]
    budget: float | None = None
    block_flops: tuple[int, ...] | None = None
    allowance: float | None = None
    info: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        try:
            shares = tuple(float(s) for s in self.shares)
        except (TypeError, ValueError):
            raise ValueError(f"capacity: expected per-block shares in [0, 1], got {self.shares!r}") from None
        if not shares or not all(0.0 <= s <= 1.0 for s in shares):
            raise ValueError(f"capacity: expected one share in [0, 1] per block, got {list(shares)}")
        object.__setattr__(self, "shares", shares)
        if self.budget is not None:
            check_budget(self.budget)
            if self.block_flops is None or self.allowance is None or len(self.block_flops) != len(shares):
                raise ValueError(
                    "block_flops: a budget needs the K blocks' FLOPs and the allowance (use with_budget)"
                )
            object.__setattr__(self, "block_flops", tuple(int(f) for f in self.block_flops))

    @property
    def num_blocks(self) -> int:
        """K."""
        return len(self.shares)

    def counts(self, n: int) -> tuple[int, ...]:
        """Per-block counts for a batch of ``n`` (``K`` ints in ``[0, n]``)."""
        if self.budget is None:
            return counts_from_shares(self.shares, n)
        assert self.block_flops is not None and self.allowance is not None
        return budget_counts(self.shares, n, self.block_flops, self.allowance)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (:meth:`from_json` inverts it)."""
        d = asdict(self)
        d["shares"], d["block_flops"] = (
            list(self.shares),
            (list(self.block_flops) if self.block_flops is not None else None),
        )
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CapacitySpec:
        """The spec :meth:`to_json` wrote."""
        bf = d.get("block_flops")
        return cls(
            tuple(d["shares"]),
            d.get("budget"),
            tuple(bf) if bf is not None else None,
            d.get("allowance"),
            d.get("info"),
        )


def check_budget(budget: Any) -> float:
    """``budget`` as a float in ``(0, 1]``, else ValueError naming ``budget``."""
    try:
        b = float(budget)
    except (TypeError, ValueError):
        raise ValueError(
            f"budget: expected a share of the full network's FLOPs in (0, 1], got {budget!r}"
        ) from None
    if not 0.0 < b <= 1.0:  # False for NaN
        raise ValueError(f"budget: expected a share of the full network's FLOPs in (0, 1], got {budget!r}")
    return b


def budget_counts(
    shares: Sequence[float], n: int, block_flops: Sequence[int], allowance: float
) -> tuple[int, ...]:
    """Counts for a batch of ``n`` whose residual FLOPs ``sum(c_k * block_flops[k])`` stay within
    ``allowance * n``: ``floor(shares[k] * n)`` (within the allowance when ``sum(shares[k] *
    block_flops[k]) <= allowance``), then one more for each block, by largest remainder (ties: the
    lower index), that still fits, up to ``round(sum(shares) * n)`` in all. Returns ``K`` ints."""
    exact = [float(s) * n for s in shares]
    counts = [min(n, math.floor(e)) for e in exact]
    cap = allowance * n * (1 + 1e-12)
    spend = sum(c * f for c, f in zip(counts, block_flops))
    room = math.floor(sum(exact) + 0.5) - sum(counts)
    for k in sorted(range(len(exact)), key=lambda k: (-(exact[k] - counts[k]), k)):
        if room <= 0 or exact[k] - counts[k] <= 0:
            break
        if spend + block_flops[k] <= cap:
            counts[k] += 1
            spend += block_flops[k]
            room -= 1
    return tuple(counts)


def _largest_fitting(shares_at: Any, block_flops: Sequence[int], allowance: float, hi: float) -> float:
    """The largest ``t`` in ``[0, hi]`` with ``sum(shares_at(t)[k] * block_flops[k]) <= allowance``
    (``shares_at`` non-decreasing in ``t``; bisection)."""

    def cost(t: float) -> float:
        return sum(s * f for s, f in zip(shares_at(t), block_flops))

    if cost(hi) <= allowance:
        return hi
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) <= allowance else (lo, mid)
    return lo


def budget_shares(
    profile: Sequence[float] | None, block_flops: Sequence[int], allowance: float
) -> tuple[float, ...]:
    """Shares whose residual FLOPs per image ``sum(share_k * block_flops[k])`` stay within
    ``allowance``: ``min(1, lam * profile[k])`` with the largest such ``lam``; when every block the
    profile keeps is at 1 and FLOPs are left, the other blocks get the largest common share that
    fits. ``profile``: ``K`` non-negative weights (calibrated keep rates), or None / all zeros for
    uniform shares."""
    k = len(block_flops)
    p = [float(v) for v in profile] if profile is not None and any(profile) else [1.0] * k
    scaled = lambda lam: [min(1.0, lam * w) for w in p]  # noqa: E731
    base = scaled(_largest_fitting(scaled, block_flops, allowance, 1.0 / min(w for w in p if w > 0)))
    if all(w > 0 for w in p) or any(b < 1.0 for b, w in zip(base, p) if w > 0):
        return tuple(base)
    rest = lambda mu: [b if w > 0 else mu for b, w in zip(base, p)]  # noqa: E731
    return tuple(rest(_largest_fitting(rest, block_flops, allowance, 1.0)))


def with_budget(
    net: BlockDropNet,
    budget: float,
    profile: Sequence[float] | None = None,
    input_size: tuple[int, int, int] | None = None,
    info: dict[str, Any] | None = None,
) -> CapacitySpec:
    """A :class:`CapacitySpec` for ``net`` (a BlockDropNet) within ``budget`` of the full network's
    FLOPs per image (module docstring), shaped like ``profile`` (``K`` keep rates; None: uniform).

    ``input_size``: ``(C, H, W)`` the FLOPs are counted at (default the backbone's own). Raises
    ValueError naming ``budget`` when it is outside ``(0, 1]`` or below what the net spends with
    no block executed (stem, head, shortcuts, policy network)."""
    from .evaluation.accounting import block_flops, flops

    b = check_budget(budget)
    size = cast("tuple[int, int, int]", tuple(input_size or net.backbone.default_input_size))
    parts = block_flops(net.backbone, size)
    none = torch.zeros(1, net.num_blocks)
    fixed = float(flops(net.backbone, none, net.policy_net, input_size=size)[0])
    allowance = b * parts.full - fixed
    if allowance < 0:
        raise ValueError(
            f"budget: expected at least {fixed / parts.full:.4f} (the stem, head, "
            f"shortcuts and policy network alone), got {budget!r}"
        )
    shares = budget_shares(profile, parts.residual, allowance)
    uniform = profile is None or not any(profile) or len(set(profile)) == 1
    return CapacitySpec(
        shares,
        b,
        parts.residual,
        allowance,
        {
            **(info or {}),
            "input_size": list(size),
            "profile_shares": None if uniform or profile is None else [float(v) for v in profile],
        },
    )


@torch.inference_mode()
def calibrate(
    net: BlockDropNet, loader: Iterable[Any], device: torch.device | str = "cpu", amp: str | bool = "off"
) -> CapacitySpec:
    """Per-block shares = the keep rates of ``net``'s threshold policy (``probs >= net.threshold``)
    over ``loader`` (batches ``x [B, C, H, W]`` or ``(x, y)``). ``net`` is run in eval mode (its
    mode is restored). Raises ValueError when the loader is empty."""
    from .runtime import amp_autocast
    from .training.rl import threshold_policy

    was = net.training
    net.eval()
    kept: Tensor | None = None
    n, size = 0, None
    try:
        for batch in loader:
            x = (batch[0] if isinstance(batch, (tuple, list)) else batch).to(device)
            with amp_autocast(torch.device(device), amp):
                p = threshold_policy(net.probs(x), net.threshold)
            kept = p.sum(0) if kept is None else kept + p.sum(0)  # on the device: one copy at the end
            n, size = n + x.shape[0], list(x.shape[1:])
    finally:
        net.train(was)
    if kept is None or n == 0:
        raise ValueError("loader: expected at least one calibration image, got none")
    shares = (kept.double().cpu() / n).tolist()
    return CapacitySpec(
        tuple(shares),
        info={
            "images": n,
            "threshold": float(net.threshold),
            "input_size": size,
            "mean_blocks": float(sum(shares)),
        },
    )
