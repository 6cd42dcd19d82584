"""The one timing module: interleaved (and rotated) rounds, medians, spread, clocks."""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from blockdrop.evaluation import evaluate as evaluate_mod
from blockdrop.evaluation.evaluate import measure_throughput
from blockdrop.evaluation.timing import Timing, interleaved


def test_rounds_are_interleaved_and_rotated() -> None:
    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    interleaved(fns, rounds=3, warmup=1)
    assert calls == list("abc") * 4  # warm-up round + 3 rounds, in order
    calls.clear()
    t = interleaved(fns, rounds=3, warmup=0, rotate=True)
    assert calls == list("abc") + list("bca") + list("cab")
    assert all(len(v.samples) == 3 for v in t.values())


def test_median_best_spread_and_clocks() -> None:
    t = Timing((1.0, 2.0, 3.0, 4.0, 10.0))
    assert t.median == 3.0 and t.best == 1.0
    q = statistics.quantiles(t.samples, n=4)
    assert t.spread == pytest.approx((q[2] - q[0]) / 3.0)
    assert Timing((1.0, 3.0)).spread == pytest.approx(1.0)  # few rounds: (max - min) / median
    slow = interleaved({"sleep": lambda: time.sleep(0.02), "noop": lambda: None}, rounds=3, warmup=0)
    assert slow["sleep"].median >= 0.018 > slow["noop"].median
    cpu = interleaved({"sleep": lambda: time.sleep(0.02)}, rounds=2, warmup=0, clock="process")
    assert cpu["sleep"].median < 0.01  # sleeping costs no CPU time
    with pytest.raises(ValueError, match="clock"):
        interleaved({"a": lambda: None}, clock="gpu")
    with pytest.raises(ValueError, match="rounds"):
        interleaved({"a": lambda: None}, rounds=0)


class _CostNet(torch.nn.Module):
    """measure_throughput's interface on a virtual clock: the plain backbone costs ``cost(n)``
    seconds per call of ``n`` images, the BlockDrop path half of that. Deterministic: no test
    depends on how busy the machine is."""

    def __init__(self, cost) -> None:
        super().__init__()
        self.cost, self.clock = cost, 0.0

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        self.clock += self.cost(x.shape[0])
        return x

    def policy(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 2)

    def run_backbone(self, x: torch.Tensor, p: torch.Tensor, strategy: object) -> torch.Tensor:
        self.clock += self.cost(x.shape[0]) / 2
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_backbone(x, self.policy(x), None)


@pytest.mark.parametrize("superlinear", [False, True])
def test_throughput_finds_the_fastest_plain_chunk(superlinear: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # per-call overhead: the whole batch is fastest; cost growing as n^2: the smallest chunk is
    cost = (lambda n: 2e-6 * n * n) if superlinear else (lambda n: 0.006)
    net = _CostNet(cost)

    def virtual_interleaved(fns, rounds, warmup, device):  # each function's cost on net's clock
        out = {}
        for name, fn in fns.items():
            t0 = net.clock
            fn()
            out[name] = Timing((net.clock - t0,) * rounds)
        return out

    monkeypatch.setattr(evaluate_mod, "interleaved", virtual_interleaved)
    xs = [torch.zeros(64, 1)]
    r = measure_throughput(net, xs, repeats=3, plain_chunks=(32, 16, 64, 128))
    best = 16.0 if superlinear else 64.0
    assert r["best_plain_chunk"] == best and r["best_blockdrop_chunk"] == best
    plain = {64: cost(64), 32: 2 * cost(32), 16: 4 * cost(16)}  # seconds for the 64 images
    assert r["full_ips"] == pytest.approx(64 / plain[64])
    assert r["best_plain_ips"] == pytest.approx(64 / plain[int(best)])
    assert r["speedup"] == pytest.approx(2.0) and r["speedup_best_vs_best"] == pytest.approx(2.0)
    assert r["speedup_vs_best_plain"] == pytest.approx(plain[int(best)] / (plain[64] / 2))
    assert r["backbone_speedup"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="plain_chunks"):
        measure_throughput(_CostNet(cost), xs, repeats=1, plain_chunks=(0,))
