"""The one timing module: interleaved (and rotated) rounds, medians, spread, clocks."""
from __future__ import annotations

import statistics
import time

import pytest

from blockdrop.timing import Timing, interleaved


def test_rounds_are_interleaved_and_rotated() -> None:
    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    interleaved(fns, rounds=3, warmup=1)
    assert calls == list("abc") * 4                          # warm-up round + 3 rounds, in order
    calls.clear()
    t = interleaved(fns, rounds=3, warmup=0, rotate=True)
    assert calls == list("abc") + list("bca") + list("cab")
    assert all(len(v.samples) == 3 for v in t.values())


def test_median_best_spread_and_clocks() -> None:
    t = Timing((1.0, 2.0, 3.0, 4.0, 10.0))
    assert t.median == 3.0 and t.best == 1.0
    q = statistics.quantiles(t.samples, n=4)
    assert t.spread == pytest.approx((q[2] - q[0]) / 3.0)
    assert Timing((1.0, 3.0)).spread == pytest.approx(1.0)   # few rounds: (max - min) / median
    slow = interleaved({"sleep": lambda: time.sleep(0.02), "noop": lambda: None}, rounds=3, warmup=0)
    assert slow["sleep"].median >= 0.018 > slow["noop"].median
    cpu = interleaved({"sleep": lambda: time.sleep(0.02)}, rounds=2, warmup=0, clock="process")
    assert cpu["sleep"].median < 0.01                         # sleeping costs no CPU time
    with pytest.raises(ValueError, match="clock"):
        interleaved({"a": lambda: None}, clock="gpu")
    with pytest.raises(ValueError, match="rounds"):
        interleaved({"a": lambda: None}, rounds=0)
