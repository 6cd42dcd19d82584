#!/usr/bin/env python
"""Host (Python + dispatcher) overhead of each strategy per block, with the compute taken away.

A GPU run of a small network (CIFAR ResNets) is launch-bound: its time is what the host spends
issuing ops. This measures that cost on any machine: a 54-block backbone whose residual branches
are five trivial ops on a [64, 4, 1, 1] tensor (stand-ins for conv-BN-ReLU-conv-BN), so each
strategy's time minus the full network's, per block, is the overhead its scheduling adds.

    python scripts/host_overhead.py [--batch 64] [--keep 0.31] [--rounds 200] [--device cuda]

On CUDA every call is followed by a synchronize inside the timed region, so the numbers are the
launch-bound cost of each strategy's kernel launches plus its host work.

Prints, per grad mode, the median over interleaved rounds of (strategy - full) / K.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch

import blockdrop
from blockdrop.evaluation.timing import interleaved
from blockdrop.models.base import BlockView, Chain, ResNetBackbone


class TrivialBackbone(ResNetBackbone):
    """K identity-shortcut blocks whose residual is neg-neg-relu-neg-neg on a [N, 4, 1, 1] input."""

    def __init__(self, k: int = 54) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.default_input_size = 4, 4, (4, 1, 1)
        self.fc = torch.nn.Linear(4, 4)
        self._block_views = tuple(
            BlockView(
                residual=Chain(torch.neg, torch.neg, torch.relu, torch.neg, torch.neg),
                shortcut=lambda h: h,
                shortcut_kind="identity",
                module=self.fc,
                in_channels=4,
                out_channels=4,
                stride=1,
            )
            for _ in range(k)
        )

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h.flatten(1))


def per_block_overhead_us(fns: dict, rounds: int, k: int, device: str = "cpu") -> dict:
    """Every callable timed once per round, interleaved (blockdrop.evaluation.timing); returns, per strategy,
    the median over rounds of (its time - full's time in the same round) / k, in microseconds."""
    t = interleaved(fns, rounds=rounds, warmup=5, device=device)
    full = t["full"].samples
    return {
        name: statistics.median((a - b) / k * 1e6 for a, b in zip(v.samples, full))
        for name, v in t.items()
        if name != "full"
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--keep", type=float, default=0.31)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = TrivialBackbone().to(args.device)
    k = model.num_blocks
    x = torch.randn(args.batch, 4, 1, 1, device=args.device)
    policy = torch.rand(args.batch, k, generator=torch.Generator().manual_seed(0)) < args.keep
    policy = policy.to(args.device)
    for mode, ctx in (("inference_mode", torch.inference_mode), ("no_grad", torch.no_grad)):
        with ctx():
            fns = {"full": lambda: model(x)}
            for s in ("masked", "gather", "group"):
                fns[s] = functools.partial(blockdrop.dynamic_forward, model, x, policy, s)
            over = per_block_overhead_us(fns, args.rounds, k, args.device)
        print(f"{mode:15} " + " | ".join(f"{s} +{v:5.1f} us/block" for s, v in over.items()))


if __name__ == "__main__":
    main()
