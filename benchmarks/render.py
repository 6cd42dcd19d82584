"""The benchmark results as a report: the issue's targets with their status, markdown tables and
the plot (``results/<machine>.{md,png}`` from ``results/<machine>.json``), merging runs, and the
summary printed at the end of a run."""

from __future__ import annotations

import json
from pathlib import Path

from cases import STRATEGIES as STRATEGY_ORDER  # full first, then every strategy

__all__ = ["evaluate_targets", "render_markdown", "render_plot", "merge", "write_outputs", "summary"]


# -------------------------------------------------------------------------------------- targets


def _find(cases, model, batch, mix_prefix, device=None):
    for c in cases:
        if (
            c["model"] == model
            and c["batch"] == batch
            and c["mix"].startswith(mix_prefix)
            and (device is None or c["device"] == device)
        ):
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
        out.append(
            {
                "target": name,
                "value": value,
                "status": "n/a" if ok is None else ("met" if ok else "MISSED"),
                "note": note,
            }
        )

    cpu = [c for c in cases if c["device"] == "cpu" and c["dtype"] == "float32"]
    for model in ("R110", "R56"):
        for batch, need in ((16, 0.75), (64, 0.92), (256, 0.97)):
            c = _find(cpu, model, batch, "iid:0.31")
            if c and "auto" in c["strategies"]:
                v = c["strategies"]["auto"]["realized_over_ideal"]
                add(
                    f"CPU {model} iid 0.31 b{batch}: auto realized/ideal >= {need}",
                    round(v, 3),
                    v >= need,
                    f"fastest rounds: {best_ri(c, 'auto'):.2f}; "
                    f"torch_gather {c['strategies']['torch_gather']['realized_over_ideal']:.2f}; "
                    f"spread {c['strategies']['auto']['spread']:.2f}",
                )
        c = _find(cpu, model, 256, "proto10")
        if c and "auto" in c["strategies"]:
            v = c["strategies"]["auto"]["realized_over_ideal"]
            add(
                f"CPU {model} 10 prototypes b256: auto realized/ideal >= 1.03",
                round(v, 3),
                v >= 1.03,
                f"fastest rounds: {best_ri(c, 'auto'):.2f}; "
                f"gather {c['strategies']['gather']['realized_over_ideal']:.2f}, "
                f"group {c['strategies']['group']['realized_over_ideal']:.2f}; auto chose {c['auto_choice']}",
            )
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
        add(
            "auto never slower than torch_gather by more than noise (worst case)",
            round(ratio, 3),
            slack >= 0,
            f"{c['model']} {c['device']} b{c['batch']} {c['mix']}: torch_gather/auto time = {ratio:.3f}",
        )
    worst_fixed = None
    for c in cases:  # issue 3: auto never worse than the best fixed strategy by more than noise
        st = c["strategies"]
        fixed = [s for s in ("masked", "loop", "gather", "group") if s in st]
        if "auto" not in st or not fixed:
            continue
        best = min(fixed, key=lambda s: st[s]["median_s"])
        ratio = st["auto"]["median_s"] / st[best]["median_s"]  # > 1: auto slower than the best
        slack = (1 + _noise(c, "auto", best)) - ratio
        if worst_fixed is None or slack < worst_fixed[0]:
            worst_fixed = (slack, ratio, best, c)
    if worst_fixed:
        slack, ratio, best, c = worst_fixed
        add(
            "auto never slower than the best fixed strategy by more than noise (worst case)",
            round(ratio, 3),
            slack >= 0,
            f"{c['model']} {c['device']} b{c['batch']} {c['mix']}: auto/{best} time = {ratio:.3f}, "
            f"noise {_noise(c, 'auto', best):.2f}; auto chose {c['auto_choice']}",
        )
    for c in cases:
        st = c["strategies"]
        if c["mix"] == "ones" and "auto" in st:
            v = st["auto"]["median_s"] / st["full"]["median_s"]
            vmin = min(st["auto"]["times_s"]) / min(st["full"]["times_s"])
            add(
                f"all ones {c['model']} {c['device']} {c['dtype']} b{c['batch']}: auto time <= 1.03 x full",
                round(v, 3),
                v <= 1.03,
                f"fastest rounds: {vmin:.3f}; spread {st['auto']['spread']:.2f}",
            )
    for c in cases:
        st = c["strategies"]
        if c["batch"] == 1 and c["ideal_speedup"] > 1.0001 and "auto" in st:
            v = st["auto"]["speedup"]
            add(f"batch 1 {c['model']} {c['device']} {c['mix']}: auto faster than full", round(v, 3), v > 1.0)
    gpu = [
        c
        for c in cases
        if c["device"] == "cuda" and c["dtype"] == "bfloat16" and c["layout"] == "channels_last"
    ]
    for model, mix in (("R101", "proto10"), ("R110", "iid:0.31")):
        c = _find(gpu, model, 256, mix)
        if c:
            v = c["strategies"]["auto"]["realized_over_ideal"]
            add(f"GPU bf16 CL {model} {mix} b256: auto realized/ideal >= 0.9", round(v, 3), v >= 0.9)
    for c in cases:
        st = c["strategies"]
        if st.get("full", {}).get("peak_mib"):
            peak = max(
                (v["peak_mib"] / st["full"]["peak_mib"], s)
                for s, v in st.items()
                if v.get("peak_mib") is not None and s in ("masked", "auto", "gather", "group")
            )
            dev = "GPU" if c["device"] == "cuda" else "CPU"
            add(
                f"{dev} memory {c['model']} b{c['batch']} {c['mix']}: peak <= 1.10 x full",
                round(peak[0], 3),
                peak[0] <= 1.10,
                f"worst: {peak[1]}",
            )
    ops = [o for o in data.get("ops", []) if o["device"] == "cuda"]
    if ops:
        for name in ("gather_rows", "merge_block", "merge_block_", "merge_block_ds", "scatter_add_rows"):
            sel = [o for o in ops if o["op"] == name and o["size"] != "cifar-l1"]
            if sel:
                v = min(o["impls"]["blockdrop"]["fraction_of_copy"] for o in sel)
                add(
                    f"GPU {name}: bandwidth >= 0.8 x device-to-device copy (worst large case)",
                    round(v, 3),
                    v >= 0.8,
                )
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
    lines.append(
        f"{dev}; torch {env['torch']}; {env['threads']} thread(s); "
        f"clock: {data['settings'].get('clock', 'wall')}; git {env.get('git', '')}; "
        f"{env['date']}; malloc thresholds: {data['settings']['malloc']}. "
        f"{data['settings'].get('note', '')}"
    )
    lines += [
        "",
        "Realized speedup = median time of `full` (the plain network) / median time of the strategy, "
        "over interleaved rounds (`reps`); ideal = FLOPs(full) / FLOPs(executed) "
        "(blockdrop.evaluation.accounting). "
        "`auto, fastest rounds` = min(full) / min(auto) / ideal; `spread` = IQR / median of auto's rounds. "
        "`auto→` is the strategy auto chose. Blank: not run (loop only at batch <= 16).",
        "",
    ]
    cases = data["cases"]
    if cases:
        lines += [
            "## Models: realized speedup over the plain network",
            "",
            "| model | device | dtype / layout | batch | policy mix | groups | ideal | "
            "full ms | masked | loop | "
            "gather | group | auto | auto→ | torch_gather | reps |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in cases:
            st = c["strategies"]
            sp = {s: (st[s]["speedup"] if s in st else None) for s in STRATEGY_ORDER}
            lines.append(
                f"| {c['model']} | {c['device']} | {c['dtype']} {c['layout']} | "
                f"{c['batch']} | {c['mix_label']} | "
                f"{c['distinct_policies']} | {c['ideal_speedup']:.2f}x | "
                f"{st['full']['median_s'] * 1e3:.1f} | "
                + " | ".join(fmt_x(sp[s]) for s in ("masked", "loop", "gather", "group", "auto"))
                + f" | {c['auto_choice']} | {fmt_x(sp['torch_gather'])} | {c['reps']} |"
            )
        lines += [
            "",
            "## Models: realized / ideal",
            "",
            "| model | device | dtype | batch | policy mix | ideal | "
            "masked | loop | gather | group | auto | torch_gather | "
            "auto vs torch_gather | auto, fastest rounds | spread (auto) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in cases:
            st = c["strategies"]
            ri = {s: (f"{st[s]['realized_over_ideal']:.2f}" if s in st else "") for s in STRATEGY_ORDER}
            vs = ""
            if "auto" in st and "torch_gather" in st:
                vs = f"{st['torch_gather']['median_s'] / st['auto']['median_s']:.2f}x"
            lines.append(
                f"| {c['model']} | {c['device']} | {c['dtype']} | {c['batch']} | {c['mix_label']} | "
                f"{c['ideal_speedup']:.2f}x | "
                + " | ".join(ri[s] for s in ("masked", "loop", "gather", "group", "auto", "torch_gather"))
                + f" | {vs} | {best_ri(c, 'auto'):.2f} | {st['auto']['spread']:.2f} |"
            )
        if any(c["strategies"]["full"].get("peak_mib") is not None for c in cases):
            lines += [
                "",
                "## Memory: peak allocated during the call (MiB, above weights and input; "
                "CPU: profiler allocation events, see blockdrop.evaluation.memory)",
                "",
                "| model | batch | policy mix | " + " | ".join(STRATEGY_ORDER) + " |",
                "|---|---|---|" + "---|" * len(STRATEGY_ORDER),
            ]
            for c in cases:
                st = c["strategies"]
                lines.append(
                    f"| {c['model']} | {c['batch']} | {c['mix_label']} | "
                    + " | ".join(
                        (f"{st[s]['peak_mib']:.0f}" if s in st and st[s].get("peak_mib") is not None else "")
                        for s in STRATEGY_ORDER
                    )
                    + " |"
                )
    ops = data.get("ops", [])
    if ops:
        lines += [
            "",
            "## Ops: achieved bandwidth (bytes moved at the least / median time)",
            "",
            "| op | device | dtype | layout | shape | rows | "
            "MB moved | copy GB/s | blockdrop GB/s | "
            "torch GB/s | blockdrop / copy | torch / blockdrop time |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for o in ops:
            im = o["impls"]
            lines.append(
                f"| {o['op']} | {o['device']} | {o['dtype']} | {o['layout']} | "
                f"{o['size']} {o['shape']} | {o['rows']} | "
                f"{o['bytes'] / 1e6:.1f} | {im['copy']['GBps']:.1f} | "
                f"{im['blockdrop']['GBps']:.1f} | {im['torch']['GBps']:.1f} | "
                f"{im['blockdrop']['fraction_of_copy']:.2f} | "
                f"{im['torch']['median_s'] / im['blockdrop']['median_s']:.2f}x |"
            )
    targets = data.get("targets", [])
    if targets:
        lines += [
            "",
            "## Targets (issue 5)",
            "",
            "| target | measured | status | note |",
            "|---|---|---|---|",
        ]
        for t in targets:
            lines.append(
                f"| {t['target']} | {'' if t['value'] is None else t['value']} | "
                f"{t['status']} | {t['note']} |"
            )
    return "\n".join(lines) + "\n"


def render_plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = data["cases"]
    if not cases:
        return
    labels = [
        f"{c['model']} b{c['batch']}\n{c['mix'].replace('proto', 'p')}"
        + ("" if c["device"] == "cpu" else f"\n{c['dtype'][:4]}")
        for c in cases
    ]
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
    axes[0].scatter(
        range(n),
        [c["ideal_speedup"] for c in cases],
        marker="_",
        s=400,
        color="black",
        zorder=3,
        label="ideal (FLOPs)",
    )
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
        rows.append(
            f"{c['model']:5} {c['device']:4} {c['dtype'][:4]} b{c['batch']:<4} "
            f"{c['mix']:15} {c['ideal_speedup']:5.2f}x "
            f"{st['full']['median_s'] * 1e3:8.1f} {st['auto']['speedup']:5.2f}x "
            f"{st['auto']['realized_over_ideal']:10.2f} "
            f"{st.get('torch_gather', {}).get('realized_over_ideal', float('nan')):18.2f}"
        )
    for t in data.get("targets", []):
        rows.append(f"[{t['status']:6}] {t['target']}: {t['value']} {t['note']}")
    return "\n".join(rows)
