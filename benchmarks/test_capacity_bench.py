"""Capacity-mode suite: ``capacity`` (``blockdrop.capacity_forward``, eager) and
``capacity_compiled`` (``torch.compile(fullgraph=True)``, inductor) against ``auto``, ``masked``
and the plain network eager (``full``) and compiled (``full_compiled``), on CIFAR ResNet-110/56 at
batch 64/256 under iid keep 0.31/0.75, each on the whole batch and in chunks of 32/64/128
(``capacity_cases``). Every call is checked against the masked reference under the policy it
executes before it is timed.

One group per (case, chunk); one row per variant. extra_info: machine, model, batch, keep, chunk,
ideal speedup of the variant at that chunk. The compiled variants compile on their first (checking)
call -- minutes per shape on a small CPU --, so by default they run only for ResNet-56 at batch 64;
BLOCKDROP_BENCH_FULL=1 runs the whole matrix. For interleaved medians and the targets:
``python benchmarks/run.py --subset capacity``.
"""

from __future__ import annotations

import pytest
import torch

from capacity_cases import CapCase, CapPrepared, capacity_cases
from env import bench_rounds, default_machine, full_matrix


def _params():
    out = []
    for case in capacity_cases("default"):
        small = case.model == "R56" and case.batch == 64
        for c in case.sizes:
            for v in case.variants:
                if v.endswith("compiled") and not (small or full_matrix()):
                    continue
                out.append(
                    pytest.param(case, v, c, id=f"{case.model}-b{case.batch}-keep{case.keep}-chunk{c}-{v}")
                )
    return out


_PREPARED: dict[str, CapPrepared] = {}


def _prepared(case: CapCase) -> CapPrepared:
    if case.key not in _PREPARED:
        _PREPARED.clear()
        _PREPARED[case.key] = CapPrepared(case)
    return _PREPARED[case.key]


@pytest.fixture(scope="module", autouse=True)
def _freezing():
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True), torch._dynamo.config.patch(recompile_limit=64):
        yield
    torch._dynamo.reset()


@pytest.mark.parametrize("case,variant,chunk", _params())
def test_capacity(benchmark, case: CapCase, variant: str, chunk: int) -> None:
    prep = _prepared(case)
    err = prep.check(variant, chunk)  # asserts == masked under the executed policy; warm-up/compile
    benchmark.group = f"{case.model} batch {case.batch} iid keep {case.keep} chunk {chunk}"
    benchmark.extra_info.update(
        machine=default_machine("cpu"),
        model=case.model,
        batch=case.batch,
        keep=case.keep,
        chunk=chunk,
        variant=variant,
        ideal_speedup=round(prep.ideal(variant, chunk), 4),
        rel_err_vs_masked=err,
    )
    benchmark.pedantic(prep.fn(variant, chunk), rounds=bench_rounds("cpu"), warmup_rounds=0, iterations=1)
