"""Measure the capacity cases (``capacity_cases``) and write ``results/<machine>-capacity.{json,md}``:
every (variant, chunk) pair of a case checked, then timed in interleaved rotated rounds (medians);
realized / ideal against the plain network -- eager or compiled, as the variant -- at *its* fastest
chunk; the issue's targets with their status. Called by ``run.py --subset capacity``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from blockdrop.evaluation.timing import interleaved
from capacity_cases import BASELINE, CapCase, CapPrepared, capacity_cases
from env import clock, clock_name

__all__ = ["run_capacity_case", "render_capacity", "capacity_targets", "main_capacity"]


def run_capacity_case(case: CapCase, log=print) -> dict:
    """One case: check + warm up (compile) every (variant, size), then interleaved rounds."""
    t0 = time.perf_counter()
    prep = CapPrepared(case)
    fns, errs, compile_s = {}, {}, {}
    for v in case.variants:
        for c in case.sizes:
            t1 = time.perf_counter()
            errs[(v, c)] = prep.check(v, c)
            compile_s[(v, c)] = round(time.perf_counter() - t1, 1)
            fns[f"{v}@{c}"] = prep.fn(v, c)
    log(
        f"  {case.key}: checked in {time.perf_counter() - t0:.0f}s; timing {len(fns)} "
        f"calls x {case.reps} rounds"
    )
    t = interleaved(fns, rounds=case.reps, warmup=0, clock=clock("cpu"), rotate=True)
    variants: dict[str, dict[str, Any]] = {}
    for v in case.variants:
        per: dict[int, dict[str, Any]] = {
            c: {
                "median_s": t[f"{v}@{c}"].median,
                "times_s": list(t[f"{v}@{c}"].samples),
                "spread": round(t[f"{v}@{c}"].spread, 4),
                "ideal": prep.ideal(v, c),
                "rel_err": errs[(v, c)],
                "first_call_s": compile_s[(v, c)],
            }
            for c in case.sizes
        }
        best = min(per, key=lambda c: per[c]["median_s"])
        variants[v] = {"sizes": {str(c): r for c, r in per.items()}, "best_chunk": best}
    for v, r in variants.items():
        base = variants[BASELINE[v]]
        base_best = base["sizes"][str(base["best_chunk"])]["median_s"]
        whole, best = r["sizes"][str(case.batch)], r["sizes"][str(r["best_chunk"])]
        r["ri_whole"] = base_best / whole["median_s"] / whole["ideal"]  # at batch N vs plain's best
        r["ri_best"] = base_best / best["median_s"] / best["ideal"]  # best chunk vs best chunk
    return {
        "model": case.model,
        "batch": case.batch,
        "keep": case.keep,
        "reps": case.reps,
        "mean_blocks": float(prep.policy.double().sum(1).mean()),
        "num_blocks": prep.model.num_blocks,
        "variants": variants,
        "clock": clock_name("cpu"),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def capacity_targets(cases: list[dict]) -> list[dict]:
    """The issue's targets: capacity eager within 3% of auto at batch 256; auto and capacity eager
    >= 0.9 of ideal vs the plain network at its fastest chunk; compiled capacity >= 0.9 vs compiled
    plain at its fastest chunk."""
    out = []

    def add(name: str, value: float, ok: bool, note: str = "") -> None:
        out.append(
            {"target": name, "value": round(value, 3), "status": "met" if ok else "MISSED", "note": note}
        )

    for c in cases:
        v, tag = c["variants"], f"{c['model']} b{c['batch']} keep {c['keep']}"
        if c["batch"] == 256 and "capacity" in v and "auto" in v:
            r = v["capacity"]["sizes"]["256"]["median_s"] / v["auto"]["sizes"]["256"]["median_s"]
            add(
                f"{tag}: time(capacity) / time(auto) <= 1.03",
                r,
                r <= 1.03,
                f"spreads {v['capacity']['sizes']['256']['spread']:.2f} / "
                f"{v['auto']['sizes']['256']['spread']:.2f}",
            )
        for s in ("auto", "capacity", "capacity_compiled"):
            if s in v:
                add(
                    f"{tag}: {s} realized/ideal vs {BASELINE[s]} at its fastest chunk >= 0.9",
                    v[s]["ri_whole"],
                    v[s]["ri_whole"] >= 0.9,
                    f"at its own fastest chunk ({v[s]['best_chunk']}): {v[s]['ri_best']:.2f}",
                )
    return out


def _fmt_ms(r: dict, c: int) -> str:
    s = r["sizes"].get(str(c))
    return "" if s is None else f"{s['median_s'] * 1e3:.0f}"


def render_capacity(data: dict) -> str:
    """The markdown report of a capacity results JSON."""
    env, st = data["env"], data["settings"]
    lines = [
        f"# Capacity mode on `{data['machine']}`",
        "",
        f"{env['cpu']}; torch {env['torch']}; {env['threads']} thread(s); float32, NCHW, eval; "
        f"clock: {st['clock']}; malloc thresholds: {st['malloc']}; inductor freezing: {st['freezing']}; "
        f"git {env['git']}; {env['date']}. Command: `{st['command']}`.",
        "",
        "Policy mix: iid keep p per (image, block), seeded (`benchmarks/cases.make_policy`); capacity's "
        "shares = that policy's per-block keep rates, counts rounded per chunk "
        "(`counts_from_shares`), its scores random. realized/ideal = time(plain network at its "
        "fastest chunk) / time(variant) / ideal, where the plain network is eager for eager variants "
        "and compiled for compiled ones; `@N` = the variant on the whole batch, `best` = at its own "
        "fastest chunk (which one in brackets).",
        "",
        "| model | batch | keep | blocks | variant | ms @N | "
        "ms @128 | ms @64 | ms @32 | ideal | realized/ideal @N | best (chunk) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in data["cases"]:
        for v, r in c["variants"].items():
            ideal = r["sizes"][str(c["batch"])]["ideal"]
            lines.append(
                f"| {c['model']} | {c['batch']} | {c['keep']} | "
                f"{c['mean_blocks']:.1f}/{c['num_blocks']} | {v} | "
                + " | ".join(_fmt_ms(r, s) for s in (c["batch"], 128, 64, 32) if s <= c["batch"] or True)
                + f" | {ideal:.2f}x | {r['ri_whole']:.2f} | {r['ri_best']:.2f} ({r['best_chunk']}) |"
            )
    lines += ["", "## Targets", "", "| target | measured | status | note |", "|---|---|---|---|"]
    for t in data.get("targets", []):
        lines.append(f"| {t['target']} | {t['value']} | {t['status']} | {t['note']} |")
    if data.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(lines) + "\n"


def write_capacity(data: dict, out: Path) -> None:
    data["targets"] = capacity_targets(data["cases"])
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{data['machine']}-capacity"
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    stem.with_suffix(".md").write_text(render_capacity(data))


def main_capacity(args, data: dict, log=print) -> int:
    """``run.py --subset capacity[-quick]``: the capacity matrix into ``<machine>-capacity.*``."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    # every (counts, shape) is one more graph of the same code objects: above dynamo's default
    # limit of 8 it would run the rest eagerly without a word
    torch._dynamo.config.recompile_limit = 64
    data["settings"]["freezing"] = True
    subset = "quick" if args.subset == "capacity-quick" else "default"
    cases = [c for c in capacity_cases(subset, args.reps) if not args.only or args.only in c.key]
    failures = 0
    for case in cases:
        try:
            r = run_capacity_case(case, log)
        except Exception as exc:  # noqa: BLE001 - record and go on
            failures += 1
            log(f"FAILED {case.key}: {type(exc).__name__}: {exc}")
            continue
        data["cases"].append(r)
        log(
            f"{case.key:40} "
            + " ".join(f"{v} {r2['ri_whole']:.2f}/{r2['ri_best']:.2f}" for v, r2 in r["variants"].items())
            + f" | {r['wall_s']}s"
        )
        write_capacity(data, args.out)
    write_capacity(data, args.out)
    for t in data["targets"]:
        log(f"[{t['status']:6}] {t['target']}: {t['value']} ({t['note']})")
    torch._dynamo.reset()
    return 1 if failures else 0
