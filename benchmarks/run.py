#!/usr/bin/env python
"""Run the benchmark suites in one process, strategies interleaved, and write
``benchmarks/results/<machine>.json``, ``<machine>.md`` (tables + targets) and ``<machine>.png``.

    python benchmarks/run.py                        # this machine's default subset (CPU: ~15 min)
    python benchmarks/run.py --subset quick         # a 2-minute smoke run
    python benchmarks/run.py --subset full          # the whole matrix (CPU: hours)
    python benchmarks/run.py --device cuda          # GPU subset: bf16, channels_last
    python benchmarks/run.py --render results/cpu-2core.json   # redo the .md/.png from a .json
    python benchmarks/run.py --subset capacity      # capacity mode vs auto/masked/plain (eager and
                                                    # compiled) -> results/<machine>-capacity.{json,md}

Method (why: benchmarks/README.md): one CPU thread; glibc's malloc trim/mmap thresholds raised (the
process re-executes itself with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set); each case is
checked against ``masked`` first (that call is also the warm-up), then timed in rounds, every round
calling every strategy once in a rotated order; the median of the rounds is reported. GPU calls
synchronize inside the timed region. Realized speedup = median(full) / median(strategy); ideal =
FLOPs(full) / FLOPs(executed) from blockdrop.evaluation.accounting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from render import merge, summary, write_outputs  # noqa: E402


def _reexec_with_malloc_env(argv: list[str]) -> None:
    from env import MALLOC_ENV  # light import (torch only)

    if os.environ.get("BLOCKDROP_BENCH_NO_REEXEC") or all(
        os.environ.get(k) == v for k, v in MALLOC_ENV.items()
    ):
        return
    env = dict(os.environ, **MALLOC_ENV, BLOCKDROP_BENCH_NO_REEXEC="1")
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--machine", help="results name (default: cpu-<N>core, or the GPU's name)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when visible, else cpu")
    ap.add_argument(
        "--subset",
        choices=("default", "quick", "targets", "memory", "pytest", "full", "capacity", "capacity-quick"),
        default="default",
        help="capacity: the capacity-mode matrix -> <machine>-capacity.*",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="keep the cases/ops of an existing <machine>.json that this run does not redo",
    )
    ap.add_argument("--reps", type=int, help="timed rounds per model case (default: per case)")
    ap.add_argument("--op-reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-models", action="store_true")
    ap.add_argument("--no-ops", action="store_true")
    ap.add_argument(
        "--only", help="run only model cases whose key contains this (e.g. 'R110 cpu float32 NCHW b256')"
    )
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--note", default="", help="free text recorded in the results (e.g. machine load)")
    ap.add_argument("--render", type=Path, help="only re-render .md/.png from this .json")
    args = ap.parse_args(argv)
    if args.render and args.render.name.endswith("-capacity.json"):
        from capacity_run import write_capacity

        write_capacity(json.loads(args.render.read_text()), args.render.parent)
        return 0
    if args.render:
        data = json.loads(args.render.read_text())
        write_outputs(data, args.out if args.out != HERE / "results" else args.render.parent)
        print(summary(data))
        return 0
    _reexec_with_malloc_env(argv)

    import torch

    import env
    from cases import model_cases, op_cases
    from measure import run_model_case, run_op_case

    device = args.device or env.default_device()
    settings = env.setup_measurement(args.threads if device == "cpu" else None)
    machine = args.machine or env.default_machine(device)
    data = {
        "machine": machine,
        "env": env.environment(device),
        "cases": [],
        "ops": [],
        "settings": dict(
            settings, subset=args.subset, note=args.note, device=device, clock=env.clock_name(device)
        ),
    }
    if args.subset.startswith("capacity"):
        import shlex

        from capacity_run import main_capacity

        data["settings"]["command"] = "python benchmarks/run.py " + shlex.join(argv)
        return main_capacity(args, data, log)
    failures = 0
    t_start = time.perf_counter()
    previous = None
    if args.merge and (args.out / f"{machine}.json").exists():
        previous = json.loads((args.out / f"{machine}.json").read_text())
    if not args.no_ops:
        ops = op_cases(args.subset, device)
        log(f"== ops: {len(ops)} cases on {device}")
        for op, name, shape, frac, dt, cl in ops:
            try:
                r = run_op_case(op, name, shape, frac, dt, cl, device, args.op_reps)
            except Exception as exc:  # noqa: BLE001 - record and go on
                failures += 1
                log(f"FAILED op {op} {name} {dt} {cl}: {type(exc).__name__}: {exc}")
                continue
            data["ops"].append(r)
            im = r["impls"]
            log(
                f"{op:17} {name:9} {r['dtype']:8} {r['layout']:13} rows={r['rows']:<4} "
                f"copy {im['copy']['GBps']:7.1f} "
                f"blockdrop {im['blockdrop']['GBps']:7.1f} torch {im['torch']['GBps']:7.1f} GB/s"
            )
    if not args.no_models:
        cases = [
            c for c in model_cases(args.subset, device, args.reps) if not args.only or args.only in c.key
        ]
        log(f"== models: {len(cases)} cases on {device}")
        for case in cases:
            try:
                r = run_model_case(case)
            except Exception as exc:  # noqa: BLE001
                failures += 1
                log(f"FAILED {case.key}: {type(exc).__name__}: {exc}")
                if device == "cuda":
                    torch.cuda.empty_cache()
                continue
            data["cases"].append(r)
            st = r["strategies"]
            log(
                f"{case.key:50} ideal {r['ideal_speedup']:5.2f}x "
                f"full {st['full']['median_s'] * 1e3:8.1f} ms | "
                + " ".join(f"{s} {v['speedup']:.2f}x" for s, v in st.items() if s != "full")
                + f" | {r['wall_s']}s"
            )
            write_outputs(
                data if previous is None else merge(previous, data), args.out, plot=False
            )  # partial results survive a timeout
    data["settings"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    if previous is not None:
        data = merge(previous, data)
    write_outputs(data, args.out)
    log(summary(data))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
