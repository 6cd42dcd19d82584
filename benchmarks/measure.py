"""One case measured: every strategy (or op implementation) checked against the reference first,
then timed in interleaved, rotated rounds with :func:`blockdrop.evaluation.timing.interleaved` on the
benchmarks' clock (:mod:`env`); medians, spreads, speedups, peak memory."""

from __future__ import annotations

import time

import opbench
from blockdrop.evaluation.memory import peak_memory
from blockdrop.evaluation.timing import interleaved
from cases import Case, Prepared
from env import clock, clock_name

__all__ = ["run_model_case", "run_op_case"]


def run_model_case(case: Case) -> dict:
    t0 = time.perf_counter()
    prep = Prepared(case)
    res = prep.info()
    res["strategies"] = {}
    errs, peaks = {}, {}
    for s in case.strategies:
        errs[s] = prep.check(s)  # asserts == masked; doubles as the warm-up
        if case.device == "cuda" or s != "loop":  # loop is batch 1 at a time; CPU profiling is slow
            prep.fn(s)()
            peaks[s] = peak_memory(prep.fn(s), case.device) / 2**20
    t = interleaved(
        {s: prep.fn(s) for s in case.strategies},
        rounds=case.reps,
        warmup=0,
        device=case.device,
        clock=clock(case.device),
        rotate=True,
    )
    full = t["full"].median
    for s in case.strategies:
        med = t[s].median
        res["strategies"][s] = {
            "median_s": med,
            "times_s": list(t[s].samples),
            "spread": round(t[s].spread, 4),
            "speedup": full / med,
            "realized_over_ideal": full / med / prep.ideal,
            "rel_err_vs_masked": errs[s],
            "peak_mib": peaks.get(s),
        }
    res["reps"] = case.reps
    res["clock"] = clock_name(case.device)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    del prep
    return res


def run_op_case(op, size_name, shape, frac, dtype, cl, device, reps) -> dict:
    opbench.check_op(op, shape, frac, dtype, cl, device)
    p = opbench.op_payload(op, shape, frac, dtype, cl, device)
    calls, inner = {}, {}
    for impl in opbench.OP_IMPLS:
        inner[impl] = opbench.inner_repeats(p.fns[impl], device)
        calls[impl] = opbench.repeated(p.fns[impl], inner[impl], device)
    t = interleaved(calls, rounds=reps, warmup=1, device=device, clock=clock(device), rotate=True)
    res = dict(p.info, size=size_name, impls={}, clock=clock_name(device))
    per_call = {impl: t[impl].median / inner[impl] for impl in opbench.OP_IMPLS}
    copy_bw = p.bytes / per_call["copy"] / 1e9
    for impl in opbench.OP_IMPLS:
        bw = p.bytes / per_call[impl] / 1e9
        res["impls"][impl] = {
            "median_s": per_call[impl],
            "GBps": bw,
            "fraction_of_copy": bw / copy_bw,
            "inner": inner[impl],
            "spread": round(t[impl].spread, 4),
        }
    return res
