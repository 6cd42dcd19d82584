"""Timing that survives a shared, noisy machine: interleaved rounds and medians.

Every ratio the project reports (``blockdrop bench``, ``measure_throughput``, the benchmarks) is
measured the same way: the candidates run one after another within each round, ``rounds`` times,
so that a slow spell of the machine hits all of them alike; each candidate's time is the median of
its rounds, and a ratio is a ratio of medians.

Clocks: ``"wall"`` (``time.perf_counter``; CUDA work is synchronised before and after each call)
or ``"process"`` (``time.process_time``: CPU time of this process, immune to other processes on a
shared CPU; meaningless for GPU work).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Timing", "interleaved", "sync"]


def sync(device: torch.device | str | None) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one candidate over the rounds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def spread(self) -> float:
        """Interquartile range / median (with fewer than 4 rounds: (max - min) / median): how
        noisy the rounds were."""
        xs = self.samples
        if not self.median:
            return 0.0
        if len(xs) < 4:
            return (max(xs) - min(xs)) / self.median
        q = statistics.quantiles(xs, n=4)
        return (q[2] - q[0]) / self.median


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    rounds: int = 5,
    warmup: int = 1,
    device: torch.device | str | None = None,
    clock: str = "wall",
    rotate: bool = False,
) -> dict[str, Timing]:
    """Time each of ``fns`` (name -> zero-argument callable) ``rounds`` times, interleaved, after
    ``warmup`` untimed rounds; with ``rotate`` the order shifts by one each round, so no candidate
    always follows the same one. Returns name -> :class:`Timing`."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds}, {warmup}")
    if clock not in ("wall", "process"):
        raise ValueError(f"clock: expected 'wall' or 'process', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time
    for _ in range(warmup):
        for f in fns.values():
            f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        shift = r % len(order) if rotate and order else 0
        for name in order[shift:] + order[:shift]:
            f = fns[name]
            sync(device)
            t = now()
            f()
            sync(device)
            samples[name].append(now() - t)
    return {k: Timing(tuple(v)) for k, v in samples.items()}
