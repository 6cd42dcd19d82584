"""Model suite: strategies ``full`` (the plain network), ``masked`` (official semantics), ``loop``,
``gather``, ``group``, ``auto`` (blockdrop.dynamic_forward) and ``torch_gather`` (plain-PyTorch
per-block index_select -> block -> index_copy_, benchmarks/cases.py) on CIFAR ResNet-56/110
(32x32) and torchvision ResNet-50/101 (224x224) under policy mixes.

One group per case (model, device, dtype, layout, batch, mix); one row per strategy. Each strategy's
logits are checked against masked's before it is timed. extra_info: machine, dtype, layout, batch,
policy mix, ideal speedup (blockdrop.evaluation.accounting), strategy, the relative error vs masked, and --
``full`` runs first in each group -- the realized speedup over full and realized/ideal.

Cases: ``cases.model_cases`` -- on CPU the "pytest" subset (a few minutes: R110 and R56 at batch
16/64/256 under iid keep 0.31, at 16/256 under 10 prototypes, all ones at 16 (and 256 for R110),
batch 1), with BLOCKDROP_BENCH_FULL=1 the whole matrix; CUDA cases (``gpu`` marker): the GPU
default subset, bfloat16, channels_last. ``loop`` only at batch <= 16.
pytest-benchmark runs one case after another; for interleaved medians use benchmarks/run.py.
"""

from __future__ import annotations

import pytest
import torch

from cases import Case, Prepared, mix_label, model_cases
from env import bench_rounds as rounds, default_machine, full_matrix


def _cases() -> list[Case]:
    """The CPU cases (subset "pytest", or every case with BLOCKDROP_BENCH_FULL=1) and the CUDA
    ones (the device's default subset): the same lists benchmarks/run.py measures."""
    subset = "full" if full_matrix() else "pytest"
    return model_cases(subset, "cpu") + model_cases("full" if full_matrix() else "default", "cuda")


def _params():
    out = []
    for case in _cases():
        marks = [pytest.mark.gpu] if case.device == "cuda" else []
        tag = f"{case.model}-{case.device}-{case.dtype_name}-{case.layout}-b{case.batch}-{case.resolved_mix}"
        out += [pytest.param(case, s, id=f"{tag}-{s}", marks=marks) for s in case.strategies]
    return out


_PREPARED: dict[str, Prepared] = {}
_FULL_MEDIAN: dict[str, float] = {}


def _prepared(case: Case) -> Prepared:
    if case.key not in _PREPARED:
        _PREPARED.clear()  # one case alive at a time (batch-256 ImageNet activations are large)
        _PREPARED[case.key] = Prepared(case)
    return _PREPARED[case.key]


@pytest.mark.parametrize("case,strategy", _params())
def test_model(benchmark, case: Case, strategy: str):
    prep = _prepared(case)
    err = prep.check(strategy)  # asserts logits == masked's; also the warm-up call
    fn = prep.fn(strategy)

    def call_synced() -> None:
        fn()
        torch.cuda.synchronize()

    call = call_synced if case.device == "cuda" else fn
    if case.device == "cuda":
        fn()
    benchmark.group = (
        f"{case.model} {case.device} {case.dtype_name} {case.layout} "
        f"batch {case.batch} {mix_label(case.resolved_mix)}"
    )
    benchmark.extra_info.update(prep.info())
    benchmark.extra_info.update(
        strategy=strategy, machine=default_machine(case.device), rel_err_vs_masked=err
    )
    benchmark.pedantic(call, rounds=rounds(case.device), warmup_rounds=0, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    med = stats.stats.median
    if strategy == "full":
        _FULL_MEDIAN[case.key] = med
    if case.key in _FULL_MEDIAN:
        speedup = _FULL_MEDIAN[case.key] / med
        benchmark.extra_info.update(
            speedup_vs_full=round(speedup, 3), realized_over_ideal=round(speedup / prep.ideal, 3)
        )
