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
from dataclasses import dataclass
from typing import Any, Callable, Mapping

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
        """(max - min) / median: how noisy the rounds were."""
        return (max(self.samples) - min(self.samples)) / self.median if self.median else 0.0


def interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int = 5, warmup: int = 1,
                device: torch.device | str | None = None, clock: str = "wall") -> dict[str, Timing]:
    """Time each of ``fns`` (name -> zero-argument callable) ``rounds`` times, interleaved, after
    ``warmup`` untimed rounds. Returns name -> :class:`Timing`."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds}, {warmup}")
    if clock not in ("wall", "process"):
        raise ValueError(f"clock: expected 'wall' or 'process', got {clock!r}")
    now = time.perf_counter if clock == "wall" else time.process_time
    for _ in range(warmup):
        for f in fns.values():
            f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            sync(device)
            t = now()
            f()
            sync(device)
            samples[name].append(now() - t)
    return {k: Timing(tuple(v)) for k, v in samples.items()}
