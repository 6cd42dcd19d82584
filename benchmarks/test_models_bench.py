"""Model suite: strategies ``full`` (the plain network), ``masked`` (official semantics), ``loop``,
``gather``, ``group``, ``auto`` (blockdrop.dynamic_forward) and ``torch_gather`` (plain-PyTorch
per-block index_select -> block -> index_copy_, benchmarks/common.py) on CIFAR ResNet-56/110
(32x32) and torchvision ResNet-50/101 (224x224) under policy mixes.

One group per case (model, device, dtype, layout, batch, mix); one row per strategy. Each strategy's
logits are checked against masked's before it is timed. extra_info: machine, dtype, layout, batch,
policy mix, ideal speedup (blockdrop.accounting), strategy, the relative error vs masked, and --
``full`` runs first in each group -- the realized speedup over full and realized/ideal.

Default (CPU, a few minutes): R110 and R56 at batch 16/64/256 under iid keep 0.31, at 16/256 under
10 prototypes, all ones at batch 16 (and 256 for R110), batch 1 under iid keep 0.31 and all ones; ``loop`` only at batch <= 16. BLOCKDROP_BENCH_FULL=1: every model x
batch 1/16/(64)/256 x the six mixes. CUDA cases (``gpu`` marker): bfloat16, channels_last.
pytest-benchmark runs one case after another; for interleaved medians use benchmarks/run.py.
"""
from __future__ import annotations

import pytest
import torch

import common
from common import bench_rounds as rounds, full_matrix

MIXES_ALL = ("iid:0.31", "iid:0.75", "proto10", "proto469", "ones", "zeros")


def _cpu_cases() -> list[common.Case]:
    if full_matrix():
        out = []
        for model in ("R110", "R56", "R50", "R101"):
            batches = (1, 16, 64, 256) if common.family(model) == "cifar" else (1, 16, 256)
            out += [common.Case(model, b, mix) for b in batches for mix in MIXES_ALL]
        return out
    out = []
    for model in ("R110", "R56"):
        out += [common.Case(model, 1, mix) for mix in ("iid:0.31", "ones")]
        out += [common.Case(model, b, "iid:0.31") for b in (16, 64, 256)]
        out += [common.Case(model, b, "proto10") for b in (16, 256)]
        out.append(common.Case(model, 16, "ones"))
    out.append(common.Case("R110", 256, "ones"))
    return out


def _gpu_cases() -> list[common.Case]:
    kw = dict(device="cuda", dtype=torch.bfloat16, channels_last=True)
    if full_matrix():
        return [common.Case(m, b, mix, **kw) for m in ("R110", "R56", "R50", "R101")
                for b in (1, 16, 256) for mix in MIXES_ALL]
    return [
        common.Case("R101", 256, "proto10", **kw), common.Case("R110", 256, "iid:0.31", **kw),
        common.Case("R50", 256, "proto10", **kw), common.Case("R56", 256, "iid:0.31", **kw),
        common.Case("R101", 256, "ones", **kw), common.Case("R110", 256, "ones", **kw),
        common.Case("R101", 1, "proto10", **kw), common.Case("R110", 1, "iid:0.31", **kw),
    ]


def _strategies(case: common.Case) -> tuple[str, ...]:
    # one image at a time is N batch-1 forwards: only at small batches (FACTS: < 1x at B >= 16)
    return tuple(s for s in common.STRATEGIES if s != "loop" or case.batch <= 16)


def _params():
    out = []
    for case in _cpu_cases() + _gpu_cases():
        marks = [pytest.mark.gpu] if case.device == "cuda" else []
        tag = f"{case.model}-{case.device}-{case.dtype_name}-{case.layout}-b{case.batch}-{case.resolved_mix}"
        out += [pytest.param(case, s, id=f"{tag}-{s}", marks=marks) for s in _strategies(case)]
    return out


_PREPARED: dict[str, common.Prepared] = {}
_FULL_MEDIAN: dict[str, float] = {}


def _prepared(case: common.Case) -> common.Prepared:
    if case.key not in _PREPARED:
        _PREPARED.clear()  # one case alive at a time (batch-256 ImageNet activations are large)
        _PREPARED[case.key] = common.Prepared(case)
    return _PREPARED[case.key]


@pytest.mark.parametrize("case,strategy", _params())
def test_model(benchmark, case: common.Case, strategy: str):
    prep = _prepared(case)
    err = prep.check(strategy)  # asserts logits == masked's; also the warm-up call
    fn = prep.fn(strategy)
    call = (lambda: (fn(), torch.cuda.synchronize())) if case.device == "cuda" else fn
    if case.device == "cuda":
        fn()
    benchmark.group = f"{case.model} {case.device} {case.dtype_name} {case.layout} batch {case.batch} {common.mix_label(case.resolved_mix)}"
    benchmark.extra_info.update(prep.info())
    benchmark.extra_info.update(strategy=strategy, machine=common.default_machine(case.device),
                                rel_err_vs_masked=err)
    benchmark.pedantic(call, rounds=rounds(case.device), warmup_rounds=0, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    med = stats.stats.median
    if strategy == "full":
        _FULL_MEDIAN[case.key] = med
    if case.key in _FULL_MEDIAN:
        speedup = _FULL_MEDIAN[case.key] / med
        benchmark.extra_info.update(speedup_vs_full=round(speedup, 3),
                                    realized_over_ideal=round(speedup / prep.ideal, 3))
