#!/usr/bin/env python
"""Run the benchmark suites in one process, strategies interleaved, and write
``benchmarks/results/<machine>.json``, ``<machine>.md`` (tables + targets) and ``<machine>.png``.

    python benchmarks/run.py                        # this machine's default subset (CPU: ~15 min)
    python benchmarks/run.py --subset quick         # a 2-minute smoke run
    python benchmarks/run.py --subset full          # the whole matrix (CPU: hours)
    python benchmarks/run.py --device cuda          # GPU subset: bf16, channels_last
    python benchmarks/run.py --render results/cpu-2core.json   # redo the .md/.png from a .json

Method (../shared/FACTS.md): one CPU thread; glibc's malloc trim/mmap thresholds raised (the
process re-executes itself with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ set); each case is
checked against ``masked`` first (that call is also the warm-up), then timed in rounds, every round
calling every strategy once in a rotated order; the median of the rounds is reported. GPU calls
synchronize inside the timed region. Realized speedup = median(full) / median(strategy); ideal =
FLOPs(full) / FLOPs(executed) from blockdrop.accounting.
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

from common import STRATEGIES as STRATEGY_ORDER  # noqa: E402  (full first, then every strategy)


def _reexec_with_malloc_env(argv: list[str]) -> None:
    from common import MALLOC_ENV  # light import (torch only)

    if os.environ.get("BLOCKDROP_BENCH_NO_REEXEC") or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    env = dict(os.environ, **MALLOC_ENV, BLOCKDROP_BENCH_NO_REEXEC="1")
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], env)


# ---------------------------------------------------------------------------------------- subsets


def model_cases(subset: str, device: str, reps: int | None):
    import torch

    from common import Case

    def C(model, batch, mix, r, **kw):
        if device == "cuda":
            kw.setdefault("dtype", torch.bfloat16)
            kw.setdefault("channels_last", True)
            r = max(r, 10)
        strategies = tuple(s for s in STRATEGY_ORDER if s != "loop" or batch <= 16)
        return Case(model, batch, mix, device=device, strategies=strategies, reps=reps or r, **kw)

    mixes = ("iid:0.31", "iid:0.75", "proto10", "proto469", "ones", "zeros")
    if subset == "targets":  # the CPU target cases again, with more rounds (use with --merge)
        return [C(m, b, mix, r) for m in ("R110", "R56") for b, mix, r in
                ((16, "iid:0.31", 15), (64, "iid:0.31", 11), (256, "iid:0.31", 9), (256, "proto10", 9),
                 (16, "ones", 11))]
    if subset == "quick":
        return [C("R56", 16, "iid:0.31", 3), C("R56", 64, "proto10", 3), C("R56", 1, "iid:0.31", 3)]
    if subset == "memory":  # peak memory where gather's copies matter most (bottleneck nets), few rounds
        return [C(m, b, mix, 3) for m, b, mix in
                (("R50", 16, "proto10"), ("R101", 16, "proto10"), ("R101", 16, "iid:0.75"), ("R101", 16, "ones"))]
    if subset == "full":
        out = []
        for m in ("R110", "R56", "R50", "R101"):
            batches = (1, 16, 64, 256) if m in ("R110", "R56") else (1, 16, 256)
            out += [C(m, b, mix, 3) for b in batches for mix in mixes]
        return out
    if device == "cuda":
        return [
            C("R101", 256, "proto10", 10), C("R110", 256, "iid:0.31", 10),
            C("R101", 256, "ones", 10), C("R110", 256, "ones", 10),
            C("R101", 1, "proto10", 10), C("R110", 1, "iid:0.31", 10),
            C("R50", 256, "proto10", 10), C("R56", 256, "iid:0.31", 10),
            C("R110", 256, "proto10", 10), C("R110", 256, "proto469", 10),
            C("R101", 256, "iid:0.75", 10), C("R101", 16, "proto10", 10), C("R110", 16, "iid:0.31", 10),
            C("R110", 256, "iid:0.31", 10, dtype=torch.float32, channels_last=False),
        ]
    out = []
    for m in ("R110", "R56"):  # the CPU targets first (a run cut short keeps them)
        out += [C(m, 16, "iid:0.31", 7), C(m, 64, "iid:0.31", 7), C(m, 256, "iid:0.31", 5),
                C(m, 256, "proto10", 5), C(m, 1, "iid:0.31", 9), C(m, 16, "ones", 5)]
    out += [C("R110", 256, "ones", 3), C("R110", 1, "ones", 9), C("R56", 1, "ones", 9),
            C("R110", 16, "proto10", 5), C("R110", 64, "proto10", 5),
            C("R110", 256, "iid:0.75", 3), C("R110", 256, "proto469", 3), C("R110", 256, "zeros", 3),
            C("R50", 1, "proto10", 5), C("R101", 1, "proto10", 5)]
    return out




def op_cases(subset: str, device: str):
    import torch

    from common import OP_SIZES_CPU, OP_SIZES_GPU, OPS

    if subset == "quick":
        return [(op, "cifar-l1", OP_SIZES_CPU["cifar-l1"], 0.31, torch.float32, cl) for op in OPS for cl in (False, True)]
    if device == "cuda":
        return [(op, name, shape, frac, dt, cl) for op in OPS for name, shape in OP_SIZES_GPU.items()
                for frac in (0.31, 0.75) for dt in (torch.bfloat16, torch.float32) for cl in (False, True)]
    return [(op, name, shape, 0.31, dt, cl) for op in OPS for name, shape in OP_SIZES_CPU.items()
            for dt in (torch.float32, torch.bfloat16) for cl in (False, True)]


# ------------------------------------------------------------------------------------------ runs


def log(msg: str) -> None:
    print(msg, flush=True)


def run_model_case(case) -> dict:
    import common

    t0 = time.perf_counter()
    prep = common.Prepared(case)
    res = prep.info()
    res["strategies"] = {}
    errs, peaks = {}, {}
    for s in case.strategies:
        errs[s] = prep.check(s)  # asserts == masked; doubles as the warm-up
        if case.device == "cuda" or s != "loop":  # loop is batch 1 at a time; CPU profiling is slow
            prep.fn(s)()
            peaks[s] = common.peak_memory(prep.fn(s), case.device)
    times = {s: [] for s in case.strategies}
    order = list(case.strategies)
    for r in range(case.reps):
        rot = order[r % len(order):] + order[: r % len(order)]
        for s in rot:
            times[s].append(common.timed(prep.fn(s), case.device))
    full = common.median(times["full"])
    for s in case.strategies:
        med = common.median(times[s])
        res["strategies"][s] = {
            "median_s": med, "times_s": times[s], "spread": round(common.spread(times[s]), 4),
            "speedup": full / med, "realized_over_ideal": full / med / prep.ideal,
            "rel_err_vs_masked": errs[s], "peak_mib": peaks.get(s),
        }
    res["reps"] = case.reps
    res["clock"] = common.clock_name(case.device)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    del prep
    return res


def run_op_case(op, size_name, shape, frac, dtype, cl, device, reps) -> dict:
    import common

    common.check_op(op, shape, frac, dtype, cl, device)
    p = common.op_payload(op, shape, frac, dtype, cl, device)
    calls, inner = {}, {}
    for impl in common.OP_IMPLS:
        inner[impl] = common.inner_repeats(p.fns[impl], device)
        calls[impl] = common.repeated(p.fns[impl], inner[impl], device)
        calls[impl]()  # warm-up
    times = {i: [] for i in common.OP_IMPLS}
    for r in range(reps):
        for impl in common.OP_IMPLS[r % 3:] + common.OP_IMPLS[: r % 3]:
            times[impl].append(common.timed(calls[impl], device) / inner[impl])
    res = dict(p.info, size=size_name, impls={}, clock=common.clock_name(device))
    copy_bw = p.bytes / common.median(times["copy"]) / 1e9
    for impl in common.OP_IMPLS:
        med = common.median(times[impl])
        bw = p.bytes / med / 1e9
        res["impls"][impl] = {"median_s": med, "GBps": bw, "fraction_of_copy": bw / copy_bw, "inner": inner[impl],
                              "spread": round(common.spread(times[impl]), 4)}
    return res


# -------------------------------------------------------------------------------------- targets


def _find(cases, model, batch, mix_prefix, device=None):
    for c in cases:
        if c["model"] == model and c["batch"] == batch and c["mix"].startswith(mix_prefix) and \
                (device is None or c["device"] == device):
            return c
    return None


def best_ri(c, s):
    """realized/ideal from the fastest round of each (min(full) / min(s) / ideal): less sensitive to
    other processes' load than the median, reported next to it."""
    st = c["strategies"]
    return min(st["full"]["times_s"]) / min(st[s]["times_s"]) / c["ideal_speedup"]


def _noise(c, a, b):
    """Relative noise of comparing strategies a and b: their larger IQR/median, at least 3%."""
    return max(0.03, c["strategies"][a]["spread"], c["strategies"][b]["spread"])


def evaluate_targets(data: dict) -> list[dict]:
    """The issue's targets, each with the measured value and met / missed / n/a."""
    cases = data["cases"]
    out = []

    def add(name, value, ok, note=""):
        out.append({"target": name, "value": value, "status": "n/a" if ok is None else ("met" if ok else "MISSED"),
                    "note": note})

    cpu = [c for c in cases if c["device"] == "cpu" and c["dtype"] == "float32"]
    for model in ("R110", "R56"):
        for batch, need in ((16, 0.75), (64, 0.92), (256, 0.97)):
            c = _find(cpu, model, batch, "iid:0.31")
            if c and "auto" in c["strategies"]:
                v = c["strategies"]["auto"]["realized_over_ideal"]
                add(f"CPU {model} iid 0.31 b{batch}: auto realized/ideal >= {need}", round(v, 3), v >= need,
                    f"fastest rounds: {best_ri(c, 'auto'):.2f}; torch_gather {c['strategies']['torch_gather']['realized_over_ideal']:.2f}; spread {c['strategies']['auto']['spread']:.2f}")
        c = _find(cpu, model, 256, "proto10")
        if c and "auto" in c["strategies"]:
            v = c["strategies"]["auto"]["realized_over_ideal"]
            add(f"CPU {model} 10 prototypes b256: auto realized/ideal >= 1.03", round(v, 3), v >= 1.03,
                f"fastest rounds: {best_ri(c, 'auto'):.2f}; gather {c['strategies']['gather']['realized_over_ideal']:.2f}, "
                f"group {c['strategies']['group']['realized_over_ideal']:.2f}; auto chose {c['auto_choice']}")
    worst = None
    for c in cases:
        st = c["strategies"]
        if "auto" in st and "torch_gather" in st:
            ratio = st["torch_gather"]["median_s"] / st["auto"]["median_s"]  # > 1: auto faster
            slack = ratio - (1 - _noise(c, "auto", "torch_gather"))
            if worst is None or slack < worst[0]:
                worst = (slack, ratio, c)
    if worst:
        slack, ratio, c = worst
        add("auto never slower than torch_gather by more than noise (worst case)", round(ratio, 3), slack >= 0,
            f"{c['model']} {c['device']} b{c['batch']} {c['mix']}: torch_gather/auto time = {ratio:.3f}")
    worst = None
    for c in cases:  # issue 3: auto never worse than the best fixed strategy by more than noise
        st = c["strategies"]
        fixed = [s for s in ("masked", "loop", "gather", "group") if s in st]
        if "auto" not in st or not fixed:
            continue
        best = min(fixed, key=lambda s: st[s]["median_s"])
        ratio = st["auto"]["median_s"] / st[best]["median_s"]  # > 1: auto slower than the best
        slack = (1 + _noise(c, "auto", best)) - ratio
        if worst is None or slack < worst[0]:
            worst = (slack, ratio, best, c)
    if worst:
        slack, ratio, best, c = worst
        add("auto never slower than the best fixed strategy by more than noise (worst case)", round(ratio, 3),
            slack >= 0, f"{c['model']} {c['device']} b{c['batch']} {c['mix']}: auto/{best} time = {ratio:.3f}, "
            f"noise {_noise(c, 'auto', best):.2f}; auto chose {c['auto_choice']}")
    for c in cases:
        st = c["strategies"]
        if c["mix"] == "ones" and "auto" in st:
            v = st["auto"]["median_s"] / st["full"]["median_s"]
            vmin = min(st["auto"]["times_s"]) / min(st["full"]["times_s"])
            add(f"all ones {c['model']} {c['device']} {c['dtype']} b{c['batch']}: auto time <= 1.03 x full",
                round(v, 3), v <= 1.03, f"fastest rounds: {vmin:.3f}; spread {st['auto']['spread']:.2f}")
    for c in cases:
        st = c["strategies"]
        if c["batch"] == 1 and c["ideal_speedup"] > 1.0001 and "auto" in st:
            v = st["auto"]["speedup"]
            add(f"batch 1 {c['model']} {c['device']} {c['mix']}: auto faster than full", round(v, 3), v > 1.0)
    gpu = [c for c in cases if c["device"] == "cuda" and c["dtype"] == "bfloat16" and c["layout"] == "channels_last"]
    for model, mix in (("R101", "proto10"), ("R110", "iid:0.31")):
        c = _find(gpu, model, 256, mix)
        if c:
            v = c["strategies"]["auto"]["realized_over_ideal"]
            add(f"GPU bf16 CL {model} {mix} b256: auto realized/ideal >= 0.9", round(v, 3), v >= 0.9)
    for c in cases:
        st = c["strategies"]
        if st.get("full", {}).get("peak_mib"):
            worst = max((v["peak_mib"] / st["full"]["peak_mib"], s) for s, v in st.items()
                        if v.get("peak_mib") is not None and s in ("masked", "auto", "gather", "group"))
            dev = "GPU" if c["device"] == "cuda" else "CPU"
            add(f"{dev} memory {c['model']} b{c['batch']} {c['mix']}: peak <= 1.10 x full", round(worst[0], 3),
                worst[0] <= 1.10, f"worst: {worst[1]}")
    ops = [o for o in data.get("ops", []) if o["device"] == "cuda"]
    if ops:
        for name in ("gather_rows", "merge_block", "merge_block_", "merge_block_ds", "scatter_add_rows"):
            sel = [o for o in ops if o["op"] == name and o["size"] != "cifar-l1"]
            if sel:
                v = min(o["impls"]["blockdrop"]["fraction_of_copy"] for o in sel)
                add(f"GPU {name}: bandwidth >= 0.8 x device-to-device copy (worst large case)", round(v, 3), v >= 0.8)
    if not gpu:
        add("GPU targets (H100 bf16 channels_last)", None, None, "no GPU on this machine: scripts/gpu_run.sh")
    return out


# ------------------------------------------------------------------------------------- rendering


def fmt_x(v):
    return "" if v is None else f"{v:.2f}x"


def render_markdown(data: dict) -> str:
    env = data["env"]
    lines = [f"# blockdrop benchmarks: `{data['machine']}`", ""]
    dev = env.get("gpu") or env.get("cpu")
    lines.append(f"{dev}; torch {env['torch']}; {env['threads']} thread(s); clock: {data['settings'].get('clock', 'wall')}; git {env.get('git', '')}; "
                 f"{env['date']}; malloc thresholds: {data['settings']['malloc']}. "
                 f"{data['settings'].get('note', '')}")
    lines += ["", "Realized speedup = median time of `full` (the plain network) / median time of the strategy, "
              "over interleaved rounds (`reps`); ideal = FLOPs(full) / FLOPs(executed) (blockdrop.accounting). "
              "`auto, fastest rounds` = min(full) / min(auto) / ideal; `spread` = IQR / median of auto's rounds. "
              "`auto→` is the strategy auto chose. Blank: not run (loop only at batch <= 16).", ""]
    cases = data["cases"]
    if cases:
        lines += ["## Models: realized speedup over the plain network", "",
                  "| model | device | dtype / layout | batch | policy mix | groups | ideal | full ms | masked | loop | gather | group | auto | auto→ | torch_gather | reps |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in cases:
            st = c["strategies"]
            sp = {s: (st[s]["speedup"] if s in st else None) for s in STRATEGY_ORDER}
            lines.append(
                f"| {c['model']} | {c['device']} | {c['dtype']} {c['layout']} | {c['batch']} | {c['mix_label']} | "
                f"{c['distinct_policies']} | {c['ideal_speedup']:.2f}x | {st['full']['median_s'] * 1e3:.1f} | "
                + " | ".join(fmt_x(sp[s]) for s in ("masked", "loop", "gather", "group", "auto"))
                + f" | {c['auto_choice']} | {fmt_x(sp['torch_gather'])} | {c['reps']} |")
        lines += ["", "## Models: realized / ideal", "",
                  "| model | device | dtype | batch | policy mix | ideal | masked | loop | gather | group | auto | torch_gather | auto vs torch_gather | auto, fastest rounds | spread (auto) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in cases:
            st = c["strategies"]
            ri = {s: (f"{st[s]['realized_over_ideal']:.2f}" if s in st else "") for s in STRATEGY_ORDER}
            vs = ""
            if "auto" in st and "torch_gather" in st:
                vs = f"{st['torch_gather']['median_s'] / st['auto']['median_s']:.2f}x"
            lines.append(f"| {c['model']} | {c['device']} | {c['dtype']} | {c['batch']} | {c['mix_label']} | "
                         f"{c['ideal_speedup']:.2f}x | "
                         + " | ".join(ri[s] for s in ("masked", "loop", "gather", "group", "auto", "torch_gather"))
                         + f" | {vs} | {best_ri(c, 'auto'):.2f} | {st['auto']['spread']:.2f} |")
        if any(c["strategies"]["full"].get("peak_mib") is not None for c in cases):
            lines += ["", "## Memory: peak allocated during the call (MiB, above weights and input; "
                      "CPU: profiler allocation events, see blockdrop.memory)", "",
                      "| model | batch | policy mix | " + " | ".join(STRATEGY_ORDER) + " |",
                      "|---|---|---|" + "---|" * len(STRATEGY_ORDER)]
            for c in cases:
                st = c["strategies"]
                lines.append(f"| {c['model']} | {c['batch']} | {c['mix_label']} | " + " | ".join(
                    (f"{st[s]['peak_mib']:.0f}" if s in st and st[s].get("peak_mib") is not None else "")
                    for s in STRATEGY_ORDER) + " |")
    ops = data.get("ops", [])
    if ops:
        lines += ["", "## Ops: achieved bandwidth (bytes moved at the least / median time)", "",
                  "| op | device | dtype | layout | shape | rows | MB moved | copy GB/s | blockdrop GB/s | torch GB/s | blockdrop / copy | torch / blockdrop time |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for o in ops:
            im = o["impls"]
            lines.append(
                f"| {o['op']} | {o['device']} | {o['dtype']} | {o['layout']} | {o['size']} {o['shape']} | {o['rows']} | "
                f"{o['bytes'] / 1e6:.1f} | {im['copy']['GBps']:.1f} | {im['blockdrop']['GBps']:.1f} | {im['torch']['GBps']:.1f} | "
                f"{im['blockdrop']['fraction_of_copy']:.2f} | {im['torch']['median_s'] / im['blockdrop']['median_s']:.2f}x |")
    targets = data.get("targets", [])
    if targets:
        lines += ["", "## Targets (issue 5)", "", "| target | measured | status | note |", "|---|---|---|---|"]
        for t in targets:
            lines.append(f"| {t['target']} | {'' if t['value'] is None else t['value']} | {t['status']} | {t['note']} |")
    return "\n".join(lines) + "\n"


def render_plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = data["cases"]
    if not cases:
        return
    labels = [f"{c['model']} b{c['batch']}\n{c['mix'].replace('proto', 'p')}" + ("" if c["device"] == "cpu" else f"\n{c['dtype'][:4]}")
              for c in cases]
    strategies = [s for s in STRATEGY_ORDER if s != "full"]
    colors = dict(zip(strategies, ("#999999", "#c7a76c", "#1f77b4", "#2ca02c", "#d62728", "#9467bd")))
    n, width = len(cases), 0.8 / len(strategies)
    fig, axes = plt.subplots(2, 1, figsize=(max(12, 0.75 * n), 9), sharex=True)
    for j, s in enumerate(strategies):
        xs = [i + (j - len(strategies) / 2 + 0.5) * width for i in range(n)]
        sp = [c["strategies"].get(s, {}).get("speedup", float("nan")) for c in cases]
        ri = [c["strategies"].get(s, {}).get("realized_over_ideal", float("nan")) for c in cases]
        axes[0].bar(xs, sp, width, label=s, color=colors[s])
        axes[1].bar(xs, ri, width, label=s, color=colors[s])
    axes[0].scatter(range(n), [c["ideal_speedup"] for c in cases], marker="_", s=400, color="black", zorder=3,
                    label="ideal (FLOPs)")
    axes[0].axhline(1.0, color="black", lw=0.5)
    axes[0].set_yscale("log")  # all-zeros policies reach hundreds
    axes[0].set_ylabel("speedup over the plain network (log)")
    axes[0].legend(ncol=4, fontsize=8)
    axes[0].set_title(f"blockdrop on {data['machine']}: realized vs ideal speedup (medians, interleaved)")
    axes[1].axhline(1.0, color="black", lw=0.8)
    axes[1].set_ylabel("realized / ideal")
    axes[1].set_ylim(0, 1.3)
    axes[1].set_xticks(range(n))
    axes[1].set_xticklabels(labels, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _case_id(c):
    return (c["model"], c["device"], c["dtype"], c["layout"], c["batch"], c["mix"])


def _op_id(o):
    return (o["op"], o["device"], o["dtype"], o["layout"], o["size"], o["rows"])


def merge(previous: dict, new: dict) -> dict:
    """``previous`` with the cases and ops that ``new`` measured replaced (in place, order kept)
    and new ones appended; each run's settings are kept under ``runs``."""
    out = dict(new)
    for field, key in (("cases", _case_id), ("ops", _op_id)):
        fresh = {key(x): x for x in new[field]}
        merged = [fresh.pop(key(x), x) for x in previous.get(field, [])]
        out[field] = merged + list(fresh.values())
    runs = previous.get("runs") or [dict(previous["settings"], env_date=previous["env"]["date"])]
    out["runs"] = runs + [dict(new["settings"], env_date=new["env"]["date"])]
    return out


def write_outputs(data: dict, out_dir: Path, plot: bool = True) -> None:
    data["targets"] = evaluate_targets(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / data["machine"]
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(data))
    if plot:
        render_plot(data, stem.with_suffix(".png"))


def summary(data: dict) -> str:
    rows = ["case                                   ideal  full_ms   auto  auto/ideal  torch_gather/ideal"]
    for c in data["cases"]:
        st = c["strategies"]
        rows.append(f"{c['model']:5} {c['device']:4} {c['dtype'][:4]} b{c['batch']:<4} {c['mix']:15} {c['ideal_speedup']:5.2f}x "
                    f"{st['full']['median_s'] * 1e3:8.1f} {st['auto']['speedup']:5.2f}x {st['auto']['realized_over_ideal']:10.2f} "
                    f"{st.get('torch_gather', {}).get('realized_over_ideal', float('nan')):18.2f}")
    for t in data.get("targets", []):
        rows.append(f"[{t['status']:6}] {t['target']}: {t['value']} {t['note']}")
    return "\n".join(rows)


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--machine", help="results name (default: cpu-<N>core, or the GPU's name)")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when visible, else cpu")
    ap.add_argument("--subset", choices=("default", "quick", "targets", "memory", "full"), default="default")
    ap.add_argument("--merge", action="store_true",
                    help="keep the cases/ops of an existing <machine>.json that this run does not redo")
    ap.add_argument("--reps", type=int, help="timed rounds per model case (default: per case)")
    ap.add_argument("--op-reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-models", action="store_true")
    ap.add_argument("--no-ops", action="store_true")
    ap.add_argument("--only", help="run only model cases whose key contains this (e.g. 'R110 cpu float32 NCHW b256')")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--note", default="", help="free text recorded in the results (e.g. machine load)")
    ap.add_argument("--render", type=Path, help="only re-render .md/.png from this .json")
    args = ap.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        write_outputs(data, args.out if args.out != HERE / "results" else args.render.parent)
        print(summary(data))
        return 0
    _reexec_with_malloc_env(argv)

    import torch

    import common

    device = args.device or common.default_device()
    settings = common.setup_measurement(args.threads if device == "cpu" else None)
    machine = args.machine or common.default_machine(device)
    data = {"machine": machine, "env": common.environment(device), "cases": [], "ops": [],
            "settings": dict(settings, subset=args.subset, note=args.note, device=device,
                             clock=common.clock_name(device))}
    failures = 0
    t_start = time.perf_counter()
    previous = None
    if args.merge and (args.out / f"{machine}.json").exists():
        previous = json.loads((args.out / f"{machine}.json").read_text())
    if not args.no_ops:
        cases = op_cases(args.subset, device)
        log(f"== ops: {len(cases)} cases on {device}")
        for op, name, shape, frac, dt, cl in cases:
            try:
                r = run_op_case(op, name, shape, frac, dt, cl, device, args.op_reps)
            except Exception as exc:  # noqa: BLE001 - record and go on
                failures += 1
                log(f"FAILED op {op} {name} {dt} {cl}: {type(exc).__name__}: {exc}")
                continue
            data["ops"].append(r)
            im = r["impls"]
            log(f"{op:17} {name:9} {r['dtype']:8} {r['layout']:13} rows={r['rows']:<4} copy {im['copy']['GBps']:7.1f} "
                f"blockdrop {im['blockdrop']['GBps']:7.1f} torch {im['torch']['GBps']:7.1f} GB/s")
    if not args.no_models:
        cases = [c for c in model_cases(args.subset, device, args.reps) if not args.only or args.only in c.key]
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
            log(f"{case.key:50} ideal {r['ideal_speedup']:5.2f}x full {st['full']['median_s'] * 1e3:8.1f} ms | "
                + " ".join(f"{s} {v['speedup']:.2f}x" for s, v in st.items() if s != "full")
                + f" | {r['wall_s']}s")
            write_outputs(data if previous is None else merge(previous, data), args.out, plot=False)  # partial results survive a timeout
    data["settings"]["wall_s"] = round(time.perf_counter() - t_start, 1)
    if previous is not None:
        data = merge(previous, data)
    write_outputs(data, args.out)
    log(summary(data))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
