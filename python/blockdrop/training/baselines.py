"""Fixed-policy baselines: which blocks each image runs when no policy network decides.

* :func:`full_policy` -- every block (the full network);
* :func:`drop_path_policy` -- stochastic depth: block ``k`` kept with probability ``keep[k]``;
* :func:`first_k_policy` -- FirstK: the first ``k`` blocks for every image;
* :func:`random_k_policy` -- RandomK: ``k`` blocks drawn uniformly for each image;
* :func:`static_policy` -- StaticK (layer pruning): the same blocks dropped for every image
  (chosen by :func:`blockdrop.training.drop_costs.greedy_drop_order`).

A sampler is ``sampler(n, generator) -> Tensor[n, K]`` of 0/1 (float32, CPU). A fractional ``k``
is met on average: each image takes ``floor(k)`` or ``floor(k) + 1`` blocks.
:class:`BaselinePolicy` wraps one as a module with a policy network's interface
(``x [N,3,H,W] -> probs [N, K]``, here 0/1), so that a baseline is a ``BlockDropNet`` like any
other and is evaluated and checkpointed the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from blockdrop.models.registry import register_policy_kind

__all__ = [
    "PolicySampler",
    "BaselinePolicy",
    "full_policy",
    "drop_path_policy",
    "first_k_policy",
    "random_k_policy",
    "static_policy",
    "BASELINE_KINDS",
]

PolicySampler = Callable[[int, torch.Generator], Tensor]


def _k_per_image(n: int, k: float, num_blocks: int, g: torch.Generator) -> Tensor:
    """``[n]`` int64 block counts with mean ``k``: ``floor(k)`` plus a Bernoulli(frac(k))."""
    if not 0 <= k <= num_blocks:
        raise ValueError(f"k: expected a number of blocks in [0, {num_blocks}], got {k}")
    base = math.floor(k)
    extra = (torch.rand(n, generator=g) < (k - base)).long()
    return (base + extra).clamp(max=num_blocks)


def full_policy(num_blocks: int) -> PolicySampler:
    """Every block for every image: ``[n, K]`` of ones."""
    return lambda n, g: torch.ones(n, num_blocks)


def drop_path_policy(keep: Tensor | float, num_blocks: int) -> PolicySampler:
    """Stochastic depth: block ``k`` of each image kept with probability ``keep[k]`` (a float for
    all blocks, or ``[K]``)."""
    p = torch.as_tensor(keep, dtype=torch.float32).expand(num_blocks).clone()
    if bool(((p < 0) | (p > 1)).any()):
        raise ValueError(f"keep: expected probabilities in [0, 1], got {p.tolist()}")
    return lambda n, g: (torch.rand(n, num_blocks, generator=g) < p).float()


def first_k_policy(k: float, num_blocks: int) -> PolicySampler:
    """FirstK: the first ``k`` blocks (in network order) for every image."""

    def sample(n: int, g: torch.Generator) -> Tensor:
        kn = _k_per_image(n, k, num_blocks, g)
        return (torch.arange(num_blocks).unsqueeze(0) < kn.unsqueeze(1)).float()

    return sample


def random_k_policy(k: float, num_blocks: int) -> PolicySampler:
    """RandomK: ``k`` distinct blocks drawn uniformly at random for each image."""

    def sample(n: int, g: torch.Generator) -> Tensor:
        kn = _k_per_image(n, k, num_blocks, g)
        rank = torch.rand(n, num_blocks, generator=g).argsort(1).argsort(1)  # a random rank per block
        return (rank < kn.unsqueeze(1)).float()

    return sample


def static_policy(dropped: list[int], num_blocks: int) -> PolicySampler:
    """StaticK: every block but ``dropped`` (indices) for every image."""
    if any(not 0 <= int(d) < num_blocks for d in dropped):
        raise ValueError(f"dropped: expected block indices in [0, {num_blocks}), got {list(dropped)}")
    keep = torch.ones(num_blocks)
    keep[[int(d) for d in dropped]] = 0.0
    return lambda n, g: keep.expand(n, num_blocks).clone()


_SAMPLERS = {"full": lambda k, n: full_policy(n), "first_k": first_k_policy, "random_k": random_k_policy}
#: The baseline kinds a :class:`BaselinePolicy` (and its checkpoint spec) can hold.
BASELINE_KINDS = (*_SAMPLERS, "static_k")


class BaselinePolicy(nn.Module):
    """A fixed policy as a policy network: ``forward(x [N,...]) -> [N, K]`` float 0/1 on ``x``'s
    device (``kind`` "full", "first_k", "random_k" or "static_k" with its ``dropped`` blocks;
    random draws from its own generator, seeded with ``seed``, so that a freshly built one replays
    the same sequence)."""

    def __init__(
        self,
        kind: str,
        num_blocks: int,
        k: float | None = None,
        seed: int = 0,
        dropped: list[int] | None = None,
    ) -> None:
        super().__init__()
        if kind not in BASELINE_KINDS:
            raise ValueError(f"kind: expected one of {BASELINE_KINDS}, got {kind!r}")
        if kind == "static_k" and dropped is None:
            raise ValueError("dropped: required for a static_k baseline")
        if kind in ("first_k", "random_k") and k is None:
            raise ValueError(f"k: required for a {kind} baseline")
        self.kind, self.num_blocks, self.seed = kind, int(num_blocks), int(seed)
        self.dropped = [int(d) for d in dropped] if dropped is not None else None
        if self.dropped is not None:
            self.k = float(self.num_blocks - len(set(self.dropped)))
            self._sample = static_policy(self.dropped, self.num_blocks)
        else:
            self.k = float(num_blocks if k is None else k)
            self._sample = _SAMPLERS[kind](self.k, self.num_blocks)
        self._gen = torch.Generator().manual_seed(self.seed)

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, ...] -> [N, K]`` of 0/1 (float32)."""
        return self._sample(int(x.shape[0]), self._gen).to(x.device)

    def reset(self) -> None:
        """Reseed the generator: the next draws are those of a freshly built policy."""
        self._gen.manual_seed(self.seed)

    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments (``kind`` is one of :data:`BASELINE_KINDS`)."""
        spec: dict[str, Any] = {
            "kind": self.kind,
            "num_blocks": self.num_blocks,
            "k": self.k,
            "seed": self.seed,
        }
        if self.dropped is not None:
            spec["dropped"] = list(self.dropped)
        return spec

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, num_blocks={self.num_blocks}, k={self.k}"


for _kind in BASELINE_KINDS:
    register_policy_kind(_kind, lambda spec: BaselinePolicy(**spec))
