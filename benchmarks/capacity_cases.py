"""Capacity-mode benchmark cases: CIFAR ResNet-110/56 at batch 64 and 256, iid keep 0.31 and 0.75,
every variant run on the whole batch and in chunks of 32/64/128 images.

Variants (``VARIANTS``):

| variant | what |
|---|---|
| `full` | the plain network, eager (`model(x)`) |
| `full_compiled` | the plain network, `torch.compile` (inductor, `freezing`: BN folded into the convs) |
| `masked` | `dynamic_forward(..., "masked")`, the official semantics |
| `auto` | `dynamic_forward(..., "auto")` under the iid policy |
| `capacity` | `capacity_forward` eager, shares = the policy's per-block keep rates |
| `capacity_compiled` | the same, `torch.compile(fullgraph=True)` (inductor, `freezing`) |

A *chunk* ``c`` runs the batch as ``N / c`` consecutive calls on ``c`` images (the policy's rows
for ``auto``/``masked``, counts from the shares at ``c`` for capacity), so each variant can be
compared at its fastest size. Ideal = FLOPs(full) / FLOPs(executed), per variant and chunk
(capacity's counts round the shares; ``auto``'s policy is the same at every chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from blockdrop import capacity_forward, dynamic_forward
from blockdrop.capacity import capacity_policy, counts_from_shares
from blockdrop.evaluation.accounting import block_flops
from cases import build_model, make_input, make_policy, rel_err

VARIANTS = ("full", "full_compiled", "masked", "auto", "capacity", "capacity_compiled")
EAGER = ("full", "masked", "auto", "capacity")
CHUNKS = (32, 64, 128)
#: variant -> what its speedup is measured against (the plain network of the same kind)
BASELINE = {
    "full": "full",
    "masked": "full",
    "auto": "full",
    "capacity": "full",
    "full_compiled": "full_compiled",
    "capacity_compiled": "full_compiled",
}


@dataclass(frozen=True)
class CapCase:
    model: str
    batch: int
    keep: float
    reps: int = 5
    variants: tuple[str, ...] = VARIANTS

    @property
    def key(self) -> str:
        return f"{self.model} cpu float32 NCHW b{self.batch} iid:{self.keep}"

    @property
    def sizes(self) -> tuple[int, ...]:
        """The whole batch, then every chunk size below it."""
        return (self.batch,) + tuple(c for c in CHUNKS if c < self.batch)


def capacity_cases(subset: str = "default", reps: int | None = None) -> list[CapCase]:
    """``default``: the issue's matrix (R110, R56 x batch 64, 256 x keep 0.31, 0.75); ``quick``:
    one small case; ``eager``: the matrix without the compiled variants (the pytest suite)."""
    if subset == "quick":
        return [CapCase("R56", 64, 0.31, reps or 3)]
    variants = EAGER if subset == "eager" else VARIANTS
    return [
        CapCase(m, b, k, reps or (5 if b == 256 else 9), variants)
        for m in ("R110", "R56")
        for b in (256, 64)
        for k in (0.31, 0.75)
    ]


_COMPILED: dict[tuple, Callable] = {}


def _compiled_plain(model) -> Callable:
    key = ("full", id(model))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(model, fullgraph=True, dynamic=False)
    return _COMPILED[key]


def _compiled_capacity(model, counts: tuple[int, ...]) -> Callable:
    key = ("capacity", id(model), counts)
    if key not in _COMPILED:

        def run(x: Tensor, s: Tensor) -> Tensor:
            return capacity_forward(model, x, s, counts)

        _COMPILED[key] = torch.compile(run, fullgraph=True, dynamic=False)
    return _COMPILED[key]


class CapPrepared:
    """A case's model, input, iid policy, scores and shares; its callables and checks."""

    def __init__(self, case: CapCase) -> None:
        self.case = case
        self.model = build_model(case.model)
        self.x = make_input(case.model, case.batch, "cpu", torch.float32, False)
        k = self.model.num_blocks
        self.policy = make_policy(f"iid:{case.keep}", case.batch, k)
        self.scores = torch.rand(case.batch, k, generator=torch.Generator().manual_seed(3))
        self.shares = self.policy.double().mean(0).tolist()
        parts = block_flops(self.model)
        self._full, self._fixed = parts.full, parts.full - sum(parts.residual)
        self._residual = torch.tensor(parts.residual, dtype=torch.float64)

    def counts(self, c: int) -> tuple[int, ...]:
        return counts_from_shares(self.shares, c)

    def ideal(self, variant: str, c: int) -> float:
        """FLOPs(full) / FLOPs(executed) per image for ``variant`` in chunks of ``c``."""
        if variant in ("full", "full_compiled", "masked"):
            return 1.0
        if variant == "auto":
            kept = self.policy.double().sum(0)
        else:
            kept = torch.tensor(self.counts(c), dtype=torch.float64) * (self.case.batch // c)
        per_image = self._fixed + float(kept @ self._residual) / self.case.batch
        return self._full / per_image

    def _one(self, variant: str, c: int) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """The call on one chunk ``(x, policy, scores) -> logits``."""
        m = self.model
        if variant == "full":
            return lambda x, p, s: m(x)
        if variant == "full_compiled":
            f = _compiled_plain(m)
            return lambda x, p, s: f(x)
        if variant in ("masked", "auto"):
            return lambda x, p, s: dynamic_forward(m, x, p, variant)
        counts = self.counts(c)
        if variant == "capacity":
            return lambda x, p, s: capacity_forward(m, x, s, counts)
        f = _compiled_capacity(m, counts)
        return lambda x, p, s: f(x, s)

    def fn(self, variant: str, c: int) -> Callable[[], Tensor]:
        """Zero-argument callable: the whole batch in chunks of ``c`` (eager variants under
        inference_mode; compiled ones under no_grad, as inductor's freezing needs)."""
        one = self._one(variant, c)
        pieces = list(zip(self.x.split(c), self.policy.split(c), self.scores.split(c)))
        ctx = torch.no_grad if variant.endswith("compiled") else torch.inference_mode

        def run() -> Tensor:
            with ctx():
                return torch.cat([one(x, p, s) for x, p, s in pieces])

        return run

    def check(self, variant: str, c: int) -> float:
        """Run once (the warm-up; compiles) and compare with the masked reference under the policy
        the variant executes. Returns the relative error; asserts it is <= 1e-4."""
        out = self.fn(variant, c)()
        with torch.inference_mode():
            if variant in ("full", "full_compiled"):
                ref = self.model(self.x)
            elif variant in ("masked", "auto"):
                ref = dynamic_forward(self.model, self.x, self.policy, "masked")
            else:
                pol = torch.cat([capacity_policy(s, self.counts(c)) for s in self.scores.split(c)])
                ref = dynamic_forward(self.model, self.x, pol, "masked")
        err = rel_err(out, ref)
        assert err <= 1e-4, f"{self.case.key} {variant} chunk {c}: relative error {err:.3g} vs masked"
        return err
